//! Sessions whose subject (the company or organisation) is not known yet.
//!
//! After login the gateway asks Pleo's `GET /v1/introspect` who the token speaks for. If that
//! call fails the authorisation code is already spent, so the session is created anyway, with no
//! subject. Such a session may call the Pleo API (Pleo scopes every call by the token itself),
//! but nothing is forwarded to the app and forward-auth does not say yes: an app that scopes data
//! by company must never see a request without `X-Pleo-Subject`. Instead the introspection is
//! retried on later requests, at most once per back-off interval per session (1 s doubling to
//! 60 s, per replica), and the caller gets 503 with `Retry-After` until it succeeds.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use secrecy::ExposeSecret;

use super::session_routes::{fresh_session, introspect};
use crate::{
    app::AppState,
    error::GatewayError,
    session::{CasOutcome, Session, SessionKey},
};

/// First back-off after a failed introspection; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off between introspection attempts for one session.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Most sessions remembered at once; only logged-in sessions whose introspection failed are
/// ever entered, so reaching this means Pleo has been failing for many users: start afresh.
const MAX_TRACKED: usize = 10_000;

/// Per-session back-off of introspection retries on this replica.
#[derive(Debug, Default)]
pub struct SubjectRetries {
    failures: Mutex<HashMap<SessionKey, (u32, Instant)>>,
}

impl SubjectRetries {
    /// `Some(wait)` while `key` is backing off.
    fn backing_off(&self, key: &SessionKey, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (_, next) = failures.get(key)?;
        (*next > now).then(|| *next - now)
    }

    /// Records a failure; returns how long to wait before the next attempt.
    fn failed(&self, key: &SessionKey, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED && !failures.contains_key(key) {
            failures.clear();
        }
        let count = failures.get(key).map_or(0, |(count, _)| *count);
        let wait = backoff(count);
        failures.insert(key.clone(), (count.saturating_add(1), now + wait));
        wait
    }

    fn succeeded(&self, key: &SessionKey) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The wait after `failures` earlier failures: 1 s, 2 s, 4 s, … 60 s.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

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
    let who = match introspect(state, session.data.access_token.expose_secret()).await {
        Ok(who) => who,
        Err(e) => {
            let retry_after = state.subject_retries.failed(&key, Instant::now());
            tracing::warn!(session = key.short(), error = %e, "the session's subject is still unknown");
            return Err(GatewayError::SubjectUnknown { retry_after });
        }
    };
    state.subject_retries.succeeded(&key);
    let mut updated = session.clone();
    updated.data.subject = Some(who.subject);
    if !who.scopes.is_empty() {
        updated.data.scopes = who.scopes;
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
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_failure_backs_off_and_a_success_forgets() {
        let retries = SubjectRetries::default();
        let key = crate::session::SessionHasher::new(&[crate::config::EncryptionKey::generate()])
            .current("id");
        let now = Instant::now();
        assert!(retries.backing_off(&key, now).is_none());
        assert_eq!(retries.failed(&key, now), Duration::from_secs(1));
        assert!(retries.backing_off(&key, now).is_some());
        assert!(
            retries
                .backing_off(&key, now + Duration::from_secs(1))
                .is_none()
        );
        assert_eq!(retries.failed(&key, now), Duration::from_secs(2));
        retries.succeeded(&key);
        assert!(retries.backing_off(&key, now).is_none());
    }
}
