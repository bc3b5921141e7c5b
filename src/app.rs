//! The composition root: the router with its middleware stack, and `run`. The state it is built
//! from is [`crate::state::AppState`]; handlers take it from the router, never from here.

use std::future::Future;

pub use crate::state::{AppState, open_store};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    middleware,
    response::IntoResponse,
    routing::{any, get, post},
};
use tower::ServiceBuilder;

use crate::{
    auth,
    dispatch::Dispatch,
    edge::{Edge, EdgeLayer},
    error::GatewayError,
    proxy,
    readiness::Phase,
    telemetry::access_log::{self, AccessLog, Observe, ObserveLayer},
};

/// The gateway's whole stack: the router, behind the proxies' direct paths, inside the edge
/// and observe layers.
pub type Gateway = Edge<Observe<Dispatch>>;

/// The router with the whole middleware stack. Separate from serving so tests can drive it
/// with `oneshot` or a real listener.
pub fn app(state: AppState) -> Gateway {
    // Without a metrics listener nothing would ever read the metrics: no recorder, so every
    // metric call is a no-op.
    if state.config.server.metrics_listen.is_some() {
        crate::telemetry::metrics_handle();
    }
    let dispatch = Dispatch::new(router(state.clone()), state.clone());
    stack(&state, dispatch)
}

/// The stack around the router alone, every request routed by axum: what [`app`] must answer
/// exactly like (this module's tests compare the two).
#[cfg(test)]
pub fn routed_only(state: AppState) -> Gateway {
    stack(
        &state,
        Dispatch::routed_only(router(state.clone()), state.clone()),
    )
}

/// Every route of the public listener, with the state.
fn router(state: AppState) -> Router {
    let pleo_route = format!("{}/{{*path}}", state.config.proxy.pleo_prefix);
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
        .route("/auth/jwks.json", get(auth::jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Metrics are served only on `server.metrics_listen`; here the path is the gateway's.
        .route("/metrics", any(not_found))
        // A catch-all needs at least one character: `/metrics/` itself is routed on its own.
        .route("/metrics/", any(not_found))
        .route("/metrics/{*rest}", any(not_found))
        // The gateway's own namespaces never fall through to the app, their roots included.
        .route("/auth", any(not_found))
        .route("/auth/", any(not_found))
        .route("/auth/{*rest}", any(not_found))
        .route(&state.config.proxy.pleo_prefix, any(not_found))
        .route(
            &format!("{}/", state.config.proxy.pleo_prefix),
            any(not_found),
        )
        // The routes above are labelled by their template; the two proxies below label
        // themselves (their templates depend on the configuration) and skip this layer.
        .route_layer(middleware::from_fn(access_log::label_route))
        .route(&pleo_route, any(proxy::proxy_to_pleo));
    // With an app behind the gateway, everything unrouted is the app's; without one, 404.
    let router = if state.upstream.is_some() {
        router.fallback(proxy::proxy_to_upstream)
    } else {
        router.fallback(not_found)
    };
    router
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The edge and observe layers around `inner`.
fn stack<S>(state: &AppState, inner: S) -> Edge<Observe<S>> {
    let access_log = AccessLog {
        enabled: state.config.server.access_log,
    };
    let trusted_proxies = state.config.server.trusted_proxies.clone();
    // The stack wraps the router once, as one service, instead of each route through
    // `Router::layer` (which boxes every route's stack and clones it into a fresh box on each
    // request). It is served as it is: wrapped in a Router of its own, as it once was, every
    // request was routed a second time (a url-params extension and a boxed clone).
    ServiceBuilder::new()
        // Outermost: request ids (an inbound one only from a trusted proxy) exist before the
        // request's span starts, and secrets are marked sensitive before anything could log
        // headers; on the way out, the id and HTML error pages.
        .layer(EdgeLayer::new(trusted_proxies))
        // The request's span (its id on every log line), metrics and access-log line, and
        // panics turned into 500s instead of dropped connections. Neither the span nor the line
        // names the path or query: the query of /auth/callback carries the authorisation code
        // and state, which must not reach a log line.
        .layer(ObserveLayer(access_log))
        .service(inner)
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

/// Ready while starting-up is over and no shutdown began; the store's health is reported but,
/// once it has answered once, does not decide (see `readiness.rs` for why).
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.sessions.store();
    let (phase, store_status) = if state.readiness.phase() == Phase::Draining {
        // Decided already: answer at once instead of waiting on a store that may be down.
        (Phase::Draining, "not_checked")
    } else {
        let (phase, health) = state.readiness.check(store.ping()).await;
        (phase, health.as_str())
    };
    let ready = phase == Phase::Serving;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": ready,
            "status": phase.as_str(),
            "store": store.kind(),
            "store_status": store_status,
        })),
    )
}

/// Serves `router` on `listener` with default limits until `shutdown` resolves, then drains
/// in-flight requests. `main` uses [`crate::server::serve`] with the configured limits.
pub async fn run(
    listener: tokio::net::TcpListener,
    router: impl crate::server::Served,
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

#[cfg(test)]
mod tests;
