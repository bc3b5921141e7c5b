//! Who is asking, whether their token is fresh, and which headers say so: the checks both
//! proxies, forward-auth and the `/auth/*` routes run on a request that needs a session.

use std::cell::RefCell;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tracing::Instrument;

use crate::{
    error::GatewayError,
    header_memo::{Last, remembered},
    session::{Session, SessionId, SessionKey, cookie::find_cookie, now_ms},
    state::AppState,
    token::RefreshError,
};

use crate::identity::SUBJECT_HEADER;
/// Header carrying the granted scopes (space-separated).
pub const SCOPES_HEADER: &str = "x-pleo-scopes";

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
    let Some(id) = session_id(state, headers) else {
        return Ok(None);
    };
    let session = state
        .sessions
        .load_cached(&id)
        .instrument(tracing::debug_span!("session.load"))
        .await?;
    if let Some(session) = &session {
        crate::telemetry::access_log::note_session(session);
    }
    Ok(session)
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

/// Writes `X-Pleo-Subject` / `X-Pleo-Scopes` for a session.
pub fn identity_headers(session: &Session, headers: &mut HeaderMap) {
    // Names, not strings: inserting by `&str` parses the name again on every request.
    const SUBJECT: HeaderName = HeaderName::from_static(SUBJECT_HEADER);
    const SCOPES: HeaderName = HeaderName::from_static(SCOPES_HEADER);
    // The thread's last values are kept (`header_memo`): consecutive requests mostly come
    // from the same user, and the scopes are mostly the same for every user of an app.
    thread_local! {
        static LAST_SUBJECT: Last<String> = const { RefCell::new(None) };
        static LAST_SCOPES: Last<Vec<String>> = const { RefCell::new(None) };
    }
    if let Some(value) =
        session.data.subject.as_deref().and_then(|subject| {
            remembered(&LAST_SUBJECT, subject, |s| HeaderValue::from_str(s).ok())
        })
    {
        headers.insert(SUBJECT, value);
    }
    let scopes = remembered(&LAST_SCOPES, session.data.scopes.as_slice(), |scopes| {
        match scopes {
            // One scope needs no joining (and no second copy).
            [one] => HeaderValue::from_str(one),
            many => HeaderValue::from_str(&many.join(" ")),
        }
        .ok()
    });
    if let Some(value) = scopes {
        headers.insert(SCOPES, value);
    }
}

/// Returns the session with a fresh access token, mapping refresh failures to responses.
pub async fn fresh_session(state: &AppState, session: Session) -> Result<Session, GatewayError> {
    fresh_session_or(state, session, |key, e| refresh_error(state, key, e)).await
}

/// Like [`fresh_session`], with refresh failures that end the session mapped by `on_error`
/// (the internal listener has no cookie to clear and no login page to offer).
pub async fn fresh_session_or(
    state: &AppState,
    session: Session,
    on_error: impl FnOnce(&SessionKey, RefreshError) -> GatewayError,
) -> Result<Session, GatewayError> {
    if !state.refresher.needs_refresh(&session, now_ms()) {
        return Ok(session);
    }
    let fallback = session.clone();
    let key = session.key.clone();
    // Boxed: a refresh is rare, and its future inline would make the future of every request
    // that checks a session larger (futures are copied as they nest).
    match Box::pin(state.refresher.fresh(session)).await {
        Ok(fresh) => Ok(fresh),
        // The refresh failed transiently but the current token still has time left: use it
        // rather than refuse a request Pleo would accept.
        Err(RefreshError::Unavailable { .. } | RefreshError::Store(_))
            if fallback.data.access_expires_at_ms > now_ms().saturating_add(STILL_VALID_FOR_MS) =>
        {
            tracing::info!(
                session = key.short(),
                "refresh unavailable; the current access token is still valid and is used"
            );
            Ok(fallback)
        }
        Err(e) => Err(on_error(&key, e)),
    }
}

/// How much life an access token must have left to be used after a failed refresh: enough for
/// the request to reach Pleo before it expires.
const STILL_VALID_FOR_MS: u64 = 5_000;

/// Maps a refresh failure of session `key`: an ended grant is a 401 (log in again) that also
/// expires the cookie of the deleted session and closes its WebSockets to the app now, not at
/// the next periodic re-check; anything transient is 503 with `Retry-After`, and the session
/// and cookie stay as they are.
pub fn refresh_error(state: &AppState, key: &SessionKey, error: RefreshError) -> GatewayError {
    match error {
        RefreshError::Ended(_) | RefreshError::Gone => {
            state.websockets.close_websockets(key);
            GatewayError::SessionEnded {
                login_url: state.login_url("/"),
                clear_cookie: state.cookies.clear(),
            }
        }
        RefreshError::Unavailable { retry_after, .. } => {
            GatewayError::PleoUnavailable { retry_after }
        }
        RefreshError::Store(e) => e.into(),
    }
}
