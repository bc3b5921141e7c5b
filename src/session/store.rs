//! The configured session backend: an enum over the two [`SessionBackend`]s (static dispatch;
//! the trait is the contract, see [`super::backend`]).

use std::time::Duration;

pub use super::backend::{
    BackoffPolicy, BudgetDecision, BudgetRate, CasOutcome, SessionBackend, StoreError,
    StoredSession,
};
use super::{memory_store::MemoryStore, redis_store::RedisStore};

/// The configured backend. An enum rather than a trait object: two backends, static dispatch.
#[derive(Clone, Debug)]
pub enum Store {
    /// Shared across replicas.
    Redis(RedisStore),
    /// Single instance only (demo, development).
    Memory(MemoryStore),
}

/// Calls the backend, timing the operation into the store metrics (one place for every
/// operation of either backend).
macro_rules! dispatch {
    ($self:ident, $operation:literal, $store:ident => $call:expr) => {{
        let started = std::time::Instant::now();
        let result = match $self {
            Store::Redis($store) => $call.await,
            Store::Memory($store) => $call.await,
        };
        crate::telemetry::metrics::store_operation($operation, result.is_ok(), started.elapsed());
        result
    }};
}

impl Store {
    /// Loads a session and slides its idle expiry (never past the absolute deadline), in one
    /// round trip. `None` when absent or expired.
    pub async fn load_and_touch(
        &self,
        key: &str,
        idle: Duration,
        now_ms: u64,
    ) -> Result<Option<StoredSession>, StoreError> {
        dispatch!(self, "load_and_touch", s => s.load_and_touch(key, idle, now_ms))
    }

    /// Reads a session without touching its expiry.
    pub async fn load(&self, key: &str, now_ms: u64) -> Result<Option<StoredSession>, StoreError> {
        dispatch!(self, "load", s => s.load(key, now_ms))
    }

    /// Creates a session at version 1.
    pub async fn create(
        &self,
        key: &str,
        blob: &[u8],
        absolute_deadline_ms: u64,
        idle: Duration,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self, "create", s => s.create(key, blob, absolute_deadline_ms, idle, now_ms))
    }

    /// Replaces the blob if the stored version still equals `expected_version`.
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected_version: u64,
        blob: &[u8],
        idle: Duration,
        now_ms: u64,
    ) -> Result<CasOutcome, StoreError> {
        dispatch!(self, "compare_and_set", s => s.compare_and_set(key, expected_version, blob, idle, now_ms))
    }

    /// Deletes a session; deleting a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        dispatch!(self, "delete", s => s.delete(key))
    }

    /// Takes the refresh lock of a session if free: `SET NX PX`. `token` identifies the owner.
    pub async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, "try_lock", s => s.try_lock(key, token, ttl))
    }

    /// Extends a held lock; false when it is no longer ours (expired and taken).
    pub async fn extend_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, "extend_lock", s => s.extend_lock(key, token, ttl))
    }

    /// Releases a lock only if `token` still owns it.
    pub async fn unlock(&self, key: &str, token: &str) -> Result<(), StoreError> {
        dispatch!(self, "unlock", s => s.unlock(key, token))
    }

    /// Records a transient refresh failure; returns how long every replica now waits before the
    /// next attempt.
    pub async fn record_refresh_failure(
        &self,
        key: &str,
        policy: BackoffPolicy,
        now_ms: u64,
    ) -> Result<Duration, StoreError> {
        dispatch!(self, "record_refresh_failure", s => s.record_refresh_failure(key, policy, now_ms))
    }

    /// How long until the next refresh attempt is allowed, if a back-off is running.
    pub async fn refresh_backoff(
        &self,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<Duration>, StoreError> {
        dispatch!(self, "refresh_backoff", s => s.refresh_backoff(key, now_ms))
    }

    /// Forgets the failures after a successful refresh.
    pub async fn clear_refresh_backoff(&self, key: &str) -> Result<(), StoreError> {
        dispatch!(self, "clear_refresh_backoff", s => s.clear_refresh_backoff(key))
    }

    /// Counts one call against the shared rate budget `key`.
    pub async fn take_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        now_ms: u64,
    ) -> Result<BudgetDecision, StoreError> {
        dispatch!(self, "take_budget", s => s.take_budget(key, rate, now_ms))
    }

    /// Pauses the budget `key` until `until_ms`.
    pub async fn pause_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self, "pause_budget", s => s.pause_budget(key, rate, until_ms, now_ms))
    }

    /// Whether the backend answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, "ping", s => s.ping())
    }

    /// Keeps the record for `keep` after now and after each later write (background grant).
    pub async fn keep(&self, key: &str, keep: Duration, now_ms: u64) -> Result<bool, StoreError> {
        dispatch!(self, "keep", s => s.keep(key, keep, now_ms))
    }

    /// Stops keeping the record: it lives as long as its browser session does.
    pub async fn release(&self, key: &str, now_ms: u64) -> Result<(), StoreError> {
        dispatch!(self, "release", s => s.release(key, now_ms))
    }

    /// Logout: ends the browser session; true when the record stays as a background grant.
    pub async fn end_browser_session(&self, key: &str, now_ms: u64) -> Result<bool, StoreError> {
        dispatch!(self, "end_browser_session", s => s.end_browser_session(key, now_ms))
    }

    /// Points `subject`'s background slot at `key`; returns the key it pointed at.
    pub async fn set_grant_slot(
        &self,
        subject: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, "set_grant_slot", s => s.set_grant_slot(subject, key))
    }

    /// The key `subject`'s background slot points at.
    pub async fn grant_slot(&self, subject: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, "grant_slot", s => s.grant_slot(subject))
    }

    /// Empties `subject`'s slot (only if it points at `expected`, when given).
    pub async fn clear_grant_slot(
        &self,
        subject: &str,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, "clear_grant_slot", s => s.clear_grant_slot(subject, expected))
    }

    /// Every background slot: subject and key.
    pub async fn grant_slots(&self) -> Result<Vec<(String, String)>, StoreError> {
        dispatch!(self, "grant_slots", s => s.grant_slots())
    }

    /// Human name of the backend, for logs and `/readyz`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Memory(_) => "memory",
        }
    }
}
