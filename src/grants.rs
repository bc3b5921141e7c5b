//! Background access (`[background]`, off by default): the app's server side calls Pleo as a
//! company when no user is present, with a service token and `X-Pleo-Subject` on the internal
//! listener, using the most recent grant of that company.
//!
//! **Where the tokens live.** Pleo rotates the refresh token at every refresh and treats a
//! second use of a rotated one as an attack that revokes the whole grant, so a refresh token
//! must never exist in two records. There is no separate copy for background use: the session
//! record a login created *is* the grant. Each subject has a slot (`{prefix}grants` in Redis)
//! holding the store key of its newest grant's record. A background call follows the slot to
//! that record and refreshes it with the same coordinator, lock, re-read and compare-and-set as
//! a browser request would ([`crate::token::refresh`] is unchanged: it only ever sees a session
//! key), so a browser, the app's server side and a background job can race for one expiring
//! token across replicas and Pleo still sees one refresh.
//!
//! **Lifetimes.** A record in a slot is *kept* ([`crate::session::backend::SessionBackend::keep`]):
//! it lives for `grant_idle_timeout` after the login and after every refresh, however its
//! browser session fares. Its browser part still ends by the idle and absolute timeouts and
//! by logout (the cookie then reads as logged out, assertions get 401); only the background
//! caller can still use it.
//!
//! **Moves.** At each successful login the subject's slot moves to the new session; the
//! previous grant is released and stays only as long as its own browser session. Logging out
//! does not remove the background grant; `POST /auth/disconnect` (which revokes the
//! installation at Pleo) does, as does `pleo-gateway grants revoke SUBJECT`. A grant Pleo
//! rejects is deleted by the refresh protocol as for any session; later background calls get
//! 401 naming the subject until someone from it logs in again.

pub mod admin;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    error::GatewayError,
    identity::is_subject_urn,
    session::{Session, SessionKey},
    state::AppState,
    token::RefreshError,
};

use crate::identity::SUBJECT_HEADER;

/// Whether `token` is one of the configured service tokens. Every token is compared, each in
/// constant time over SHA-256 digests (equal lengths), so timing says nothing about how much of
/// a guess was right, nor which token it was close to.
fn is_service_token(tokens: &[secrecy::SecretString], token: &str) -> bool {
    use secrecy::ExposeSecret;
    let presented = Sha256::digest(token.as_bytes());
    tokens.iter().fold(false, |found, configured| {
        let configured = Sha256::digest(configured.expose_secret().as_bytes());
        found | bool::from(configured.ct_eq(&presented))
    })
}

/// For a bearer `token` on the internal listener: `Some(subject)` when it is a service token
/// (background access on) with a valid `X-Pleo-Subject`, `None` when it should be checked as an
/// identity assertion. A caller that names a subject with something that is neither a service
/// token nor shaped like an assertion is refused here, so a wrong service token says "service
/// token", not "assertion" — while an app that passes the identity headers it received along
/// with its assertion is still checked as an assertion.
pub fn background_subject(
    state: &AppState,
    token: &str,
    headers: &HeaderMap,
) -> Result<Option<String>, GatewayError> {
    let background = &state.config.background;
    let subject = headers.get(SUBJECT_HEADER);
    if !background.enabled || !is_service_token(&background.service_tokens, token) {
        let looks_like_assertion = token.split('.').count() == 3;
        return match subject {
            Some(_) if !looks_like_assertion => Err(GatewayError::ServiceTokenInvalid),
            _ => Ok(None),
        };
    }
    let subject = subject
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| is_subject_urn(s))
        .ok_or_else(|| {
            GatewayError::BadRequest(
                "a background call needs X-Pleo-Subject: urn:pleo:company:<id> or urn:pleo:organisation:<id>".into(),
            )
        })?;
    Ok(Some(subject.to_owned()))
}

