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

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Redis($store) => $call.await,
            Store::Memory($store) => $call.await,
        }
    };
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
        dispatch!(self, s => s.load_and_touch(key, idle, now_ms))
    }

    /// Reads a session without touching its expiry.
    pub async fn load(&self, key: &str, now_ms: u64) -> Result<Option<StoredSession>, StoreError> {
        dispatch!(self, s => s.load(key, now_ms))
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
        dispatch!(self, s => s.create(key, blob, absolute_deadline_ms, idle, now_ms))
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
        dispatch!(self, s => s.compare_and_set(key, expected_version, blob, idle, now_ms))
    }

    /// Deletes a session; deleting a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete(key))
    }

    /// Takes the refresh lock of a session if free: `SET NX PX`. `token` identifies the owner.
    pub async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.try_lock(key, token, ttl))
    }

    /// Extends a held lock; false when it is no longer ours (expired and taken).
    pub async fn extend_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.extend_lock(key, token, ttl))
    }

    /// Releases a lock only if `token` still owns it.
    pub async fn unlock(&self, key: &str, token: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.unlock(key, token))
    }

    /// Records a transient refresh failure; returns how long every replica now waits before the
    /// next attempt.
    pub async fn record_refresh_failure(
        &self,
        key: &str,
        policy: BackoffPolicy,
        now_ms: u64,
    ) -> Result<Duration, StoreError> {
        dispatch!(self, s => s.record_refresh_failure(key, policy, now_ms))
    }

    /// How long until the next refresh attempt is allowed, if a back-off is running.
    pub async fn refresh_backoff(
        &self,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<Duration>, StoreError> {
        dispatch!(self, s => s.refresh_backoff(key, now_ms))
    }

    /// Forgets the failures after a successful refresh.
    pub async fn clear_refresh_backoff(&self, key: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.clear_refresh_backoff(key))
    }

    /// Counts one call against the shared rate budget `key`.
    pub async fn take_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        now_ms: u64,
    ) -> Result<BudgetDecision, StoreError> {
        dispatch!(self, s => s.take_budget(key, rate, now_ms))
    }

    /// Pauses the budget `key` until `until_ms`.
    pub async fn pause_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.pause_budget(key, rate, until_ms, now_ms))
    }

    /// Whether the backend answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping())
    }

    /// Human name of the backend, for logs and `/readyz`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Memory(_) => "memory",
        }
    }
}
