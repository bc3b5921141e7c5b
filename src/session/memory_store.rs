//! In-process session store for a single instance (the demo, local development, tests).
//!
//! Same semantics as the Redis store, including versioned writes and single-use logins, so the
//! same tests run against both. Expired entries are dropped lazily and by a sweep on insert.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use super::backend::{
    BackoffPolicy, BudgetDecision, BudgetRate, CasOutcome, SessionBackend, StoreError,
    StoredSession,
};
use super::budget;

#[derive(Debug)]
struct Entry {
    session: StoredSession,
    /// When the browser session ends unless used again (the idle timeout, capped at the
    /// absolute deadline).
    expires_at_ms: u64,
    /// While this is in the future the record is a background grant and stays, whatever its
    /// browser session does; 0 when it is none.
    keep_until_ms: u64,
    /// How far each write moves `keep_until_ms` on.
    keep_ms: u64,
}

impl Entry {
    /// Whether the browser session is live (the cookie works).
    fn browser_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms && self.session.absolute_deadline_ms > now_ms
    }

    /// Whether the record exists at all (for the browser or as a background grant).
    fn live(&self, now_ms: u64) -> bool {
        self.browser_live(now_ms) || self.keep_until_ms > now_ms
    }
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    /// Background slots: subject → session key.
    grant_slots: std::collections::BTreeMap<String, String>,
    locks: HashMap<String, (String, std::time::Instant)>,
    /// Failure count, back-off end (unix ms), forget-after (unix ms).
    backoffs: HashMap<String, (u32, u64, u64)>,
    /// Rate budgets: the theoretical arrival time (unix ms) of each; gone once it has passed.
    budgets: HashMap<String, u64>,
    inserts: u64,
    budget_takes: u64,
}

/// A `HashMap` behind a mutex; never held across an await.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

