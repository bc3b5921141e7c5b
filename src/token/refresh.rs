//! Refreshing access tokens exactly once per session, however many requests want it at once.
//!
//! Pleo rotates refresh tokens and treats the reuse of a rotated one as an attack that revokes
//! the whole grant. So two requests must never both spend the same refresh token:
//!
//! 1. Requests that find the token inside the refresh margin ask [`RefreshCoordinator`].
//! 2. In this process, one task per session at a time goes further; the others queue behind it
//!    (single-flight), so a burst of requests costs one lock attempt, not hundreds. They share
//!    its outcome: a new pair by re-reading the session, a transient failure by answering with
//!    it (503) rather than each trying again in turn.
//! 3. Across replicas, that task takes the session's lock in the store (`SET NX PX` with a random
//!    owner token). The lock outlives the token request: its TTL is the token request timeout
//!    plus a margin, and it is extended while the request runs. Only the owner releases it.
//! 4. Whoever holds the lock re-reads the session first: if another replica already stored a
//!    new pair, it uses that and sends nothing. Replicas that find the lock taken poll the
//!    session (bounded) until the new pair appears, then use it; if none appears in time they
//!    answer 503 — never a logout.
//! 5. The new pair is written with a version check before anyone uses it.
//!
//! The refresh runs in its own task, so a client that disconnects mid-refresh cannot cancel it
//! between "Pleo rotated the pair" and "we stored the new pair" — the one gap that would lose the
//! grant.
//!
//! The README's "Tokens and refresh" section tells the same story for operators. The code is in
//! three parts:
//!
//! - this file: the [`RefreshCoordinator`] API and the in-process single-flight (steps 1–2);
//! - `refresh/protocol.rs`: the cross-replica protocol (steps 3–5), to be read top to bottom;
//! - `refresh/proactive.rs`: the background sweeper behind `pleo.proactive_refresh`.

mod proactive;
mod protocol;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::ExposeSecret;
use tracing::Instrument;

use super::oauth::{PleoOAuth, TokenEndpoint};
use crate::{
    session::{Clock, Session, SessionKey, Sessions, StoreError},
    telemetry::{self, RefreshOutcome},
};

/// How long clients are told to wait after a transient refresh failure.
const REFRESH_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Added to the token request timeout to get the lock's TTL, so the lock outlives the request.
const LOCK_MARGIN: Duration = Duration::from_secs(10);

/// What a refresh is for; decides, after waiting, whether it is still needed.
#[derive(Clone, Debug)]
enum Want {
    /// A token that will not need refreshing within `margin`.
    Fresh { margin: Duration },
    /// Any token but this one, which Pleo rejected.
    Replace { rejected: String },
}

/// Why a fresh token could not be had.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RefreshError {
    /// Pleo rejected the refresh token: the grant is over, and the session was deleted.
    #[error("the grant was rejected by Pleo ({0}); the session has ended")]
    Ended(String),
    /// The session disappeared meanwhile (logged out in another tab).
    #[error("the session no longer exists")]
    Gone,
    /// Pleo could not be asked right now; the session is kept.
    #[error("refresh failed transiently: {reason}")]
    Unavailable {
        /// For logs only.
        reason: String,
        /// For the `Retry-After` header.
        retry_after: Duration,
    },
    /// The store failed; the session is kept.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Hands out sessions whose access token is fresh, refreshing at most once at a time per session.
#[derive(Debug)]
pub struct RefreshCoordinator {
    /// Pleo's token endpoint ([`PleoOAuth`]), or a scripted fake in unit tests.
    endpoint: Arc<dyn TokenEndpoint>,
    sessions: Sessions,
    margin: Duration,
    /// The store lock's lifetime: the token request timeout plus [`LOCK_MARGIN`].
    lock_ttl: Duration,
    /// How long a caller waits for a refresh (its own or another replica's) before a 503.
    lock_wait: Duration,
    locks: Mutex<HashMap<SessionKey, Arc<Flight>>>,
    /// "Now" for every refresh decision: due-ness, back-off, token expiry.
    clock: Clock,
}

/// The in-process single-flight of one session: who may try now, and how the attempts that
/// others queued behind ended.
#[derive(Debug, Default)]
struct Flight {
    /// Held by the one task per session that is refreshing (or waiting for the store lock).
    turn: tokio::sync::Mutex<()>,
    /// Attempts finished so far, and the error of the last one if it failed transiently.
    outcome: Mutex<(u64, Option<RefreshError>)>,
}

impl Flight {
    fn outcome(&self) -> std::sync::MutexGuard<'_, (u64, Option<RefreshError>)> {
        self.outcome.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many attempts had finished when a task joined the queue.
    fn finished(&self) -> u64 {
        self.outcome().0
    }

    /// The transient failure of the last attempt, if one finished after `seen` and failed so.
    fn failure_since(&self, seen: u64) -> Option<RefreshError> {
        let outcome = self.outcome();
        if outcome.0 > seen {
            outcome.1.clone()
        } else {
            None
        }
    }

    fn record(&self, result: &Result<Session, RefreshError>) {
        let mut outcome = self.outcome();
        outcome.0 += 1;
        outcome.1 = match result {
            Err(e @ (RefreshError::Unavailable { .. } | RefreshError::Store(_))) => Some(e.clone()),
            _ => None,
        };
    }
}

/// The outcome of a refresh whose protocol did not name one: what its result says.
fn outcome_of(result: &Result<Session, RefreshError>) -> RefreshOutcome {
    match result {
        Ok(_) => RefreshOutcome::NotNeeded,
        Err(RefreshError::Ended(_)) => RefreshOutcome::Rejected,
        Err(RefreshError::Gone) => RefreshOutcome::Gone,
        Err(RefreshError::Unavailable { .. }) => RefreshOutcome::Transient,
        Err(RefreshError::Store(_)) => RefreshOutcome::StoreError,
    }
}

