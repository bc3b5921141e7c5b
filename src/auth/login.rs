//! `/auth/login` and `/auth/callback`: the authorisation-code flow with PKCE (S256).

use std::net::SocketAddr;

use axum::{
    extract::State,
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{guard::current_session, return_to::sanitize_return_to};
use crate::{
    error::{GatewayError, QueryParams, redirect},
    forwarded::{self, peer::Peer},
    identity::is_subject_urn,
    session::{
        SessionData, SessionId,
        cookie::{cookie_pairs, find_cookie},
        id::random_token,
        now_ms,
        pending_login::{
            MAX_RETURN_TO_BYTES, PendingLogin, PendingLogins, issue_time, logins_to_evict,
        },
    },
    state::AppState,
    token::TokenError,
};

/// Query of `/auth/login`.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
    /// Pleo's Initiation-URI flow: the subject the user chose inside Pleo.
    urn_pleo_params_oauth_subject: Option<String>,
}

/// Starts a login: a fresh `state` (256 bits) and PKCE verifier are sealed into a pending-login
/// cookie (see [`crate::session::pending_login`]): nothing is stored server-side, so anonymous
/// callers cannot grow the store. The browser is then sent to Pleo's authorize endpoint.
pub async fn begin_login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    QueryParams(query): QueryParams<LoginQuery>,
) -> Result<Response, GatewayError> {
    check_rate(&state, peer, &headers)?;
    let subject_hint = match query.urn_pleo_params_oauth_subject.as_deref() {
        None | Some("") => None,
        Some(subject) if is_subject_urn(subject) => Some(subject.to_owned()),
        Some(_) => {
            return Err(GatewayError::BadRequest(
                "urn_pleo_params_oauth_subject must be a Pleo company or organisation URN".into(),
            ));
        }
    };
    // Too long to keep in the cookie: like an unsafe value, it falls back to the start page.
    let return_to = query
        .return_to
        .as_deref()
        .filter(|r| r.len() <= MAX_RETURN_TO_BYTES);
    // The binding cookie is reused when the browser already has one, so logins started in
    // several tabs can all complete.
    let binding = find_cookie(&headers, state.cookies.binding_name())
        .filter(|v| SessionId::parse(v).is_some())
        .map_or_else(random_token, str::to_owned);
    let login_state = random_token();
    let authorize = state
        .oauth
        .authorize_url(login_state.clone(), subject_hint.as_deref());
    let now = now_ms();
    // The logins this browser has in progress (at most MAX_PENDING_LOGINS: the oldest, and any
    // unreadable, give way below).
    let present: Vec<(String, Option<u64>)> = cookie_pairs(&headers)
        .filter_map(|(name, value)| {
            let tag = state.cookies.login_tag(name)?;
            let issued = state
                .logins
                .open(tag, value, now)
                .map(|login| login.issued_at_ms);
            Some((tag.to_owned(), issued))
        })
        .collect();
    let pending = PendingLogin::new(
        &login_state,
        authorize.pkce_verifier,
        sanitize_return_to(return_to),
        subject_hint,
        issue_time(now, &present),
        &binding,
    );
    let mut response = redirect(authorize.url.as_str());
    let cookies = response.headers_mut();
    cookies.append(
        header::SET_COOKIE,
        state.cookies.set_binding(&binding, state.logins.ttl()),
    );
    // At most MAX_PENDING_LOGINS per browser: the oldest (and any unreadable) give way.
    for tag in logins_to_evict(&present) {
        cookies.append(header::SET_COOKIE, state.cookies.clear_login(&tag));
    }
    crate::telemetry::metrics::login_started();
    cookies.append(
        header::SET_COOKIE,
        state.cookies.set_login(
            &PendingLogins::tag(&login_state),
            &state.logins.seal(&pending),
            state.logins.ttl(),
        ),
    );
    Ok(response)
}

/// Applies the login endpoints' rate limits to the client address the trusted proxies yield.
fn check_rate(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), GatewayError> {
    let client = forwarded::resolve(
        peer.ip(),
        &state.config.server.trusted_proxies,
        headers,
        &state.public_origin,
    )
    .client;
    state.login_limiter.check(client).map_err(|retry_after| {
        tracing::info!(%client, "login rate limit reached");
        GatewayError::RateLimited { retry_after }
    })
}

/// Query of `/auth/callback`.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Completes a login: opens (and clears) the pending-login cookie of this `state`, exchanges the
/// code with the PKCE verifier, records who logged in, and starts a brand-new session.
pub async fn complete_login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    QueryParams(query): QueryParams<CallbackQuery>,
) -> Result<Response, GatewayError> {
    if let Err(e) = check_rate(&state, peer, &headers) {
        crate::telemetry::metrics::login_failed(e.code());
        return Err(e);
    }
    let Some(login_state) = query.state.clone().filter(|s| !s.is_empty()) else {
        crate::telemetry::metrics::login_failed("bad_request");
        return Err(GatewayError::BadRequest(
            "the callback has no state parameter; start the login again".into(),
        ));
    };
    let tag = PendingLogins::tag(&login_state);
    let mut response = match finish_login(&state, &headers, &login_state, &tag, query).await {
        Ok(response) => {
            crate::telemetry::metrics::login_completed();
            response
        }
        Err(e) => {
            crate::telemetry::metrics::login_failed(e.code());
            e.into_response()
        }
    };
    // The pending login is spent whatever happened: a state works once.
    response
        .headers_mut()
        .append(header::SET_COOKIE, state.cookies.clear_login(&tag));
    Ok(response)
}

