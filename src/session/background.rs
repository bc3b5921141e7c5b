//! The session layer of background grants (`[background]`, see `crate::grants`): keeping a
//! session's record alive as its subject's background grant, the subject slots that point at
//! such records, and loading a grant for a caller that has no cookie.
//!
//! Nothing here copies a token: the record a slot points at is the session's own, so a
//! refresh — by the browser, the app's server side or a background job — goes through the one
//! record, its one lock and its one compare-and-set.

use std::time::Duration;

use super::{Session, SessionKey, Sessions, StoreError};

impl Sessions {
    /// Keeps the session's record for `keep` after now and after each refresh, whatever its
    /// browser session does. False when the session is gone.
    pub async fn keep_for_background(
        &self,
        key: &SessionKey,
        keep: Duration,
    ) -> Result<bool, StoreError> {
        self.store
            .keep(key.as_str(), keep, self.clock.now_ms())
            .await
    }

    /// Stops keeping the record: it ends with its browser session (now, if that has ended).
    pub async fn release_from_background(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.cache.remove(key);
        self.store.release(key.as_str(), self.clock.now_ms()).await
    }

    /// Logout. A record kept as a background grant loses its browser session and stays (true);
    /// any other is deleted, as [`Sessions::delete`] does (false).
    pub async fn end_browser_session(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.cache.remove(key);
        self.store
            .end_browser_session(key.as_str(), self.clock.now_ms())
            .await
    }

    /// Points `subject`'s slot at the session `key`; returns the session it pointed at.
    pub async fn point_grant_slot(
        &self,
        subject: &str,
        key: &SessionKey,
    ) -> Result<Option<SessionKey>, StoreError> {
        let previous = self.store.set_grant_slot(subject, key.as_str()).await?;
        Ok(previous.as_deref().and_then(SessionKey::parse))
    }

    /// The session `subject`'s slot points at.
    pub async fn grant_slot(&self, subject: &str) -> Result<Option<SessionKey>, StoreError> {
        let key = self.store.grant_slot(subject).await?;
        Ok(key.as_deref().and_then(SessionKey::parse))
    }

    /// Empties `subject`'s slot, only if it still points at `expected` when given.
    pub async fn clear_grant_slot(
        &self,
        subject: &str,
        expected: Option<&SessionKey>,
    ) -> Result<bool, StoreError> {
        self.store
            .clear_grant_slot(subject, expected.map(SessionKey::as_str))
            .await
    }

    /// A grant for a caller without a cookie: this replica's copy from the last second, or the
    /// store's, without sliding the browser's idle expiry (no browser is asking). The store's is
    /// not put into the per-replica cache: a cookie lookup that hits the cache skips the browser
    /// part's idle check, so background calls arriving every second would otherwise keep an
    /// idled-out browser session alive.
    pub async fn load_grant(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        if let Some(session) = self.cache.fresh(key) {
            return Ok(Some(session));
        }
        let stored = self.store.load(key.as_str(), self.clock.now_ms()).await?;
        Ok(stored.and_then(|stored| self.open(key.clone(), stored)))
    }
}
