//! A mock of Pleo's authorisation server and API, as strict as Pleo and RFC 6749 / RFC 7636.
//!
//! It serves the OAuth endpoints (`/oauth/authorize`, `/oauth/token`, `/oauth/token/introspect`)
//! and a few API endpoints (`/v1/introspect`, `/v2/employees`, `/v1/installations/me`) on one
//! origin, plus test-only endpoints: `/echo/{*path}` reflects what a proxy forwarded, `/big`
//! streams a large body and `/_mock/stats` exposes the counters. Integration tests use it
//! in-process through [`MockPleo::router`] or [`MockPleo::serve`]; the failure controls
//! (`set_token_failure`, `expire_access_tokens`, …) let them provoke what real Pleo does rarely.
//!
//! The mock is deliberately unforgiving: a client that only works against it because it is
//! lenient would break against Pleo, so every deviation from the specs is an error here.

mod api;
mod authorize;
mod consent;
mod echo;
mod grants;
mod pkce;
mod token;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::{any, delete, get, post};
use axum::{Json, Router, middleware};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Serialize;

use grants::GrantStore;

pub use consent::consent_request_id;

/// Default lifetime of access tokens; Pleo's documentation says 15 minutes.
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Default lifetime of authorisation codes: short, as RFC 6749 §4.1.2 recommends.
pub const DEFAULT_CODE_TTL: Duration = Duration::from_secs(60);
/// The company every grant is for unless the authorize request names another subject.
pub const DEFAULT_SUBJECT_URN: &str = "urn:pleo:company:5b1d1c36-8f0e-4c3a-9a55-2f4b6f0e7d21";

/// An OAuth client registered with the mock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockClient {
    /// The client identifier sent as `client_id` or as the Basic user name.
    pub client_id: String,
    /// `Some` for a confidential client (HTTP Basic only), `None` for a public one (PKCE only).
    pub client_secret: Option<String>,
    /// Redirect URIs, compared by exact string equality like Pleo does.
    pub redirect_uris: Vec<String>,
}

/// Settings of a [`MockPleo`].
#[derive(Debug, Clone)]
pub struct MockPleoConfig {
    /// The registered clients.
    pub clients: Vec<MockClient>,
    /// Lifetime of newly issued access tokens (`expires_in`).
    pub access_token_ttl: Duration,
    /// Lifetime of authorisation codes.
    pub code_ttl: Duration,
    /// `true`: `/oauth/authorize` redirects straight back with a code; `false`: consent page.
    pub auto_approve: bool,
    /// The subject (company or organisation URN) of grants whose request names none.
    pub subject_urn: String,
    /// The application name shown on the consent page and returned by `/v1/introspect`.
    pub application_name: String,
}

impl Default for MockPleoConfig {
    /// One confidential client `demo-client` / `demo-secret` redirecting to
    /// `http://127.0.0.1:8080/auth/callback`, with the consent page enabled.
    fn default() -> Self {
        Self {
            clients: vec![MockClient {
                client_id: "demo-client".to_owned(),
                client_secret: Some("demo-secret".to_owned()),
                redirect_uris: vec!["http://127.0.0.1:8080/auth/callback".to_owned()],
            }],
            access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL,
            code_ttl: DEFAULT_CODE_TTL,
            auto_approve: false,
            subject_urn: DEFAULT_SUBJECT_URN.to_owned(),
            application_name: "Pleo Gateway Demo".to_owned(),
        }
    }
}

/// Counters of what the mock has seen, for tests to assert on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MockStats {
    /// Successful `grant_type=authorization_code` exchanges.
    pub authorization_code_grants: u64,
    /// Successful `grant_type=refresh_token` exchanges (each one a rotation).
    pub refresh_token_grants: u64,
    /// Refresh requests answered with an error (not counting injected failures).
    pub refresh_failures: u64,
    /// Refresh tokens presented again after they had been rotated.
    pub reuse_detections: u64,
    /// Every request to `/oauth/token`, whatever its outcome.
    pub token_requests: u64,
    /// Every request to an API endpoint (bearer-protected routes).
    pub api_requests: u64,
    /// API requests answered with 401.
    pub api_unauthorized: u64,
    /// Successful `DELETE /v1/installations/me` calls.
    pub installations_deleted: u64,
}

/// A running mock of Pleo; cheap to clone, all clones share state.
#[derive(Clone)]
pub struct MockPleo {
    inner: Arc<Inner>,
}

/// The shared part of [`MockPleo`]: fixed configuration plus mutable state behind one lock.
struct Inner {
    config: MockPleoConfig,
    // A std Mutex is enough: it is only held for short, synchronous bookkeeping and never
    // across an await point.
    state: Mutex<MockState>,
}

