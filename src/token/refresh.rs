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

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::ExposeSecret;

use super::oauth::{PleoOAuth, TokenError};
use crate::session::{
    BackoffPolicy, CasOutcome, Session, SessionKey, Sessions, StoreError, id::random_token, now_ms,
};

/// How long clients are told to wait after a transient refresh failure.
const REFRESH_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Attempts at storing a new pair when unrelated writes race with it.
const MAX_STORE_ATTEMPTS: usize = 3;
/// How long to keep retrying to store a pair Pleo has already issued through store errors
/// (the refresh lock is extended meanwhile).
const STORE_RETRY_WINDOW: Duration = Duration::from_secs(120);
/// Added to the token request timeout to get the lock's TTL, so the lock outlives the request.
const LOCK_MARGIN: Duration = Duration::from_secs(10);
/// Back-off after transient refresh failures: 1 s, 2 s, 4 s … up to a minute between attempts.
const BACKOFF: BackoffPolicy = BackoffPolicy {
    first: Duration::from_secs(1),
    max: Duration::from_secs(60),
    memory: Duration::from_secs(600),
};
/// How often the background refresh looks for sessions to refresh.
const PROACTIVE_SWEEP: Duration = Duration::from_secs(1);
/// Sessions used within this window count as active for background refresh.
const PROACTIVE_ACTIVE_WINDOW: Duration = Duration::from_secs(300);
/// Longest pause between two looks at a lock held by another replica.
const MAX_POLL: Duration = Duration::from_millis(250);

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
    oauth: Arc<PleoOAuth>,
    sessions: Sessions,
    margin: Duration,
    lock_ttl: Duration,
    lock_wait: Duration,
    locks: Mutex<HashMap<SessionKey, Arc<Flight>>>,
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
        Self {
            oauth,
            sessions,
            margin,
            lock_ttl: request_timeout + LOCK_MARGIN,
            lock_wait: request_timeout + Duration::from_secs(5),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the session's access token is inside its refresh margin: `refresh_before_expiry`,
    /// capped at half the token's lifetime so a short-lived token is not refreshed constantly.
    pub fn needs_refresh(&self, session: &Session, now_ms: u64) -> bool {
        needs_refresh_within(session, now_ms, self.margin)
    }

    /// Returns `session` if its token is fresh, else a refreshed copy.
    pub async fn fresh(self: &Arc<Self>, session: Session) -> Result<Session, RefreshError> {
        if !self.needs_refresh(&session, now_ms()) {
            return Ok(session);
        }
        let margin = self.margin;
        self.refresh(session.key, Want::Fresh { margin }).await
    }

    /// Starts the background refresh of recently used sessions (`pleo.proactive_refresh`): every
    /// second, sessions a request used in the last five minutes whose token comes within twice
    /// the refresh margin of expiring are refreshed, through the same lock and single-flight as
    /// request-driven refreshes. The task ends when the coordinator is dropped.
    pub fn spawn_proactive_refresh(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROACTIVE_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let margin = this.margin * 2;
                let now = now_ms();
                for session in this.sessions.recently_used(PROACTIVE_ACTIVE_WINDOW) {
                    if !needs_refresh_within(&session, now, margin) {
                        continue;
                    }
                    if let Err(e) = this
                        .refresh(session.key.clone(), Want::Fresh { margin })
                        .await
                    {
                        tracing::debug!(session = session.key.short(), error = %e, "background refresh did not succeed");
                    }
                }
            }
        });
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
        // Spawned: once started, the refresh completes and is stored even if our caller is gone.
        let task = tokio::spawn(async move { this.refresh_locked(key, want).await });
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
                    let result = self.refresh_across_replicas(&key, &want).await;
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
            Want::Fresh { margin } => needs_refresh_within(current, now_ms(), *margin),
        }
    }

    async fn refresh_across_replicas(
        &self,
        key: &SessionKey,
        want: &Want,
    ) -> Result<Session, RefreshError> {
        let owner = random_token();
        let give_up_at = std::time::Instant::now() + self.lock_wait;
        let mut pause = Duration::from_millis(20);
        // Requests that queued behind this replica's refresh find its result in the session
        // cache (written together with the store): no store round trip per waiter.
        if let Some(cached) = self.sessions.cached(key)
            && !self.still_needed(&cached, want)
        {
            return Ok(cached);
        }
        loop {
            // Another replica may have finished while we queued or polled.
            let current = self.sessions.reload(key).await?.ok_or(RefreshError::Gone)?;
            if !self.still_needed(&current, want) {
                return Ok(current);
            }
            if let Some(retry_after) = self.sessions.refresh_backoff(key, now_ms()).await? {
                return Err(RefreshError::Unavailable {
                    reason: "backing off after a failed refresh".into(),
                    retry_after,
                });
            }
            if self
                .sessions
                .lock_refresh(key, &owner, self.lock_ttl)
                .await?
            {
                let result = self.refresh_holding_lock(key, want, &owner).await;
                if let Err(e) = self.sessions.unlock_refresh(key, &owner).await {
                    // It expires on its own after lock_ttl.
                    tracing::warn!(session = key.short(), error = %e, "could not release the refresh lock");
                }
                return result;
            }
            if std::time::Instant::now() >= give_up_at {
                return Err(RefreshError::Unavailable {
                    reason: "another replica is still refreshing this session".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    async fn refresh_holding_lock(
        &self,
        key: &SessionKey,
        want: &Want,
        owner: &str,
    ) -> Result<Session, RefreshError> {
        // Re-read under the lock: whoever held it before us may have stored a new pair between
        // our last look and taking the lock.
        let current = self.sessions.reload(key).await?.ok_or(RefreshError::Gone)?;
        if !self.still_needed(&current, want) {
            return Ok(current);
        }
        let Some(refresh_token) = current.data.refresh_token.clone() else {
            self.sessions.delete(key).await?;
            return Err(RefreshError::Ended("no refresh token".into()));
        };
        tracing::debug!(session = key.short(), "refreshing access token");
        match self
            .send_refresh_keeping_lock(key, &refresh_token, owner)
            .await
        {
            Ok(tokens) => {
                let mut data = current.data.clone();
                let issued = now_ms();
                let lifetime_ms = tokens.expires_in.map_or(data.access_lifetime_ms, |d| {
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
                });
                data.access_token = tokens.access_token;
                // Pleo always rotates; keep the old one only if a server does not.
                if let Some(rt) = tokens.refresh_token {
                    data.refresh_token = Some(rt);
                }
                data.access_expires_at_ms = issued.saturating_add(lifetime_ms);
                data.access_lifetime_ms = lifetime_ms;
                if let Some(scopes) = tokens.scopes {
                    data.scopes = scopes;
                }
                let stored = self
                    .store_refreshed(key, current, data, refresh_token.expose_secret(), owner)
                    .await;
                if stored.is_ok()
                    && let Err(e) = self.sessions.clear_refresh_backoff(key).await
                {
                    tracing::debug!(session = key.short(), error = %e, "could not clear the refresh back-off");
                }
                stored
            }
            Err(TokenError::Rejected { error }) => {
                // A rejection of a token the store no longer holds is not the end: someone
                // (another replica, not holding our lock) already rotated. Use theirs.
                if let Some(latest) = self.sessions.reload(key).await? {
                    let rotated = latest
                        .data
                        .refresh_token
                        .as_ref()
                        .is_some_and(|t| t.expose_secret() != refresh_token.expose_secret());
                    if rotated {
                        return Ok(latest);
                    }
                }
                tracing::info!(session = key.short(), error = %error, "refresh rejected; ending session");
                self.sessions.delete(key).await?;
                Err(RefreshError::Ended(error))
            }
            Err(e) => {
                // Every replica now waits before trying again, doubling with each failure: Pleo
                // asks for exponential back-off, and after a timeout the refresh token may
                // already be spent — hammering the endpoint with it helps nobody.
                let retry_after = self
                    .sessions
                    .record_refresh_failure(key, BACKOFF, now_ms())
                    .await
                    .unwrap_or(REFRESH_RETRY_AFTER);
                tracing::warn!(session = key.short(), error = %e, retry_in = ?retry_after, "refresh failed transiently; session kept");
                Err(RefreshError::Unavailable {
                    reason: e.to_string(),
                    retry_after,
                })
            }
        }
    }

    /// Sends the refresh while extending the lock every third of its TTL, so a slow token
    /// endpoint cannot let the lock expire and another replica spend the same refresh token.
    async fn send_refresh_keeping_lock(
        &self,
        key: &SessionKey,
        refresh_token: &secrecy::SecretString,
        owner: &str,
    ) -> Result<super::oauth::TokenSet, TokenError> {
        let refresh = self.oauth.refresh(refresh_token);
        tokio::pin!(refresh);
        let mut ticker = tokio::time::interval(self.lock_ttl / 3);
        ticker.tick().await;
        loop {
            tokio::select! {
                result = &mut refresh => return result,
                _ = ticker.tick() => {
                    match self.sessions.extend_refresh_lock(key, owner, self.lock_ttl).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(session = key.short(), "refresh lock lost while refreshing"),
                        Err(e) => tracing::warn!(session = key.short(), error = %e, "could not extend the refresh lock"),
                    }
                }
            }
        }
    }

    /// Writes the new pair with a version check. A conflicting write that did not rotate the
    /// refresh token (so ours is still the newest pair) is retried on top of; one that did
    /// rotate wins, because its pair was issued after ours was spent.
    async fn store_refreshed(
        &self,
        key: &SessionKey,
        mut base: Session,
        data: crate::session::SessionData,
        spent_refresh_token: &str,
        owner: &str,
    ) -> Result<Session, RefreshError> {
        let mut conflicts = 0;
        let mut backoff = Duration::from_millis(100);
        let give_up_at = std::time::Instant::now() + STORE_RETRY_WINDOW;
        while conflicts < MAX_STORE_ATTEMPTS {
            let outcome = match self.sessions.replace(key, base.version, &data).await {
                Ok(outcome) => outcome,
                // Pleo has already rotated: the pair we hold is the only valid one. Losing it
                // would log the user out, so keep trying through a store hiccup — holding the
                // lock meanwhile, so no replica spends the old refresh token in the gap.
                Err(e) if std::time::Instant::now() < give_up_at => {
                    tracing::warn!(session = key.short(), error = %e, "storing refreshed tokens failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    let _ = self
                        .sessions
                        .extend_refresh_lock(key, owner, self.lock_ttl)
                        .await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match outcome {
                CasOutcome::Written(version) => {
                    return Ok(Session {
                        key: key.clone(),
                        version,
                        absolute_deadline_ms: base.absolute_deadline_ms,
                        data,
                    });
                }
                CasOutcome::Missing => return Err(RefreshError::Gone),
                CasOutcome::Conflict => {
                    let latest = match self.sessions.reload(key).await {
                        Ok(latest) => latest.ok_or(RefreshError::Gone)?,
                        Err(e) if std::time::Instant::now() < give_up_at => {
                            tracing::warn!(session = key.short(), error = %e, "re-reading after a conflict failed; retrying");
                            tokio::time::sleep(backoff).await;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let same_grant_state = latest
                        .data
                        .refresh_token
                        .as_ref()
                        .is_some_and(|t| t.expose_secret() == spent_refresh_token);
                    if !same_grant_state {
                        return Ok(latest);
                    }
                    base = latest;
                    conflicts += 1;
                }
            }
        }
        Err(RefreshError::Unavailable {
            reason: "could not store the refreshed tokens".into(),
            retry_after: REFRESH_RETRY_AFTER,
        })
    }
}
