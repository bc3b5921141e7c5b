//! The `/auth/*` endpoints: login, callback, session info, logout, disconnect, forward-auth.

mod login;
pub mod pending;
pub mod rate_limit;
pub mod return_to;
#[cfg(test)]
mod return_to_tests;
mod session_routes;
pub mod subject;

use axum::http::{HeaderMap, Method};

pub use login::{begin_login, complete_login};
pub use session_routes::{
    SCOPES_HEADER, SUBJECT_HEADER, check, disconnect, fresh_session, identity_headers, logout,
    refresh_error, session_info,
};
pub use subject::require_subject;

use crate::{
    app::AppState,
    error::GatewayError,
    session::{Session, SessionId, cookie::find_cookie},
};

/// The CSRF header unsafe requests must carry. A cross-site form cannot set a custom header, and
/// a cross-site `fetch` that sets one needs a CORS preflight the gateway never approves.
pub const CSRF_HEADER: &str = "x-csrf";

/// Whether the method can change state (and so needs the CSRF header).
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Fails with 403 unless the CSRF header is present and non-empty.
pub fn require_csrf_header(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers.get(CSRF_HEADER) {
        Some(v) if !v.as_bytes().is_empty() => Ok(()),
        _ => Err(GatewayError::CsrfHeaderMissing),
    }
}

/// The session id in the request's cookie, if it is shaped like one of ours.
pub fn session_id(state: &AppState, headers: &HeaderMap) -> Option<SessionId> {
    find_cookie(headers, &state.cookies.name).and_then(SessionId::parse)
}

/// Loads the live session for this request, if any: at most one store round trip, none when
/// this replica read it within the last second.
pub async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Session>, GatewayError> {
    match session_id(state, headers) {
        Some(id) => Ok(state.sessions.load_cached(&id).await?),
        None => Ok(None),
    }
}

/// Like [`current_session`], but a missing session is a 401 carrying the login URL.
pub async fn require_session(
    state: &AppState,
    headers: &HeaderMap,
    return_to: &str,
) -> Result<Session, GatewayError> {
    current_session(state, headers)
        .await?
        .ok_or_else(|| GatewayError::NotAuthenticated {
            login_url: state.login_url(return_to),
        })
}
