//! The session store: a byte-level interface with two backends, Redis and memory.
//!
//! The store never sees a plaintext token or a session id: it is handed hashed keys and sealed
//! blobs by [`crate::session::Sessions`]. Every session write is a compare-and-set on a version
//! number, so a slow writer can never overwrite a newer token pair.

use std::time::Duration;

use super::{memory_store::MemoryStore, redis_store::RedisStore};

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
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The in-memory store refused to grow further.
    #[error("session store is full: {0}")]
    Full(&'static str),
    /// Redis answered something the gateway did not write.
    #[error("unexpected data in the session store: {0}")]
    Corrupt(&'static str),
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
