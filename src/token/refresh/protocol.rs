//! The cross-replica refresh protocol (steps 3–5 of [`super`]), in the order it runs.
//!
//! One task per session and process gets here (the single-flight in [`super`]). Then:
//!
//! 1. [`refresh_across_replicas`](RefreshCoordinator::refresh_across_replicas): re-read the
//!    session; stop if someone already refreshed it, or if a back-off from an earlier transient
//!    failure is running. Take the store lock
//!    ([`take_lock_or_wait`](RefreshCoordinator::take_lock_or_wait)); if another replica holds
//!    it, poll the session (20 ms doubling to [`MAX_POLL`]) until its pair appears, for at most
//!    the caller's wait.
//! 2. [`refresh_holding_lock`](RefreshCoordinator::refresh_holding_lock): re-read the session
//!    and the back-off once more under the lock, spend the refresh token, and act on the answer: a new pair is stored, a
//!    rejection ends the session (unless a newer pair is already stored), anything else starts
//!    or lengthens the back-off every replica honours ([`BACKOFF`]).
//! 3. [`send_refresh_keeping_lock`](RefreshCoordinator::send_refresh_keeping_lock): while
//!    Pleo answers, the lock is extended every third of its TTL so it cannot expire under us.
//! 4. [`store_refreshed`](RefreshCoordinator::store_refreshed): write the new pair with a
//!    version check; retry on top of unrelated writes, yield to a newer pair, and keep retrying
//!    through store errors for [`STORE_RETRY_WINDOW`] — Pleo has already rotated, so the pair
//!    in hand is the only valid one.
//!
//! Then the lock is released (by its owner only; otherwise it expires after its TTL).
//!
//! Each way out names its [`RefreshOutcome`] (the metrics' and the log line's `outcome`); the
//! ones not named are read off the result by the caller. The lock wait, the token request and
//! the store write are spans of their own in traces.
//!
//! Time: pauses and deadlines within this process use Tokio's time (`sleep`, `Instant`), and
//! unix-ms decisions (back-off, token expiry) the coordinator's [`Clock`](crate::session::Clock),
//! so unit tests drive the whole protocol with paused time (see `super::tests`).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::Instrument;

use super::{REFRESH_RETRY_AFTER, RefreshCoordinator, RefreshError, Want};
use crate::{
    session::{BackoffPolicy, CasOutcome, Session, SessionData, SessionKey, id::random_token},
    telemetry::RefreshOutcome,
    token::oauth::{TokenError, TokenSet},
};

#[cfg(test)]
mod tests;

/// Longest pause between two looks at a lock held by another replica.
const MAX_POLL: Duration = Duration::from_millis(250);
/// Back-off after transient refresh failures: 1 s, 2 s, 4 s … up to a minute between attempts.
const BACKOFF: BackoffPolicy = BackoffPolicy {
    first: Duration::from_secs(1),
    max: Duration::from_secs(60),
    memory: Duration::from_secs(600),
};
/// Attempts at storing a new pair when unrelated writes race with it.
const MAX_STORE_ATTEMPTS: usize = 3;
/// How long to keep retrying to store a pair Pleo has already issued through store errors
/// (the refresh lock is extended meanwhile).
const STORE_RETRY_WINDOW: Duration = Duration::from_secs(120);

impl RefreshCoordinator {
    pub(super) async fn refresh_across_replicas(
        &self,
        key: &SessionKey,
        want: &Want,
        outcome: &mut Option<RefreshOutcome>,
    ) -> Result<Session, RefreshError> {
        // Requests that queued behind this replica's refresh find its result in the session
        // cache (written together with the store): no store round trip per waiter.
        if let Some(cached) = self.sessions.cached(key)
            && !self.still_needed(&cached, want)
        {
            *outcome = Some(RefreshOutcome::NotNeeded);
            return Ok(cached);
        }
        let owner = random_token();
        let done_meanwhile = self
            .take_lock_or_wait(key, want, &owner, outcome)
            .instrument(tracing::debug_span!("refresh.lock_wait"))
            .await?;
        if let Some(current) = done_meanwhile {
            return Ok(current);
        }
        let result = self.refresh_holding_lock(key, want, &owner, outcome).await;
        if let Err(e) = self.sessions.unlock_refresh(key, &owner).await {
            // It expires on its own after lock_ttl.
            tracing::warn!(session = key.short(), error = %e, "could not release the refresh lock");
        }
        result
    }

