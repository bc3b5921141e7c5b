//! `/auth/session`, `/auth/logout`, `/auth/disconnect` and `/auth/check`.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{current_session, require_csrf_header, require_session};
use crate::{
    app::AppState,
    error::GatewayError,
    session::{Session, SessionKey, now_ms},
    token::RefreshError,
};

/// Header carrying the subject URN to the app / forward-auth caller.
pub const SUBJECT_HEADER: &str = "x-pleo-subject";
/// Header carrying the granted scopes (space-separated).
pub const SCOPES_HEADER: &str = "x-pleo-scopes";

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
        state.sessions.delete(&session.key).await?;
        state.websockets.close_websockets(&session.key);
        tracing::info!(session = session.key.short(), "logged out");
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
    let mut response = delete_installation(&state, &session).await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        // The token may just have been rotated by another replica (this one's copy can be a
        // second old): refresh once and retry, so "disconnected" is only said when it is true.
        let rejected = session.data.access_token.expose_secret().to_owned();
        match state
            .refresher
            .refresh_after_rejection(session.key.clone(), rejected)
            .await
        {
            Ok(renewed) => response = delete_installation(&state, &renewed).await?,
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
    tracing::info!(session = session.key.short(), "disconnected from Pleo");
    Ok(logged_out(&state, true))
}

/// `DELETE {api_url}/v1/installations/me` with the session's token.
async fn delete_installation(
    state: &AppState,
    session: &Session,
) -> Result<reqwest::Response, GatewayError> {
    let url = crate::proxy::pleo_api_url(state, "/v1/installations/me", None)?;
    state
        .pleo_api
        .delete(url)
        .bearer_auth(session.data.access_token.expose_secret())
        .timeout(state.config.pleo.request_timeout)
        .send()
        .await
        .map_err(crate::proxy::map_pleo_error)
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
        crate::proxy::same_origin_or_csrf_header(&headers, &state.config.server.public_url)?;
    }
    let session = require_session(&state, &headers, "/").await?;
    let session = super::require_subject(&state, session).await?;
    let mut response = no_store(StatusCode::OK.into_response());
    identity_headers(&session, response.headers_mut());
    Ok(response)
}

/// Whether the request forward-auth is asked about is unsafe: the sub-request's own method
/// (Envoy sends the original one; nginx's `auth_request` always sends GET), or any `X-Forwarded-Method` (Traefik) or
/// `X-Original-Method` value. The client may have supplied either header itself, so every
/// value counts and an empty or unparseable one is treated as unsafe: a method the gateway
/// cannot read is not one it can call safe.
pub fn original_is_unsafe(method: &Method, headers: &HeaderMap) -> bool {
    super::is_unsafe(method)
        || ["x-forwarded-method", "x-original-method"]
            .iter()
            .flat_map(|name| headers.get_all(*name))
            .any(|value| {
                Method::from_bytes(value.as_bytes()).map_or(true, |m| super::is_unsafe(&m))
            })
}

/// Writes `X-Pleo-Subject` / `X-Pleo-Scopes` for a session.
pub fn identity_headers(session: &Session, headers: &mut HeaderMap) {
    if let Some(value) = session
        .data
        .subject
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        headers.insert(SUBJECT_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&session.data.scopes.join(" ")) {
        headers.insert(SCOPES_HEADER, value);
    }
}

/// Returns the session with a fresh access token, mapping refresh failures to responses.
pub async fn fresh_session(state: &AppState, session: Session) -> Result<Session, GatewayError> {
    if !state.refresher.needs_refresh(&session, now_ms()) {
        return Ok(session);
    }
    let fallback = session.clone();
    let key = session.key.clone();
    match state.refresher.fresh(session).await {
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
        Err(e) => Err(refresh_error(state, &key, e)),
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

/// Who a token belongs to, from `GET {api}/v1/introspect`.
pub(super) struct Identity {
    pub subject: String,
    pub scopes: Vec<String>,
}

#[derive(Deserialize)]
struct IntrospectEnvelope {
    data: IntrospectData,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IntrospectData {
    #[serde(rename = "subjectURN")]
    subject_urn: String,
    #[serde(default)]
    scope: String,
}

/// Asks Pleo who the token belongs to.
pub(super) async fn introspect(state: &AppState, access_token: &str) -> anyhow::Result<Identity> {
    let url = crate::proxy::pleo_api_url(state, "/v1/introspect", None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let response = state
        .pleo_api
        .get(url)
        .bearer_auth(access_token)
        .timeout(state.config.pleo.request_timeout)
        .send()
        .await?
        .error_for_status()?;
    let envelope: IntrospectEnvelope = response.json().await?;
    Ok(Identity {
        subject: envelope.data.subject_urn,
        scopes: envelope
            .data
            .scope
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as map;

    #[test]
    fn any_unsafe_or_unreadable_original_method_is_unsafe() {
        let get = Method::GET;
        assert!(!original_is_unsafe(&get, &map(&[])));
        assert!(!original_is_unsafe(
            &get,
            &map(&[("x-original-method", "GET")])
        ));
        assert!(!original_is_unsafe(
            &get,
            &map(&[("x-forwarded-method", "HEAD")])
        ));
        assert!(original_is_unsafe(&Method::POST, &map(&[])));
        for hostile in ["POST", "P(ST", "", "DELETE", "PURGE"] {
            assert!(
                original_is_unsafe(&get, &map(&[("x-original-method", hostile)])),
                "{hostile:?}"
            );
        }
        // The client-supplied X-Forwarded-Method cannot mask the proxy's X-Original-Method.
        assert!(original_is_unsafe(
            &get,
            &map(&[("x-forwarded-method", "GET"), ("x-original-method", "POST")])
        ));
        assert!(original_is_unsafe(
            &get,
            &map(&[("x-forwarded-method", "GET"), ("x-forwarded-method", "PUT")])
        ));
    }
}
