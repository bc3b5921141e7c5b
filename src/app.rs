//! The application: shared state, the router with its middleware stack, and `run`.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderName, StatusCode, header},
    middleware,
    response::IntoResponse,
    routing::{any, get, post},
};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveHeadersLayer,
    trace::TraceLayer,
};

use crate::{
    auth::{self, pending::PendingLogins, rate_limit::LoginRateLimiter},
    config::{Config, SessionStoreKind},
    error::{GatewayError, render_html_errors},
    proxy,
    session::{
        SessionHasher, Sessions, Store, cookie::CookieSettings, memory_store::MemoryStore,
        redis_store::RedisStore,
    },
    token::{PleoOAuth, RefreshCoordinator, TokenCipher},
};

/// How long `/readyz` waits for the store before calling it unreachable.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything handlers share. Cheap to clone: every field is reference-counted.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Session storage.
    pub sessions: Sessions,
    /// Seals and opens the pending-login cookies (logins in progress live in the browser).
    pub logins: Arc<PendingLogins>,
    /// Rate limits of `/auth/login` and `/auth/callback`.
    pub login_limiter: Arc<LoginRateLimiter>,
    /// Back-off of introspection retries for sessions whose subject is not known yet.
    pub subject_retries: Arc<auth::subject::SubjectRetries>,
    /// Pleo's authorisation server.
    pub oauth: Arc<PleoOAuth>,
    /// Single-flight token refresh.
    pub refresher: Arc<RefreshCoordinator>,
    /// How the session cookie is written.
    pub cookies: Arc<CookieSettings>,
    /// Pooled client for the Pleo API, built once.
    pub pleo_api: reqwest::Client,
    /// Pooled client for the internal app, built once; `None` without `proxy.upstream`.
    pub upstream: Option<Arc<proxy::UpstreamClient>>,
    /// Open WebSocket connections to the app per session, so logging out closes them.
    pub websockets: proxy::WebSocketRegistry,
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
            TokenCipher::new(&keys).ok_or_else(|| anyhow::anyhow!("no session encryption key"))?;
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
        let pleo_api = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.pleo.connect_timeout)
            .read_timeout(config.pleo.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("pleo-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let upstream = match &config.proxy.upstream {
            Some(url) => Some(Arc::new(proxy::UpstreamClient::new(
                url,
                config.proxy.upstream_timeout,
                config.proxy.upstream_max_connections,
            )?)),
            None => None,
        };
        Ok(Self {
            config: Arc::new(config),
            sessions,
            logins,
            login_limiter,
            subject_retries: Arc::default(),
            oauth,
            refresher,
            cookies,
            pleo_api,
            upstream,
            websockets: proxy::WebSocketRegistry::new(),
        })
    }

    /// The URL to send a user to for logging in, returning to `return_to` afterwards.
    pub fn login_url(&self, return_to: &str) -> String {
        // A return path too long to keep through the login drops its query, then itself.
        let return_to = if return_to.len() <= auth::pending::MAX_RETURN_TO_BYTES {
            return_to
        } else {
            return_to
                .split_once('?')
                .map(|(path, _)| path)
                .filter(|path| path.len() <= auth::pending::MAX_RETURN_TO_BYTES)
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

/// The router with the whole middleware stack. Separate from serving so tests can drive it
/// with `oneshot` or a real listener.
pub fn app(state: AppState) -> Router {
    crate::telemetry::metrics_handle();
    let pleo_route = format!("{}/{{*path}}", state.config.proxy.pleo_prefix);
    let request_id = HeaderName::from_static("x-request-id");
    let trusted_proxies = Arc::new(state.config.server.trusted_proxies.clone());
    let router = Router::new()
        .route("/auth/login", get(auth::begin_login))
        .route("/auth/callback", get(auth::complete_login))
        .route("/auth/session", get(auth::session_info))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/disconnect", post(auth::disconnect))
        // Any method: Envoy sends the original one (nginx's auth_request sends GET); Envoy
        // may append the original path to `path_prefix`.
        .route("/auth/check", any(auth::check))
        .route("/auth/check/", any(auth::check))
        .route("/auth/check/{*rest}", any(auth::check))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Metrics are served only on `server.metrics_listen`; here the path is the gateway's.
        .route("/metrics", any(not_found))
        .route(&pleo_route, any(proxy::proxy_to_pleo))
        // The gateway's own namespaces never fall through to the app, their roots included.
        .route("/auth", any(not_found))
        .route("/auth/", any(not_found))
        .route("/auth/{*rest}", any(not_found))
        .route(&state.config.proxy.pleo_prefix, any(not_found))
        .route(
            &format!("{}/", state.config.proxy.pleo_prefix),
            any(not_found),
        );
    // With an app behind the gateway, everything unrouted is the app's; without one, 404.
    let router = if state.upstream.is_some() {
        router.fallback(proxy::proxy_to_upstream)
    } else {
        router.fallback(not_found)
    };
    router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(crate::telemetry::track_requests))
        .with_state(state)
        // Outermost last: request ids exist before tracing starts; secrets are marked sensitive
        // before anything could log headers; panics become 500s instead of dropped connections.
        .layer(middleware::from_fn(render_html_errors))
        .layer(CatchPanicLayer::new())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        // Spans name the path only: the query of /auth/callback carries the authorisation code
        // and state, which must not reach a log line even at debug level.
        .layer(TraceLayer::new_for_http().make_span_with(
            |request: &axum::http::Request<axum::body::Body>| {
                tracing::debug_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                )
            },
        ))
        .layer(SetSensitiveHeadersLayer::new([
            header::COOKIE,
            header::SET_COOKIE,
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
        ]))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // Outermost: an inbound request id is kept only from a trusted proxy, and only if it
        // is a plain token; anyone else's is replaced by ours (the app logs it).
        .layer(middleware::from_fn_with_state(
            trusted_proxies,
            crate::proxy::forwarded::accept_request_id,
        ))
}

async fn not_found() -> GatewayError {
    GatewayError::NotFound
}

async fn method_not_allowed() -> GatewayError {
    GatewayError::MethodNotAllowed
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.sessions.store();
    let ping = tokio::time::timeout(READINESS_TIMEOUT, store.ping()).await;
    let (status, ready, detail) = match ping {
        Ok(Ok(())) => (StatusCode::OK, true, "reachable"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: session store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, false, "unreachable")
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, false, "timeout"),
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "store": store.kind(), "store_status": detail })),
    )
}

/// Serves `router` on `listener` with default limits until `shutdown` resolves, then drains
/// in-flight requests. `main` uses [`crate::server::serve`] with the configured limits.
pub async fn run(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::server::serve(
        listener,
        router,
        crate::server::ServeOptions::default(),
        shutdown,
    )
    .await
}
