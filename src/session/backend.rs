//! The contract every session backend keeps, and the types it speaks in.
//!
//! The store never sees a plaintext token or a session id: it is handed hashed keys and sealed
//! blobs by [`crate::session::Sessions`]. Every session write is a compare-and-set on a version
//! number, so a slow writer can never overwrite a newer token pair. Both backends implement
//! [`SessionBackend`]; the compiler holds them to the same signatures, and one contract test
//! suite (`backend/contract_tests.rs`) holds them to the same behaviour.

use std::{future::Future, time::Duration};

pub use super::budget::{BudgetDecision, BudgetRate};

/// A session as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// Incremented by every successful write; the compare-and-set token.
    pub version: u64,
    /// The sealed record.
    pub blob: Vec<u8>,
    /// Unix milliseconds after which the session is gone, however active it is.
    pub absolute_deadline_ms: u64,
}

/// Result of a compare-and-set write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the new version.
    Written(u64),
    /// Someone else wrote first; re-read and decide again.
    Conflict,
    /// The session is gone (logged out, expired).
    Missing,
}

/// A store operation failed. Never means "logged out": callers answer 503 and keep the cookie.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error (the cause is for logs).
    #[error("session store unavailable: {0}")]
    Unavailable(std::sync::Arc<dyn std::error::Error + Send + Sync>),
    /// The backend holds something the gateway did not write.
    #[error("unexpected data in the session store: {0}")]
    Corrupt(&'static str),
}

/// A store failure answers 503 (with `Retry-After`): the session is not lost, only unreachable.
/// Here rather than in `error.rs`, so the error type does not import the store above it.
impl From<StoreError> for crate::error::GatewayError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "session store error");
        crate::error::GatewayError::StoreUnavailable
    }
}

/// Exponential back-off after transient refresh failures.
#[derive(Clone, Copy, Debug)]
pub struct BackoffPolicy {
    /// Wait after the first failure; doubles with each further one.
    pub first: Duration,
    /// Longest wait: attempts never stop, they just come no more often than this.
    pub max: Duration,
    /// How long the failure count is remembered after the last failure.
    pub memory: Duration,
}

/// What a session backend does. Keys are already hashed; blobs already sealed.
pub trait SessionBackend: Send + Sync {
    /// Loads a session and slides its idle expiry (never past the absolute deadline), in one
    /// round trip. `None` when absent or expired.
    fn load_and_touch(
        &self,
        key: &str,
        idle: Duration,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send;

    /// Reads a session without touching its expiry.
    fn load(
        &self,
        key: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send;

    /// Creates a session at version 1.
    fn create(
        &self,
        key: &str,
        blob: &[u8],
        absolute_deadline_ms: u64,
        idle: Duration,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the blob if the stored version still equals `expected_version`.
    fn compare_and_set(
        &self,
        key: &str,
        expected_version: u64,
        blob: &[u8],
        idle: Duration,
        now_ms: u64,
    ) -> impl Future<Output = Result<CasOutcome, StoreError>> + Send;

    /// Deletes a session; deleting a missing one is not an error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the refresh lock of a session if free (`SET NX PX`); `token` identifies the owner.
    fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Extends a held lock; false when it is no longer ours (expired and taken).
    fn extend_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Releases a lock only if `token` still owns it.
    fn unlock(&self, key: &str, token: &str)
    -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a transient refresh failure; returns how long every replica now waits before
    /// the next attempt.
    fn record_refresh_failure(
        &self,
        key: &str,
        policy: BackoffPolicy,
        now_ms: u64,
    ) -> impl Future<Output = Result<Duration, StoreError>> + Send;

    /// How long until the next refresh attempt is allowed, if a back-off is running.
    fn refresh_backoff(
        &self,
        key: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;

    /// Forgets the failures after a successful refresh.
    fn clear_refresh_backoff(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Counts one call against the shared rate budget `key` (see [`super::budget`]): admitted
    /// (after a wait of at most `rate.max_wait_ms`) or refused, atomically across replicas.
    fn take_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        now_ms: u64,
    ) -> impl Future<Output = Result<BudgetDecision, StoreError>> + Send;

    /// Pauses the budget `key` until `until_ms` (never shortens a running pause): the first
    /// call is admitted then, the next ones an interval apart.
    fn pause_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        until_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the backend answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    // Background grants (`[background]`, see `crate::grants`): a session record that is some
    // subject's background grant is *kept*. A kept record lives for `keep` after it was kept
    // and after each write (a refresh), whatever its browser session does; its browser part
    // still ends by the idle and absolute timeouts (`load_and_touch` says `None` then, while
    // `load` and `compare_and_set` go on working for the background caller).

    /// Keeps the record for `keep` after now and after each later write; false when it is gone.
    fn keep(
        &self,
        key: &str,
        keep: Duration,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stops keeping the record: it lives as long as its browser session does (deleted now if
    /// that has ended). A record never kept is left as it is.
    fn release(
        &self,
        key: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Logout: a kept record's browser session ends (the record stays for the background
    /// caller, `true`); any other record is deleted (`false`).
    fn end_browser_session(
        &self,
        key: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Points `subject`'s background slot at the record `key`; returns the key it pointed at.
    fn set_grant_slot(
        &self,
        subject: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// The key `subject`'s background slot points at.
    fn grant_slot(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Empties `subject`'s slot — only if it still points at `expected`, when given; true when
    /// it was emptied.
    fn clear_grant_slot(
        &self,
        subject: &str,
        expected: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every slot: subject and key, sorted by subject.
    fn grant_slots(&self)
    -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;
}

#[cfg(test)]
mod contract_tests;
