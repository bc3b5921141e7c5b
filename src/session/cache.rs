//! A per-replica cache of recently loaded sessions.
//!
//! It serves two purposes. Speed: a proxied request whose session was read from the store less
//! than [`FRESH_FOR`] ago costs no Redis round trip, so staleness across replicas is bounded to
//! about a second (a logout or refresh on another replica is seen within that time). Resilience:
//! when the store fails, a proxied call can still be answered from a cached session whose access
//! token has not expired, instead of failing or, worse, logging the user out.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use super::{Session, SessionKey};

/// How long a cached session is used without asking the store.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Upper bound on cached sessions; beyond it, entries older than [`FRESH_FOR`] are dropped.
const MAX_ENTRIES: usize = 50_000;

#[derive(Debug)]
struct Entry {
    session: Session,
    fetched: Instant,
}

/// Sessions by store key, with the time they were read.
#[derive(Debug, Default)]
pub struct SessionCache {
    entries: RwLock<HashMap<SessionKey, Entry>>,
}

impl SessionCache {
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
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.fetched.elapsed() < FRESH_FOR);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let newer_cached = entries
            .get(&session.key)
            .is_some_and(|e| e.session.version > session.version);
        if !newer_cached {
            entries.insert(
                session.key.clone(),
                Entry {
                    session: session.clone(),
                    fetched: Instant::now(),
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
