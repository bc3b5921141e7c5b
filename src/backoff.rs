//! Exponential back-off per key, in this process: how long to leave something alone after it
//! failed (1 s, doubling, up to a minute), forgotten on success. Bounded: when it holds
//! [`MAX_TRACKED`] keys a new one starts it afresh, so it can never grow without limit.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// First back-off after a failure; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Most keys remembered at once.
pub const MAX_TRACKED: usize = 10_000;

/// Failures and the time of the next allowed attempt, per key.
#[derive(Debug)]
pub struct KeyedBackoff<K> {
    failures: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K> Default for KeyedBackoff<K> {
    fn default() -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> KeyedBackoff<K> {
    /// `Some(wait)` while `key` is backing off at `now`.
    pub fn backing_off(&self, key: &K, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (_, next) = failures.get(key)?;
        (*next > now).then(|| *next - now)
    }

    /// Records a failure at `now`; returns how long to wait before the next attempt.
    pub fn failed(&self, key: &K, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED && !failures.contains_key(key) {
            failures.clear();
        }
        let count = failures.get(key).map_or(0, |(count, _)| *count);
        let wait = delay(count);
        failures.insert(key.clone(), (count.saturating_add(1), now + wait));
        wait
    }

    /// Forgets `key`: its next failure starts at the first delay again.
    pub fn succeeded(&self, key: &K) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The wait after `failures` earlier failures: 1 s, 2 s, 4 s, … 60 s.
fn delay(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_minute() {
        let waits: Vec<u64> = (0..9).map(|n| delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_failure_backs_off_and_a_success_forgets() {
        let backoff = KeyedBackoff::default();
        let now = Instant::now();
        assert!(backoff.backing_off(&"k", now).is_none());
        assert_eq!(backoff.failed(&"k", now), Duration::from_secs(1));
        assert!(backoff.backing_off(&"k", now).is_some());
        assert!(backoff.backing_off(&"other", now).is_none());
        assert!(
            backoff
                .backing_off(&"k", now + Duration::from_secs(1))
                .is_none()
        );
        assert_eq!(backoff.failed(&"k", now), Duration::from_secs(2));
        backoff.succeeded(&"k");
        assert!(backoff.backing_off(&"k", now).is_none());
    }

    #[test]
    fn it_stays_bounded() {
        let backoff = KeyedBackoff::default();
        let now = Instant::now();
        for key in 0..=MAX_TRACKED {
            backoff.failed(&key, now);
        }
        assert!(backoff.failures.lock().unwrap().len() <= MAX_TRACKED);
    }
}
