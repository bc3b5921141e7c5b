//! A per-replica cache of recently loaded sessions.
//!
//! It serves two purposes. Speed: a proxied request whose session was read from the store less
//! than [`FRESH_FOR`] ago costs no Redis round trip, so staleness across replicas is bounded to
//! about a second (a logout or refresh on another replica is seen within that time). Resilience:
//! when the store fails, a proxied call can still be answered from a cached session whose access
//! token has not expired, instead of failing or, worse, logging the user out.

use std::{
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use foldhash::HashMap;
// Tokio's instant: the same clock as std's in production, and one paused-time tests control.
use tokio::time::Instant;

use super::{Session, SessionKey};

/// How long a cached session is used without asking the store.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Upper bound on cached sessions; beyond it, entries older than [`FRESH_FOR`] are dropped.
const MAX_ENTRIES: usize = 20_000;
/// Entries not read or written for this long are dropped by the periodic sweep.
const KEEP_FOR: Duration = Duration::from_secs(600);
/// Sweep every this many inserts.
const SWEEP_EVERY: u64 = 1024;

#[derive(Debug)]
struct Entry {
    session: Session,
    fetched: Instant,
    /// When a request last used the session (ms since `SessionCache::epoch`; 0 = never). Kept
    /// apart from `fetched`, which background refreshes also move.
    used: AtomicU64,
}

/// Sessions by store key, with the time they were read.
#[derive(Debug)]
pub struct SessionCache {
    entries: RwLock<HashMap<SessionKey, Entry>>,
    epoch: Instant,
    inserts: AtomicU64,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            epoch: Instant::now(),
            inserts: AtomicU64::new(0),
        }
    }
}

impl SessionCache {
    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Notes that a request used this session now (an atomic store under the read lock: cheap
    /// on the hot path).
    pub fn mark_used(&self, key: &SessionKey) {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get(key) {
            entry.used.store(self.since_epoch(), Ordering::Relaxed);
        }
    }

    /// Sessions a request used within `window`, for background refresh.
    pub fn recently_used(&self, window: Duration) -> Vec<Session> {
        let now = self.since_epoch();
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .values()
            .filter(|e| {
                let used = e.used.load(Ordering::Relaxed);
                used > 0 && now.saturating_sub(used) <= window
            })
            .map(|e| e.session.clone())
            .collect()
    }

    /// The cached session if it was read less than [`FRESH_FOR`] ago.
    pub fn fresh(&self, key: &SessionKey) -> Option<Session> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|e| e.fetched.elapsed() < FRESH_FOR)
            .map(|e| e.session.clone())
    }

    /// The cached session however old (the store is failing; the caller checks token expiry).
    pub fn any(&self, key: &SessionKey) -> Option<Session> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(key).map(|e| e.session.clone())
    }

    /// Remembers a session just read from or written to the store. An older version never
    /// replaces a newer one.
    pub fn put(&self, session: &Session) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self
            .inserts
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            entries.retain(|_, e| e.fetched.elapsed() < KEEP_FOR);
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.fetched.elapsed() < FRESH_FOR);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let (newer_cached, used) = entries.get(&session.key).map_or((false, 0), |e| {
            (
                e.session.version > session.version,
                e.used.load(Ordering::Relaxed),
            )
        });
        if !newer_cached {
            entries.insert(
                session.key.clone(),
                Entry {
                    session: session.clone(),
                    fetched: Instant::now(),
                    used: AtomicU64::new(used),
                },
            );
        }
    }

    /// Forgets a session (deleted, or gone from the store).
    pub fn remove(&self, key: &SessionKey) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
    }
}
