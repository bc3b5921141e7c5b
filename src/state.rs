//! What every handler shares, and how it is built from the configuration: the state the
//! router in `app.rs` takes and hands to each handler.

use std::sync::Arc;

use crate::{
    backoff::KeyedBackoff,
    config::{Config, SessionStoreKind},
    forwarded::PublicOrigin,
    identity::Identity,
    pleo_api::PleoApi,
    pleo_budget::PleoBudget,
    rate_limit::LoginRateLimiter,
    readiness::Readiness,
    session::{
        SessionHasher, SessionKey, Sessions, Store,
        cookie::CookieSettings,
        memory_store::MemoryStore,
        pending_login::{MAX_RETURN_TO_BYTES, PendingLogins},
        redis_store::RedisStore,
        seal::Sealer,
    },
    token::{PleoOAuth, RefreshCoordinator},
    upstream::{UpstreamClient, WebSocketRegistry},
};

/// Everything handlers share, behind one reference count: axum clones the state for every
/// handler and middleware a request passes, and with sixteen counters that was 4–6% of the
/// app path's CPU under load (cache lines bouncing between cores). Each worker runtime holds
/// its own [`AppState`] ([`AppState::with_own_pools`]), so even this one counter stays on its
/// core. Fields are reached through `Deref`: `state.config`, `state.sessions`, ...
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What an [`AppState`] holds.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Session storage.
    pub sessions: Sessions,
    /// Seals and opens the pending-login cookies (logins in progress live in the browser).
    pub logins: Arc<PendingLogins>,
    /// Rate limits of `/auth/login` and `/auth/callback`.
    pub login_limiter: Arc<LoginRateLimiter>,
    /// Back-off of introspection retries for sessions whose subject is not known yet.
    pub subject_retries: Arc<KeyedBackoff<SessionKey>>,
    /// Pleo's authorisation server.
    pub oauth: Arc<PleoOAuth>,
    /// Single-flight token refresh.
    pub refresher: Arc<RefreshCoordinator>,
    /// How the session cookie is written.
    pub cookies: Arc<CookieSettings>,
    /// The Pleo API client, built once.
    pub pleo_api: Arc<PleoApi>,
    /// The budget of proxied calls to Pleo, shared by every replica through the store.
    pub pleo_budget: Arc<PleoBudget>,
    /// Pooled client for the internal app, built once; `None` without `proxy.upstream`.
    pub upstream: Option<Arc<UpstreamClient>>,
    /// Open WebSocket connections to the app per session, so logging out closes them.
    pub websockets: WebSocketRegistry,
    /// Signs the `X-Pleo-Identity` assertions and checks the ones handed back.
    pub identity: Arc<Identity>,
    /// What `/readyz` answers; the shutdown sequence turns it to draining.
    pub readiness: Readiness,
    /// `server.public_url`'s scheme and host, as forwarding headers carry them.
    pub public_origin: PublicOrigin,
}

