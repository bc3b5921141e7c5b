//! Sessions whose subject (the company or organisation) is not known yet.
//!
//! After login the gateway asks Pleo's `GET /v1/introspect` who the token speaks for. If that
//! call fails the authorisation code is already spent, so the session is created anyway, with no
//! subject. Such a session may call the Pleo API (Pleo scopes every call by the token itself),
//! but nothing is forwarded to the app and forward-auth does not say yes: an app that scopes data
//! by company must never see a request without `X-Pleo-Subject`. Instead the introspection is
//! retried on later requests, at most once per back-off interval per session (1 s doubling to
//! 60 s, per replica), and the caller gets 503 with `Retry-After` until it succeeds.

use std::time::Instant;

use secrecy::ExposeSecret;

use super::guard::fresh_session;
use crate::{
    error::GatewayError,
    session::{CasOutcome, Session},
    state::AppState,
};

/// Returns `session` with its subject known: as it is, or after asking Pleo again (and storing
/// the answer). 503 with `Retry-After` while Pleo cannot say.
pub async fn require_subject(state: &AppState, session: Session) -> Result<Session, GatewayError> {
    if session.data.subject.is_some() {
        return Ok(session);
    }
    let key = session.key.clone();
    if let Some(retry_after) = state.subject_retries.backing_off(&key, Instant::now()) {
        return Err(GatewayError::SubjectUnknown { retry_after });
    }
    let session = fresh_session(state, session).await?;
    let who = match state
        .pleo_api
        .introspect(session.data.access_token.expose_secret())
        .await
    {
        Ok(who) => who,
        Err(e) => {
            let retry_after = state.subject_retries.failed(&key, Instant::now());
            tracing::warn!(session = key.short(), error = %e, "the session's subject is still unknown");
            return Err(GatewayError::SubjectUnknown { retry_after });
        }
    };
    state.subject_retries.succeeded(&key);
    let mut updated = session.clone();
    let data = std::sync::Arc::make_mut(&mut updated.data);
    data.subject = Some(who.subject);
    if !who.scopes.is_empty() {
        data.scopes = who.scopes;
    }
    match state
        .sessions
        .replace(&key, session.version, &updated.data)
        .await
    {
        Ok(CasOutcome::Written(version)) => updated.version = version,
        // Someone wrote the session meanwhile (a refresh): this request uses what Pleo said,
        // and a later one stores it.
        Ok(_) => {}
        Err(e) => tracing::warn!(session = key.short(), error = %e, "could not store the subject"),
    }
    tracing::info!(session = key.short(), "the session's subject is now known");
    // A login whose company was unknown becomes its background grant now.
    crate::grants::adopt(state, &updated).await;
    Ok(updated)
}
