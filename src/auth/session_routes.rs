//! `/auth/session`, `/auth/logout`, `/auth/disconnect` and `/auth/check`.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;

use super::{
    csrf::{original_is_unsafe, require_csrf_header, same_origin_or_csrf_header},
    guard::{current_session, fresh_session, identity_headers, refresh_error, require_session},
    subject::require_subject,
};
use crate::{error::GatewayError, session::now_ms, state::AppState, token::RefreshError};

/// JSON about the current session. Never contains a token.
pub async fn session_info(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let session = require_session(&state, &headers, "/").await?;
    let data = &session.data;
    let body = serde_json::json!({
        "authenticated": true,
        "subject": data.subject,
        "scopes": data.scopes,
        "session_expires_at": rfc3339(session.absolute_deadline_ms),
        "access_token_expires_at": rfc3339(data.access_expires_at_ms),
        "logged_in_at": rfc3339(data.created_at_ms),
    });
    Ok(no_store(Json(body).into_response()))
}

fn rfc3339(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Ends the session server-side and expires the cookie. Logging out without a session is not an
/// error (the cookie is cleared anyway), so a double click does not show a failure.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    require_csrf_header(&headers)?;
    if let Some(session) = current_session(&state, &headers).await? {
        // A session that is its company's background grant stays for the background caller
        // (`crate::grants`); its browser session ends all the same.
        let kept = state.sessions.end_browser_session(&session.key).await?;
        state.websockets.close_websockets(&session.key);
        tracing::info!(
            session = session.key.short(),
            kept_as_background_grant = kept,
            "logged out"
        );
    }
    Ok(logged_out(&state, false))
}

/// Logs out and also revokes the installation at Pleo (`DELETE /v1/installations/me`, Pleo's
/// only revocation). If Pleo cannot be reached the session is kept so the user can retry.
pub async fn disconnect(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    require_csrf_header(&headers)?;
    let session = require_session(&state, &headers, "/").await?;
    let session = fresh_session(&state, session).await?;
    let mut response = state
        .pleo_api
        .delete_installation(session.data.access_token.expose_secret())
        .await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        // The token may just have been rotated by another replica (this one's copy can be a
        // second old): refresh once and retry, so "disconnected" is only said when it is true.
        let rejected = session.data.access_token.expose_secret().to_owned();
        match state
            .refresher
            .refresh_after_rejection(session.key.clone(), rejected)
            .await
        {
            Ok(renewed) => {
                response = state
                    .pleo_api
                    .delete_installation(renewed.data.access_token.expose_secret())
                    .await?;
            }
            // The grant is already dead at Pleo: nothing is left to revoke.
            Err(RefreshError::Ended(_) | RefreshError::Gone) => {}
            Err(e) => return Err(refresh_error(&state, &session.key, e)),
        }
    }
    let status = response.status();
    // 204: revoked now; 404: there was no installation left; 401: the token is already revoked.
    if !(status.is_success()
        || status == StatusCode::NOT_FOUND
        || status == StatusCode::UNAUTHORIZED)
    {
        tracing::warn!(
            status = status.as_u16(),
            "Pleo refused to delete the installation"
        );
        return Err(GatewayError::PleoUnavailable {
            retry_after: std::time::Duration::from_secs(5),
        });
    }
    state.sessions.delete(&session.key).await?;
    state.websockets.close_websockets(&session.key);
    // The installation is revoked: the company's background grant could only fail now.
    if let Some(subject) = session.data.subject.as_deref() {
        crate::grants::forget(&state, subject).await?;
    }
    tracing::info!(session = session.key.short(), "disconnected from Pleo");
    Ok(logged_out(&state, true))
}

fn logged_out(state: &AppState, disconnected: bool) -> Response {
    let mut response = Json(serde_json::json!({
        "logged_out": true,
        "disconnected": disconnected,
    }))
    .into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, state.cookies.clear());
    no_store(response)
}

/// `GET /auth/jwks.json` (on both listeners): the public keys that verify `X-Pleo-Identity`.
pub async fn jwks(State(state): State<AppState>) -> Response {
    crate::identity::jwks_response(&state.identity)
}

/// Forward-auth (nginx `auth_request`, Traefik ForwardAuth, Envoy `ext_authz`): 200 with the
/// identity headers for a live session, 401 otherwise. Any method is accepted, and any path
/// under `/auth/check/` (Envoy appends the original path to `path_prefix`). If the request being
/// checked may change state, the same CSRF rule as for proxied requests applies (403 without
/// `X-CSRF` or the browser's same-origin word): see [`original_is_unsafe`].
pub async fn check(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    if original_is_unsafe(&method, &headers) {
        same_origin_or_csrf_header(&headers, &state.config.server.public_url)?;
    }
    let session = require_session(&state, &headers, "/").await?;
    let session = require_subject(&state, session).await?;
    let mut response = no_store(StatusCode::OK.into_response());
    identity_headers(&session, response.headers_mut());
    if let Some(assertion) = state.identity.header_value(&session, now_ms()) {
        response
            .headers_mut()
            .insert(crate::identity::IDENTITY_HEADER, assertion);
    }
    Ok(response)
}