/// Sweep expired entries every this many inserts, so an idle map cannot grow without bound.
const SWEEP_EVERY: u64 = 256;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written entry (every update is a
        // single insert), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SessionBackend for MemoryStore {
    async fn load_and_touch(
        &self,
        key: &str,
        idle: Duration,
        now_ms: u64,
    ) -> Result<Option<StoredSession>, StoreError> {
        let mut inner = self.lock();
        let Some(entry) = live(&mut inner, key, now_ms) else {
            return Ok(None);
        };
        // A background grant whose browser session has ended: not a session for the cookie.
        if !entry.browser_live(now_ms) {
            return Ok(None);
        }
        entry.expires_at_ms = (now_ms + ms(idle)).min(entry.session.absolute_deadline_ms);
        Ok(Some(entry.session.clone()))
    }

    async fn load(&self, key: &str, now_ms: u64) -> Result<Option<StoredSession>, StoreError> {
        let mut inner = self.lock();
        Ok(live(&mut inner, key, now_ms).map(|e| e.session.clone()))
    }

    async fn create(
        &self,
        key: &str,
        blob: &[u8],
        absolute_deadline_ms: u64,
        idle: Duration,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.inserts += 1;
        if inner.inserts.is_multiple_of(SWEEP_EVERY) {
            inner.sessions.retain(|_, e| e.live(now_ms));
            inner.backoffs.retain(|_, (_, _, forget)| *forget > now_ms);
        }
        inner.sessions.insert(
            key.to_owned(),
            Entry {
                session: StoredSession {
                    version: 1,
                    blob: blob.to_vec(),
                    absolute_deadline_ms,
                },
                expires_at_ms: (now_ms + ms(idle)).min(absolute_deadline_ms),
                keep_until_ms: 0,
                keep_ms: 0,
            },
        );
        Ok(())
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected_version: u64,
        blob: &[u8],
        idle: Duration,
        now_ms: u64,
    ) -> Result<CasOutcome, StoreError> {
        let mut inner = self.lock();
        let Some(entry) = live(&mut inner, key, now_ms) else {
            return Ok(CasOutcome::Missing);
        };
        if entry.session.version != expected_version {
            return Ok(CasOutcome::Conflict);
        }
        entry.session.version += 1;
        entry.session.blob = blob.to_vec();
        if entry.keep_until_ms > now_ms {
            // A background grant: each write (a refresh) keeps it longer; the browser's idle
            // expiry is the browser's business.
            entry.keep_until_ms = now_ms + entry.keep_ms;
        } else {
            entry.expires_at_ms = (now_ms + ms(idle)).min(entry.session.absolute_deadline_ms);
        }
        Ok(CasOutcome::Written(entry.session.version))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.lock().sessions.remove(key);
        Ok(())
    }

    async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        let mut inner = self.lock();
        match inner.locks.get(key) {
            Some((_, until)) if *until > now => Ok(false),
            _ => {
                inner
                    .locks
                    .insert(key.to_owned(), (token.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn extend_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        let mut inner = self.lock();
        match inner.locks.get_mut(key) {
            Some((owner, until)) if owner == token && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .locks
            .get(key)
            .is_some_and(|(owner, _)| owner == token)
        {
            inner.locks.remove(key);
        }
        Ok(())
    }

    async fn record_refresh_failure(
        &self,
        key: &str,
        policy: BackoffPolicy,
        now_ms: u64,
    ) -> Result<Duration, StoreError> {
        let mut inner = self.lock();
        let entry = inner.backoffs.entry(key.to_owned()).or_insert((0, 0, 0));
        if entry.2 <= now_ms {
            *entry = (0, 0, 0);
        }
        entry.0 = entry.0.saturating_add(1);
        let wait = policy
            .first
            .saturating_mul(1u32 << (entry.0 - 1).min(20))
            .min(policy.max);
        entry.1 = now_ms + ms(wait);
        entry.2 = now_ms + ms(policy.memory);
        Ok(wait)
    }

    async fn refresh_backoff(
        &self,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<Duration>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .backoffs
            .get(key)
            .filter(|(_, until, _)| *until > now_ms)
            .map(|(_, until, _)| Duration::from_millis(until - now_ms)))
    }

    async fn clear_refresh_backoff(&self, key: &str) -> Result<(), StoreError> {
        self.lock().backoffs.remove(key);
        Ok(())
    }

    async fn take_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        now_ms: u64,
    ) -> Result<BudgetDecision, StoreError> {
        let mut inner = self.lock();
        // A budget whose TAT has passed is as good as new (Redis lets it expire): dropped by
        // a sweep every so often, so the map holds only budgets in use.
        inner.budget_takes += 1;
        if inner.budget_takes.is_multiple_of(SWEEP_EVERY) {
            inner.budgets.retain(|_, tat| *tat > now_ms);
        }
        let stored = inner.budgets.get(key).copied().filter(|tat| *tat > now_ms);
        let (decision, new_tat) = budget::take(stored, now_ms, rate);
        if let Some(tat) = new_tat {
            inner.budgets.insert(key.to_owned(), tat);
        }
        Ok(decision)
    }

    async fn pause_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        until_ms: u64,
        _now_ms: u64,
    ) -> Result<(), StoreError> {
        let target = budget::paused_tat(until_ms, rate);
        let mut inner = self.lock();
        let tat = inner.budgets.entry(key.to_owned()).or_insert(0);
        *tat = (*tat).max(target);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn keep(&self, key: &str, keep: Duration, now_ms: u64) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(entry) = live(&mut inner, key, now_ms) else {
            return Ok(false);
        };
        entry.keep_ms = ms(keep);
        entry.keep_until_ms = now_ms + entry.keep_ms;
        Ok(true)
    }

    async fn release(&self, key: &str, now_ms: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(entry) = inner.sessions.get_mut(key) {
            entry.keep_until_ms = 0;
            if !entry.browser_live(now_ms) {
                inner.sessions.remove(key);
            }
        }
        Ok(())
    }

    async fn end_browser_session(&self, key: &str, now_ms: u64) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        match inner.sessions.get_mut(key) {
            Some(entry) if entry.keep_until_ms > now_ms => {
                entry.session.absolute_deadline_ms = 0;
                Ok(true)
            }
            _ => {
                inner.sessions.remove(key);
                Ok(false)
            }
        }
    }

    async fn set_grant_slot(&self, subject: &str, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .grant_slots
            .insert(subject.to_owned(), key.to_owned()))
    }

    async fn grant_slot(&self, subject: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().grant_slots.get(subject).cloned())
    }

    async fn clear_grant_slot(
        &self,
        subject: &str,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let matches = inner
            .grant_slots
            .get(subject)
            .is_some_and(|key| expected.is_none_or(|expected| key == expected));
        if matches {
            inner.grant_slots.remove(subject);
        }
        Ok(matches)
    }

    async fn grant_slots(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .lock()
            .grant_slots
            .iter()
            .map(|(subject, key)| (subject.clone(), key.clone()))
            .collect())
    }
}

/// The entry if present and not expired; drops it when expired.
fn live<'a>(inner: &'a mut Inner, key: &str, now_ms: u64) -> Option<&'a mut Entry> {
    let expired = inner.sessions.get(key).is_some_and(|e| !e.live(now_ms));
    if expired {
        inner.sessions.remove(key);
        return None;
    }
    inner.sessions.get_mut(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        first: Duration::from_secs(1),
        max: Duration::from_secs(5),
        memory: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn refresh_backoff_doubles_caps_and_clears() {
        let store = MemoryStore::new();
        let waits: Vec<u64> = {
            let mut waits = Vec::new();
            for _ in 0..5 {
                let wait = store
                    .record_refresh_failure("k", POLICY, 1_000)
                    .await
                    .unwrap();
                waits.push(wait.as_secs());
            }
            waits
        };
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(
            store.refresh_backoff("k", 2_000).await.unwrap(),
            Some(Duration::from_secs(4))
        );
        assert_eq!(store.refresh_backoff("k", 6_000).await.unwrap(), None);
        store.clear_refresh_backoff("k").await.unwrap();
        assert_eq!(
            store
                .record_refresh_failure("k", POLICY, 7_000)
                .await
                .unwrap()
                .as_secs(),
            1
        );
    }

    #[tokio::test]
    async fn failure_count_is_forgotten_after_the_memory_window() {
        let store = MemoryStore::new();
        store.record_refresh_failure("k", POLICY, 0).await.unwrap();
        store.record_refresh_failure("k", POLICY, 0).await.unwrap();
        let later = 61_000;
        assert_eq!(
            store
                .record_refresh_failure("k", POLICY, later)
                .await
                .unwrap()
                .as_secs(),
            1
        );
    }
}