/// Everything that changes at runtime.
struct MockState {
    grants: GrantStore,
    stats: MockStats,
    access_token_ttl: Duration,
    token_delay: Duration,
    token_failure: Option<u16>,
    introspect_failure: Option<u16>,
    api_rate_limited: Option<u64>,
}

impl MockPleo {
    /// Creates a mock with the given clients and settings and no grants yet.
    pub fn new(config: MockPleoConfig) -> Self {
        let state = MockState {
            grants: GrantStore::default(),
            stats: MockStats::default(),
            access_token_ttl: config.access_token_ttl,
            token_delay: Duration::ZERO,
            token_failure: None,
            introspect_failure: None,
            api_rate_limited: None,
        };
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
            }),
        }
    }

    /// The authorisation server and the API on one router, ready to be served or `oneshot`.
    pub fn router(&self) -> Router {
        // The bearer check is a route layer so that it only runs (and counts) for API routes
        // that exist; unknown paths stay plain 404s.
        let api = Router::new()
            .route("/v1/introspect", get(api::introspect))
            .route("/v2/employees", get(api::employees))
            .route("/v1/installations/me", delete(api::delete_installation))
            .route("/echo", any(echo::echo))
            .route("/echo/{*path}", any(echo::echo))
            .route("/big", get(echo::big))
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                api::require_bearer,
            ));
        Router::new()
            .route("/oauth/authorize", get(authorize::authorize))
            .route("/oauth/authorize/decision", post(authorize::decide))
            .route("/oauth/token", post(token::token))
            .route("/oauth/token/introspect", post(token::introspect))
            .route("/_mock/stats", get(stats))
            .merge(api)
            .with_state(self.clone())
    }

    /// Serves [`router`](Self::router) on `listener` until `shutdown` completes, then drains.
    ///
    /// The caller binds the listener (port 0 in tests) so it knows the address before serving.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.lock().stats.clone()
    }

    /// Makes `/oauth/token` wait `delay` before answering (after doing its work, so a client
    /// that gives up early sees exactly what a lost response looks like: the grant has moved on).
    pub fn set_token_delay(&self, delay: Duration) {
        self.lock().token_delay = delay;
    }

    /// `Some(status)`: `/oauth/token` answers `status` with a JSON error body and changes no
    /// grant; `None`: normal behaviour.
    pub fn set_token_failure(&self, status: Option<u16>) {
        self.lock().token_failure = status;
    }

    /// `Some(status)`: `GET /v1/introspect` answers `status` (Pleo having a bad moment);
    /// `None`: normal behaviour.
    pub fn set_introspect_failure(&self, status: Option<u16>) {
        self.lock().introspect_failure = status;
    }

    /// `Some(seconds)`: every API request is answered 429 with `Retry-After: seconds`, as Pleo
    /// does beyond its rate limit (counted in `api_requests`); `None`: normal behaviour.
    pub fn set_api_rate_limited(&self, retry_after_secs: Option<u64>) {
        self.lock().api_rate_limited = retry_after_secs;
    }

    /// The status `GET /v1/introspect` is told to fail with, if any.
    pub(crate) fn introspect_failure(&self) -> Option<u16> {
        self.lock().introspect_failure
    }

    /// Sets the lifetime of access tokens issued from now on.
    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.lock().access_token_ttl = ttl;
    }

    /// Makes every access token issued so far expired; the API answers 401 for them.
    pub fn expire_access_tokens(&self) {
        self.lock().grants.expire_access_tokens();
    }

    /// Revokes every grant and all its tokens, as if each installation had been deleted.
    pub fn revoke_all(&self) {
        self.lock().grants.revoke_all();
    }

    /// The configuration this mock was created with.
    pub fn config(&self) -> &MockPleoConfig {
        &self.inner.config
    }

    /// Locks the state; a poisoned lock only means a test panicked elsewhere, so carry on.
    fn lock(&self) -> MutexGuard<'_, MockState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The registered client with this id.
    fn client(&self, client_id: &str) -> Option<&MockClient> {
        self.inner
            .config
            .clients
            .iter()
            .find(|client| client.client_id == client_id)
    }
}

/// `GET /_mock/stats`: the counters as JSON, for tests that run the mock out of process.
async fn stats(State(mock): State<MockPleo>) -> Json<MockStats> {
    Json(mock.stats())
}

/// A fresh unguessable string: `bytes` random bytes from the thread-local CSPRNG, base64url.
fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Seconds since the Unix epoch, for the `iat` / `exp` claims of introspection.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