/// The session behind `subject`'s background grant; 401 naming the subject when there is none
/// (never logged in, revoked, disconnected, or rejected by Pleo — a dangling slot is cleared).
pub async fn session_for_subject(state: &AppState, subject: &str) -> Result<Session, GatewayError> {
    let missing = || GatewayError::NoBackgroundGrant {
        subject: subject.to_owned(),
    };
    let key = state
        .sessions
        .grant_slot(subject)
        .await?
        .ok_or_else(missing)?;
    match state.sessions.load_grant(&key).await? {
        Some(session) if session.data.subject.as_deref() == Some(subject) => Ok(session),
        _ => {
            state.sessions.clear_grant_slot(subject, Some(&key)).await?;
            tracing::info!(
                subject,
                grant = key.short(),
                "background grant is gone; slot cleared"
            );
            Err(missing())
        }
    }
}

/// A refresh failure of `subject`'s background grant: ended is 401 naming the subject (the
/// refresh protocol has deleted the record; the slot is cleared), transient is 503.
pub fn refresh_error(
    state: &AppState,
    key: &SessionKey,
    subject: &str,
    error: RefreshError,
) -> GatewayError {
    match error {
        RefreshError::Ended(_) | RefreshError::Gone => {
            state.websockets.close_websockets(key);
            let sessions = state.sessions.clone();
            let (slot, key) = (subject.to_owned(), key.clone());
            // Best effort: a slot left dangling is cleared by the next call anyway.
            tokio::spawn(async move {
                let _ = sessions.clear_grant_slot(&slot, Some(&key)).await;
            });
            tracing::info!(subject, "Pleo rejected the background grant; it is gone");
            GatewayError::NoBackgroundGrant {
                subject: subject.to_owned(),
            }
        }
        RefreshError::Unavailable { retry_after, .. } => {
            GatewayError::PleoUnavailable { retry_after }
        }
        RefreshError::Store(e) => e.into(),
    }
}

/// After a login (or once its subject is known): the session becomes its subject's background
/// grant and the previous grant goes back to being just its own session's. Failures are logged,
/// never fail the login: background access then keeps the previous grant.
pub async fn adopt(state: &AppState, session: &Session) {
    let background = &state.config.background;
    let Some(subject) = session.data.subject.as_deref() else {
        return;
    };
    if !background.enabled {
        return;
    }
    let key = &session.key;
    match state
        .sessions
        .keep_for_background(key, background.grant_idle_timeout)
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(subject, error = %e, "could not keep the login as the background grant");
            return;
        }
    }
    match state.sessions.point_grant_slot(subject, key).await {
        Ok(previous) => {
            tracing::info!(
                subject,
                grant = key.short(),
                "background grant moved to the newest login"
            );
            if let Some(previous) = previous.filter(|previous| previous != key)
                && let Err(e) = state.sessions.release_from_background(&previous).await
            {
                tracing::warn!(subject, error = %e, "could not release the previous background grant");
            }
        }
        Err(e) => {
            tracing::warn!(subject, error = %e, "could not point the background slot at the newest login");
            let _ = state.sessions.release_from_background(key).await;
        }
    }
}

/// After `POST /auth/disconnect` revoked `subject`'s installation at Pleo: its background grant
/// is removed too (it could only fail now).
pub async fn forget(state: &AppState, subject: &str) -> Result<(), GatewayError> {
    if let Some(key) = state.sessions.grant_slot(subject).await? {
        state.sessions.clear_grant_slot(subject, Some(&key)).await?;
        state.sessions.release_from_background(&key).await?;
        tracing::info!(
            subject,
            grant = key.short(),
            "background grant removed (disconnected)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn any_configured_service_token_matches_and_nothing_else() {
        let tokens = [
            SecretString::from("first-token-0123456789-0123456789"),
            SecretString::from("second-token-0123456789-012345678"),
        ];
        assert!(is_service_token(
            &tokens,
            "first-token-0123456789-0123456789"
        ));
        assert!(is_service_token(
            &tokens,
            "second-token-0123456789-012345678"
        ));
        assert!(!is_service_token(
            &tokens,
            "first-token-0123456789-012345678"
        ));
        assert!(!is_service_token(&tokens, ""));
        assert!(!is_service_token(&[], "first-token-0123456789-0123456789"));
    }
}