/// Whether the token is inside `margin` of expiring, the margin capped at half the token's
/// lifetime so a short-lived token is not refreshed constantly.
fn needs_refresh_within(session: &Session, now_ms: u64, margin: Duration) -> bool {
    let margin_ms = u64::try_from(margin.as_millis())
        .unwrap_or(u64::MAX)
        .min(session.data.access_lifetime_ms / 2);
    now_ms.saturating_add(margin_ms) >= session.data.access_expires_at_ms
}

impl RefreshCoordinator {
    /// `margin` is `pleo.refresh_before_expiry`; `request_timeout` is the token request's
    /// deadline (`pleo.request_timeout`), from which the lock's lifetime is derived.
    pub fn new(
        oauth: Arc<PleoOAuth>,
        sessions: Sessions,
        margin: Duration,
        request_timeout: Duration,
    ) -> Self {
        Self::with_seams(oauth, sessions, margin, request_timeout, Clock::System)
    }

    /// Like [`new`](Self::new), with the two seams the unit tests use: any [`TokenEndpoint`]
    /// (a scripted fake) instead of Pleo's, and a [`Clock`] (`Clock::tokio()`, so that
    /// `tokio::time::advance` moves token expiry and back-off along with the protocol's sleeps).
    pub fn with_seams(
        endpoint: Arc<dyn TokenEndpoint>,
        sessions: Sessions,
        margin: Duration,
        request_timeout: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            endpoint,
            sessions,
            margin,
            lock_ttl: request_timeout + LOCK_MARGIN,
            lock_wait: request_timeout + Duration::from_secs(5),
            locks: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Whether the session's access token is inside its refresh margin: `refresh_before_expiry`,
    /// capped at half the token's lifetime so a short-lived token is not refreshed constantly.
    pub fn needs_refresh(&self, session: &Session, now_ms: u64) -> bool {
        needs_refresh_within(session, now_ms, self.margin)
    }

    /// Returns `session` if its token is fresh, else a refreshed copy.
    pub async fn fresh(self: &Arc<Self>, session: Session) -> Result<Session, RefreshError> {
        if !self.needs_refresh(&session, self.clock.now_ms()) {
            return Ok(session);
        }
        let margin = self.margin;
        self.refresh(session.key, Want::Fresh { margin }).await
    }

    /// Refreshes because Pleo answered 401 to `rejected_access_token`, unless the stored token
    /// has already changed (someone else refreshed), in which case that one is returned.
    pub async fn refresh_after_rejection(
        self: &Arc<Self>,
        key: SessionKey,
        rejected_access_token: String,
    ) -> Result<Session, RefreshError> {
        self.refresh(
            key,
            Want::Replace {
                rejected: rejected_access_token,
            },
        )
        .await
    }

    async fn refresh(
        self: &Arc<Self>,
        key: SessionKey,
        want: Want,
    ) -> Result<Session, RefreshError> {
        let this = Arc::clone(self);
        // A child of the request's span (its request id on the refresh's log lines, its trace).
        let span = tracing::info_span!("refresh", session = key.short());
        // Spawned: once started, the refresh completes and is stored even if our caller is gone.
        let task =
            tokio::spawn(async move { this.refresh_locked(key, want).await }.instrument(span));
        // The caller waits a bounded time; the task itself goes on (dropping its handle does
        // not cancel it), e.g. to store a rotated pair through a Redis outage.
        match tokio::time::timeout(self.lock_wait, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(RefreshError::Unavailable {
                reason: format!("refresh task failed: {e}"),
                retry_after: REFRESH_RETRY_AFTER,
            }),
            Err(_) => Err(RefreshError::Unavailable {
                reason: "the refresh is taking too long".into(),
                retry_after: REFRESH_RETRY_AFTER,
            }),
        }
    }

    fn local_lock(&self, key: &SessionKey) -> Arc<Flight> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(key.clone()).or_default())
    }

    fn release_local_lock(&self, key: &SessionKey, lock: Arc<Flight>) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Two references left (the map's and ours) means nobody else is queued: forget it.
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(key);
        }
    }

    async fn refresh_locked(&self, key: SessionKey, want: Want) -> Result<Session, RefreshError> {
        let lock = self.local_lock(&key);
        let seen = lock.finished();
        let result = {
            let _turn = lock.turn.lock().await;
            // The attempt we queued behind failed transiently: its answer is ours too. Trying
            // again at once would send the same refresh to an endpoint that has just failed —
            // after a timeout, with a refresh token Pleo may already have rotated — and hold
            // every request queued here for one more request timeout each.
            match lock.failure_since(seen) {
                Some(failure) => Err(failure),
                None => {
                    let started = std::time::Instant::now();
                    let mut outcome = None;
                    let result = self
                        .refresh_across_replicas(&key, &want, &mut outcome)
                        .await;
                    let outcome = outcome.unwrap_or_else(|| outcome_of(&result));
                    telemetry::refresh_finished(outcome, key.short(), started.elapsed());
                    lock.record(&result);
                    result
                }
            }
        };
        self.release_local_lock(&key, lock);
        result
    }

    /// Whether `current` still needs the refresh this caller asked for.
    fn still_needed(&self, current: &Session, want: &Want) -> bool {
        match want {
            Want::Replace { rejected } => current.data.access_token.expose_secret() == rejected,
            Want::Fresh { margin } => needs_refresh_within(current, self.clock.now_ms(), *margin),
        }
    }
}
