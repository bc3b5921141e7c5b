//! The internal listener (`server.internal_listen`, off by default): the Pleo API proxy for the
//! app's server side.
//!
//! A browser never reaches this listener (it is bound to the pod's loopback or an internal
//! address), so it has no cookie, no CSRF rule and no login redirect. Every request must carry a
//! credential, checked before anything else happens:
//!
//! - the identity assertion the app received with a browser request, as `Authorization: Bearer
//!   <assertion>` or as the `X-Pleo-Identity` header passed on unchanged: the gateway checks its
//!   signature, issuer, audience and expiry ([`crate::identity::Identity::verify`]), loads the
//!   session it names — which must still be live: logged out, expired or disconnected is 401 —
//!   and calls Pleo with that session's token;
//! - with `[background] enabled`, a service token as `Authorization: Bearer <token>` plus
//!   `X-Pleo-Subject: <urn>`: the most recent grant of that subject ([`crate::grants`]).
//!
//! Either way the session's token is refreshed through the same exactly-once protocol as a
//! browser's ([`crate::token::refresh`]) and the request goes out through the same code
//! ([`crate::proxy::forward_to_pleo`]). Only `{pleo_prefix}/…` and `/auth/jwks.json` are served;
//! everything else is 404. An assertion is never accepted on the public listener.

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, header},
    middleware,
    response::Response,
    routing::{any, get},
};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveHeadersLayer,
};

use crate::{
    auth::guard::fresh_session_or,
    error::GatewayError,
    grants,
    identity::IDENTITY_HEADER,
    proxy::forward_to_pleo,
    session::{Session, SessionKey, now_ms},
    state::AppState,
    telemetry::access_log::{self, AccessLog, ObserveLayer},
    token::RefreshError,
};

/// The internal listener's router with its middleware stack.
pub fn router(state: AppState) -> Router {
    let pleo_route = format!("{}/{{*path}}", state.config.proxy.pleo_prefix);
    let request_id = HeaderName::from_static("x-request-id");
    let access_log = AccessLog {
        enabled: state.config.server.access_log,
    };
    Router::new()
        .route(&pleo_route, any(proxy_for_app))
        .route("/auth/jwks.json", get(crate::auth::jwks))
        .fallback(not_found)
        .layer(middleware::from_fn(access_log::label_route))
        .with_state(state)
        // The same request span, metrics and access line as the main listener (and panics
        // caught); the route labels say which listener and which credential
        // (`internal_assertion`, `internal_background`), so the two listeners' series never mix.
        .layer(ObserveLayer(access_log))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        // Both credentials this listener takes are bearer secrets.
        .layer(SetSensitiveHeadersLayer::new([
            header::AUTHORIZATION,
            HeaderName::from_static(IDENTITY_HEADER),
        ]))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

async fn not_found() -> GatewayError {
    GatewayError::NotFound
}

/// Who is calling, as their credential says.
enum Caller {
    /// The app's server side with an assertion it received: acts as that session.
    Assertion(String),
    /// A background job with a service token: acts as the subject's newest grant.
    Background(String),
}

/// `ANY {pleo_prefix}/{*path}` on the internal listener.
async fn proxy_for_app(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();
    match caller(&state, &parts.headers)? {
        Caller::Assertion(token) => {
            access_log::note_route("internal_assertion");
            let session = session_for_assertion(&state, &token).await?;
            let on_error = |key: &SessionKey, e| assertion_refresh_error(&state, key, e);
            let session = fresh_session_or(&state, session, on_error).await?;
            forward_to_pleo(&state, session, parts, body, &on_error).await
        }
        Caller::Background(subject) => {
            access_log::note_route("internal_background");
            let session = grants::session_for_subject(&state, &subject).await?;
            let on_error = |key: &SessionKey, e| grants::refresh_error(&state, key, &subject, e);
            let session = fresh_session_or(&state, session, on_error).await?;
            forward_to_pleo(&state, session, parts, body, &on_error).await
        }
    }
}

/// The credential: a bearer token (a service token when background access is on and it is
/// one, otherwise an assertion), or `X-Pleo-Identity` as the app got it.
fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let token = bearer(authorization.to_str().unwrap_or_default())
            .ok_or(GatewayError::CredentialsMissing)?;
        return Ok(match grants::background_subject(state, token, headers)? {
            Some(subject) => Caller::Background(subject),
            None => Caller::Assertion(token.to_owned()),
        });
    }
    headers
        .get(IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| Caller::Assertion(v.trim().to_owned()))
        .ok_or(GatewayError::CredentialsMissing)
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The live session an assertion names. Its idle expiry slides, as for a browser request: the
/// app acts on the user's behalf.
async fn session_for_assertion(state: &AppState, token: &str) -> Result<Session, GatewayError> {
    let verified = state.identity.verify(token, now_ms()).map_err(|e| {
        tracing::debug!(error = %e, "identity assertion refused");
        GatewayError::AssertionRefused(e.to_string())
    })?;
    let session = state
        .sessions
        .load_cached_by_key(&verified.session)
        .await?
        .ok_or(GatewayError::AssertionSessionEnded)?;
    // The reference is sealed, so it names this session; the subject must agree all the same.
    if session.data.subject.as_deref() != Some(verified.claims.sub.as_str()) {
        return Err(GatewayError::AssertionSessionEnded);
    }
    Ok(session)
}

/// A refresh failure for an assertion's session: ended is 401 (no cookie to clear here),
/// transient is 503 as for the browser.
fn assertion_refresh_error(
    state: &AppState,
    key: &SessionKey,
    error: RefreshError,
) -> GatewayError {
    match error {
        RefreshError::Ended(_) | RefreshError::Gone => {
            state.websockets.close_websockets(key);
            GatewayError::AssertionSessionEnded
        }
        RefreshError::Unavailable { retry_after, .. } => {
            GatewayError::PleoUnavailable { retry_after }
        }
        RefreshError::Store(e) => e.into(),
    }
}