impl AppState {
    /// Builds the state around an already-opened store.
    pub fn new(config: Config, store: Store) -> anyhow::Result<Self> {
        let keys = if config.session.encryption_keys.is_empty() {
            // Only reachable with the memory store (validation requires keys for Redis):
            // sessions die with the process anyway, so a key that does too is fine.
            vec![crate::config::EncryptionKey::generate()]
        } else {
            config.session.encryption_keys.clone()
        };
        let cipher =
            Sealer::new(&keys).ok_or_else(|| anyhow::anyhow!("no session encryption key"))?;
        let pleo_budget = Arc::new(PleoBudget::new(&config.pleo, store.clone()));
        let sessions = Sessions::new(
            store,
            cipher,
            SessionHasher::new(&keys),
            config.session.idle_timeout,
            config.session.absolute_timeout,
        );
        let logins = Arc::new(
            PendingLogins::new(&keys, config.session.login_state_ttl)
                .ok_or_else(|| anyhow::anyhow!("no session encryption key"))?,
        );
        let login_limiter = Arc::new(LoginRateLimiter::new(
            config.server.auth_rate_per_client,
            config.server.auth_rate_global,
        ));
        let oauth = Arc::new(PleoOAuth::new(&config)?);
        let refresher = Arc::new(RefreshCoordinator::new(
            Arc::clone(&oauth),
            sessions.clone(),
            config.pleo.refresh_before_expiry,
            config.pleo.request_timeout,
        ));
        if config.pleo.proactive_refresh {
            if tokio::runtime::Handle::try_current().is_ok() {
                refresher.spawn_proactive_refresh();
            } else {
                tracing::warn!("pleo.proactive_refresh needs a running Tokio runtime; disabled");
            }
        }
        let cookies = Arc::new(CookieSettings::new(
            &config.session.cookie_name,
            config.is_plain_http(),
        ));
        if config.is_plain_http() {
            tracing::warn!(
                cookie = %cookies.name,
                "public_url is plain http: the session cookie is sent without Secure and without the __Host- prefix; use this for local development only"
            );
        }
        let pleo_api = Arc::new(PleoApi::new(&config.pleo)?);
        let identity = Arc::new(Identity::new(&config, &keys)?);
        let upstream = match &config.proxy.upstream {
            Some(url) => Some(Arc::new(UpstreamClient::new(
                url,
                config.proxy.upstream_timeout,
                config.proxy.upstream_max_connections,
                config.proxy.ca_file.as_ref(),
            )?)),
            None => None,
        };
        let readiness = Readiness::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            let store = sessions.store().clone();
            readiness.spawn_start_up_check(move || {
                let store = store.clone();
                async move { store.ping().await }
            });
        }
        Ok(Self(Arc::new(Shared {
            public_origin: PublicOrigin::new(&config.server.public_url),
            config: Arc::new(config),
            sessions,
            logins,
            login_limiter,
            subject_retries: Arc::default(),
            oauth,
            refresher,
            cookies,
            pleo_api,
            pleo_budget,
            upstream,
            websockets: WebSocketRegistry::new(),
            identity,
            readiness,
        })))
    }

    /// The same state with connection pools of its own to Pleo's API and to the app, for one
    /// worker runtime (`workers.rs`): a pooled connection's task lives on the runtime
    /// that opened it, so a shared pool would hand every request's I/O to another thread.
    /// Everything else (sessions, the refresh coordinator, limits) stays shared.
    pub fn with_own_pools(&self) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(Shared {
            pleo_api: Arc::new(self.pleo_api.with_own_pool(&self.config.pleo)?),
            upstream: self
                .upstream
                .as_ref()
                .map(|upstream| Arc::new(upstream.with_own_pool())),
            ..Shared::clone(&self.0)
        })))
    }

    /// The URL to send a user to for logging in, returning to `return_to` afterwards.
    pub fn login_url(&self, return_to: &str) -> String {
        // A return path too long to keep through the login drops its query, then itself.
        let return_to = if return_to.len() <= MAX_RETURN_TO_BYTES {
            return_to
        } else {
            return_to
                .split_once('?')
                .map(|(path, _)| path)
                .filter(|path| path.len() <= MAX_RETURN_TO_BYTES)
                .unwrap_or("/")
        };
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("return_to", return_to)
            .finish();
        format!("/auth/login?{query}")
    }
}

/// Opens the configured session store.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    use secrecy::ExposeSecret;
    Ok(match config.session.store {
        SessionStoreKind::Memory => {
            tracing::warn!(
                "session.store = \"memory\": sessions live in this process only; do not run more than one replica"
            );
            Store::Memory(MemoryStore::new())
        }
        SessionStoreKind::Redis => Store::Redis(
            RedisStore::connect(
                config.session.redis_url.expose_secret(),
                &config.session.key_prefix,
            )
            .await?,
        ),
    })
}
