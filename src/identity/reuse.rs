//! A signed assertion reused for a few seconds per session.
//!
//! Signing is the costliest thing the gateway does for a request to the app (an Ed25519
//! signature: about a fifth of the CPU of a proxied request, as profiled with
//! `benches/compare.sh`). A page load sends many requests for one session within a second, and
//! each would otherwise get its own signature. So an assertion is reused for the same session,
//! subject and scopes while it is younger than a quarter of its lifetime (at most 15 s): every
//! assertion the app receives still has at least three quarters of `identity.assertion_ttl`
//! left, and one signature serves a burst. Its `jti` then names that signature, not a request.

use std::{sync::Mutex, time::Duration};

use foldhash::{HashMap, HashMapExt};

use axum::http::HeaderValue;

use crate::session::{Session, SessionKey};

/// Most sessions remembered; beyond it the expired go, then (if still full) all.
const MAX_ENTRIES: usize = 4096;
/// The longest an assertion is reused.
const MAX_REUSE_SECS: u64 = 15;

/// The recent assertions, by session.
#[derive(Debug)]
pub(super) struct Recent {
    window_secs: u64,
    entries: Mutex<HashMap<SessionKey, Entry>>,
}

#[derive(Debug)]
struct Entry {
    issued_at_secs: u64,
    subject: String,
    scopes: Vec<String>,
    value: HeaderValue,
}

impl Recent {
    /// Reuse for a quarter of `ttl`, at most 15 s; a `ttl` under 4 s reuses nothing.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            window_secs: (ttl.as_secs() / 4).min(MAX_REUSE_SECS),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The assertion issued for `session` (same subject and scopes) less than the window ago.
    pub(super) fn get(
        &self,
        session: &Session,
        subject: &str,
        now_secs: u64,
    ) -> Option<HeaderValue> {
        if self.window_secs == 0 {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(&session.key)?;
        let fresh =
            now_secs >= entry.issued_at_secs && now_secs < entry.issued_at_secs + self.window_secs;
        (fresh && entry.subject == subject && entry.scopes == session.data.scopes)
            .then(|| entry.value.clone())
    }

    /// Remembers the assertion just signed for `session` at `now_secs`.
    pub(super) fn put(&self, session: &Session, subject: &str, now_secs: u64, value: &HeaderValue) {
        if self.window_secs == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&session.key) {
            let window = self.window_secs;
            entries.retain(|_, e| now_secs < e.issued_at_secs + window);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            session.key.clone(),
            Entry {
                issued_at_secs: now_secs,
                subject: subject.to_owned(),
                scopes: session.data.scopes.clone(),
                value: value.clone(),
            },
        );
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or_default()
    }
}