    /// Takes the store lock (`None`), or returns the session once the refresh turns out to be
    /// done meanwhile (`Some`), polling while another replica holds the lock.
    async fn take_lock_or_wait(
        &self,
        key: &SessionKey,
        want: &Want,
        owner: &str,
        outcome: &mut Option<RefreshOutcome>,
    ) -> Result<Option<Session>, RefreshError> {
        let give_up_at = Instant::now() + self.lock_wait;
        let mut pause = Duration::from_millis(20);
        let mut waited = false;
        loop {
            // Another replica may have finished while we queued or polled.
            let current = self.sessions.reload(key).await?.ok_or(RefreshError::Gone)?;
            if !self.still_needed(&current, want) {
                *outcome = Some(if waited {
                    RefreshOutcome::Waited
                } else {
                    RefreshOutcome::NotNeeded
                });
                return Ok(Some(current));
            }
            self.check_backoff(key, outcome).await?;
            if self
                .sessions
                .lock_refresh(key, owner, self.lock_ttl)
                .await?
            {
                return Ok(None);
            }
            if Instant::now() >= give_up_at {
                *outcome = Some(RefreshOutcome::LockTimeout);
                return Err(RefreshError::Unavailable {
                    reason: "another replica is still refreshing this session".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            waited = true;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// Err while a back-off after a failed refresh runs (every replica shares it).
    async fn check_backoff(
        &self,
        key: &SessionKey,
        outcome: &mut Option<RefreshOutcome>,
    ) -> Result<(), RefreshError> {
        if let Some(retry_after) = self
            .sessions
            .refresh_backoff(key, self.clock.now_ms())
            .await?
        {
            *outcome = Some(RefreshOutcome::Backoff);
            return Err(RefreshError::Unavailable {
                reason: "backing off after a failed refresh".into(),
                retry_after,
            });
        }
        Ok(())
    }

    async fn refresh_holding_lock(
        &self,
        key: &SessionKey,
        want: &Want,
        owner: &str,
        outcome: &mut Option<RefreshOutcome>,
    ) -> Result<Session, RefreshError> {
        // Re-read under the lock: whoever held it before us may have stored a new pair between
        // our last look and taking the lock.
        let current = self.sessions.reload(key).await?.ok_or(RefreshError::Gone)?;
        if !self.still_needed(&current, want) {
            *outcome = Some(RefreshOutcome::ReuseAvoided);
            return Ok(current);
        }
        // And the back-off: the previous holder may have failed and released the lock between
        // our look at the back-off and taking the lock.
        self.check_backoff(key, outcome).await?;
        let Some(refresh_token) = current.data.refresh_token.clone() else {
            *outcome = Some(RefreshOutcome::NoRefreshToken);
            self.sessions.delete(key).await?;
            return Err(RefreshError::Ended("no refresh token".into()));
        };
        tracing::debug!(session = key.short(), "refreshing access token");
        match self
            .send_refresh_keeping_lock(key, &refresh_token, owner)
            .instrument(tracing::debug_span!("refresh.token_request"))
            .await
        {
            Ok(tokens) => {
                let data = merged(
                    SessionData::clone(&current.data),
                    tokens,
                    self.clock.now_ms(),
                );
                let stored = self
                    .store_refreshed(key, current, data, refresh_token.expose_secret(), owner)
                    .instrument(tracing::debug_span!("refresh.store_write"))
                    .await;
                *outcome = Some(match &stored {
                    Ok(_) => RefreshOutcome::Success,
                    Err(RefreshError::Gone) => RefreshOutcome::Gone,
                    Err(_) => RefreshOutcome::StoreError,
                });
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
                        *outcome = Some(RefreshOutcome::ReuseAvoided);
                        return Ok(latest);
                    }
                }
                tracing::info!(session = key.short(), error = %error, "refresh rejected; ending session");
                *outcome = Some(RefreshOutcome::Rejected);
                self.sessions.delete(key).await?;
                Err(RefreshError::Ended(error))
            }
            Err(e) => {
                // Every replica now waits before trying again, doubling with each failure: Pleo
                // asks for exponential back-off, and after a timeout the refresh token may
                // already be spent — hammering the endpoint with it helps nobody.
                let retry_after = self
                    .sessions
                    .record_refresh_failure(key, BACKOFF, self.clock.now_ms())
                    .await
                    .unwrap_or(REFRESH_RETRY_AFTER);
                tracing::warn!(session = key.short(), error = %e, retry_in = ?retry_after, "refresh failed transiently; session kept");
                *outcome = Some(RefreshOutcome::Transient);
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
        refresh_token: &SecretString,
        owner: &str,
    ) -> Result<TokenSet, TokenError> {
        let refresh = self.endpoint.refresh(refresh_token);
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
        data: SessionData,
        spent_refresh_token: &str,
        owner: &str,
    ) -> Result<Session, RefreshError> {
        let mut conflicts = 0;
        let mut backoff = Duration::from_millis(100);
        let give_up_at = Instant::now() + STORE_RETRY_WINDOW;
        while conflicts < MAX_STORE_ATTEMPTS {
            let outcome = match self.sessions.replace(key, base.version, &data).await {
                Ok(outcome) => outcome,
                // Pleo has already rotated: the pair we hold is the only valid one. Losing it
                // would log the user out, so keep trying through a store hiccup — holding the
                // lock meanwhile, so no replica spends the old refresh token in the gap.
                Err(e) if Instant::now() < give_up_at => {
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
                        data: std::sync::Arc::new(data),
                    });
                }
                CasOutcome::Missing => return Err(RefreshError::Gone),
                CasOutcome::Conflict => {
                    let latest = match self.sessions.reload(key).await {
                        Ok(latest) => latest.ok_or(RefreshError::Gone)?,
                        Err(e) if Instant::now() < give_up_at => {
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

/// The session's data with the token endpoint's answer, `issued` at that unix ms, merged in.
fn merged(mut data: SessionData, tokens: TokenSet, issued: u64) -> SessionData {
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
    data
}