async fn finish_login(
    state: &AppState,
    headers: &HeaderMap,
    login_state: &str,
    tag: &str,
    query: CallbackQuery,
) -> Result<Response, GatewayError> {
    // Login CSRF: a callback URL carrying someone else's state and code (an attacker who
    // started a login with their own account and sent the link on) must not log this browser
    // in. Only the browser holding the pending-login cookie set at /auth/login may finish, and
    // "never proceed with token exchange if the state validation fails" (Pleo).
    let pending = find_cookie(headers, &state.cookies.login_name(tag))
        .and_then(|value| state.logins.open_for_state(login_state, value, now_ms()))
        .ok_or_else(|| {
            tracing::warn!("callback without a valid pending login for its state; refused");
            GatewayError::LoginStateInvalid
        })?;
    // A pending-login cookie planted from a sibling subdomain carries someone else's login:
    // only the browser holding the binding cookie it was started with may finish it.
    if !pending.bound_to(find_cookie(headers, state.cookies.binding_name())) {
        tracing::warn!("callback from a browser that did not start this login; refused");
        return Err(GatewayError::LoginStateInvalid);
    }
    if let Some(error) = query.error {
        return Err(GatewayError::AuthorizationRefused {
            error: truncate(&error, 64),
            description: query.error_description.map(|d| truncate(&d, 300)),
        });
    }
    let code = query
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| GatewayError::BadRequest("the callback has no code parameter".into()))?;

    let tokens = state
        .oauth
        .exchange_code(&code, &pending.pkce_verifier)
        .await
        .map_err(|e| match e {
            TokenError::Rejected { error } => GatewayError::TokenExchangeRejected(error),
            TokenError::Timeout => GatewayError::PleoTimeout,
            other => {
                tracing::warn!(error = %other, "code exchange failed");
                GatewayError::PleoUnavailable {
                    retry_after: std::time::Duration::from_secs(5),
                }
            }
        })?;

    let issued = now_ms();
    let lifetime_ms = tokens.expires_in.map_or(15 * 60 * 1000, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    });
    let mut data = SessionData {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        access_expires_at_ms: issued.saturating_add(lifetime_ms),
        access_lifetime_ms: lifetime_ms,
        subject: None,
        scopes: tokens
            .scopes
            .unwrap_or_else(|| state.config.pleo.scopes.clone()),
        created_at_ms: issued,
    };
    match state
        .pleo_api
        .introspect(data.access_token.expose_secret())
        .await
    {
        Ok(who) => {
            data.subject = Some(who.subject);
            if !who.scopes.is_empty() {
                data.scopes = who.scopes;
            }
        }
        // The code is spent: failing the login now would waste it. The subject is filled in
        // as unknown and the session still works for API calls.
        Err(e) => tracing::warn!(error = %e, "could not read the subject after login"),
    }
    if let Some(expected) = &pending.subject_hint {
        match &data.subject {
            Some(actual) if actual == expected => {}
            Some(_) => {
                return Err(GatewayError::BadRequest(
                    "Pleo authorised a different company or organisation than the one this login was started for".into(),
                ));
            }
            // The login was started for a specific subject and it cannot be confirmed: no
            // session rather than one for a company nobody checked.
            None => {
                return Err(GatewayError::PleoUnavailable {
                    retry_after: std::time::Duration::from_secs(5),
                });
            }
        }
    }

    // A session that existed before login is ended, and a new id is issued: an id planted in the
    // browser before login (session fixation) must be worthless after it.
    if let Ok(Some(old)) = current_session(state, headers).await
        && let Err(e) = state.sessions.end_browser_session(&old.key).await
    {
        tracing::warn!(error = %e, "could not delete the pre-login session");
    }
    let (id, session) = state.sessions.create(data).await?;
    crate::telemetry::access_log::note_session(&session);
    tracing::info!(
        session = session.key.short(),
        subject = session.data.subject.as_deref().unwrap_or("unknown"),
        "login completed"
    );
    crate::grants::adopt(state, &session).await;
    let mut response = redirect(&pending.return_to);
    response.headers_mut().append(
        header::SET_COOKIE,
        state
            .cookies
            .set(id.as_str(), state.sessions.absolute_timeout()),
    );
    // The binding cookie outlives nothing it is needed for: cleared with the last pending login
    // (logins still pending in other tabs keep it).
    let now = now_ms();
    let others_pending = cookie_pairs(headers).any(|(name, value)| {
        state
            .cookies
            .login_tag(name)
            .is_some_and(|other| other != tag && state.logins.open(other, value, now).is_some())
    });
    if !others_pending {
        response
            .headers_mut()
            .append(header::SET_COOKIE, state.cookies.clear_binding());
    }
    Ok(response)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_urns_are_checked() {
        assert!(is_subject_urn(
            "urn:pleo:company:3fa85f64-5717-4562-b3fc-2c963f66afa6"
        ));
        assert!(is_subject_urn("urn:pleo:organisation:abc-123"));
        assert!(!is_subject_urn("urn:pleo:user:abc"));
        assert!(!is_subject_urn("urn:pleo:company:"));
        assert!(!is_subject_urn("urn:pleo:company:<script>"));
    }
}
