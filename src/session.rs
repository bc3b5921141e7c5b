//! Sessions: what the gateway remembers about a logged-in browser, sealed at rest.
//!
//! [`Sessions`] is the typed layer over the byte-level [`Store`]: it hashes session ids into
//! store keys, seals records with [`Sealer`] (bound to their key), and enforces the idle and
//! absolute timeouts. Pending logins live in the browser, sealed into cookies by
//! [`pending_login`] with the same [`Sealer`].

pub mod backend;
mod background;
pub mod budget;
pub mod cache;
mod clock;
pub mod cookie;
pub mod id;
pub mod memory_store;
pub mod pending_login;
mod redis_conn;
pub mod redis_store;
pub mod seal;
pub mod store;

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use clock::{Clock, now_ms};
pub use id::{SessionHasher, SessionId, SessionKey};
pub use store::{BackoffPolicy, CasOutcome, Store, StoreError, StoredSession};

use seal::Sealer;

/// The tokens and identity of one session.
#[derive(Clone, Debug)]
pub struct SessionData {
    /// Pleo access token.
    pub access_token: SecretString,
    /// Pleo refresh token; rotated on every refresh.
    pub refresh_token: Option<SecretString>,
    /// When the access token expires (unix ms), from `expires_in`.
    pub access_expires_at_ms: u64,
    /// The access token's full lifetime, to cap the refresh margin at half of it.
    pub access_lifetime_ms: u64,
    /// The subject URN (`urn:pleo:company:…` / `urn:pleo:organisation:…`).
    pub subject: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// When the session was created (unix ms).
    pub created_at_ms: u64,
}

/// The sealed, serialised form. Plain strings only exist transiently while (de)serialising.
#[derive(Serialize, Deserialize)]
struct SealedForm {
    at: String,
    rt: Option<String>,
    exp: u64,
    life: u64,
    sub: Option<String>,
    scopes: Vec<String>,
    created: u64,
}

impl SessionData {
    fn to_bytes(&self) -> Vec<u8> {
        let form = SealedForm {
            at: self.access_token.expose_secret().to_owned(),
            rt: self
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            exp: self.access_expires_at_ms,
            life: self.access_lifetime_ms,
            sub: self.subject.clone(),
            scopes: self.scopes.clone(),
            created: self.created_at_ms,
        };
        serde_json::to_vec(&form).unwrap_or_default()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let form: SealedForm = serde_json::from_slice(bytes).ok()?;
        Some(Self {
            access_token: SecretString::from(form.at),
            refresh_token: form.rt.map(SecretString::from),
            access_expires_at_ms: form.exp,
            access_lifetime_ms: form.life,
            subject: form.sub,
            scopes: form.scopes,
            created_at_ms: form.created,
        })
    }
}

/// A loaded session: where it lives, which version was read, and its contents.
#[derive(Clone, Debug)]
pub struct Session {
    /// The hashed store key.
    pub key: SessionKey,
    /// The version read; writes compare against it.
    pub version: u64,
    /// Unix ms when the session ends regardless of activity.
    pub absolute_deadline_ms: u64,
    /// Contents, shared: every request served from the cache takes a copy of its session, and
    /// a copy of the tokens, subject and scopes would cost an allocation each.
    pub data: Arc<SessionData>,
}

/// Typed access to sessions.
#[derive(Clone, Debug)]
pub struct Sessions {
    store: Store,
    cipher: std::sync::Arc<Sealer>,
    hasher: SessionHasher,
    idle_timeout: Duration,
    absolute_timeout: Duration,
    cache: std::sync::Arc<cache::SessionCache>,
    /// Where "now" comes from for expiry decisions ([`Clock::System`] outside tests).
    clock: Clock,
    /// Unit tests only: how many of the next [`Sessions::replace`] calls fail as if the store
    /// were down (see [`Sessions::fail_next_writes`]). Shared by clones, like the store.
    #[cfg(test)]
    failing_writes: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Sessions {
    /// Wires a store with the key ring and timeouts.
    pub fn new(
        store: Store,
        cipher: Sealer,
        hasher: SessionHasher,
        idle_timeout: Duration,
        absolute_timeout: Duration,
    ) -> Self {
        Self {
            store,
            cipher: std::sync::Arc::new(cipher),
            hasher,
            idle_timeout,
            absolute_timeout,
            cache: std::sync::Arc::default(),
            clock: Clock::System,
            #[cfg(test)]
            failing_writes: std::sync::Arc::default(),
        }
    }

    /// The same sessions, with expiry decided by `clock` (`Clock::tokio()` in paused-time
    /// tests). Every clone shares the store and cache, so the refresh coordinator and the
    /// guard see one clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Unit tests only: makes the next `n` session writes ([`Sessions::replace`]) fail with
    /// [`StoreError::Unavailable`], as a store outage would, without touching the store. The
    /// refresh tests use it to fail the write between Pleo's rotation and the store.
    #[cfg(test)]
    pub(crate) fn fail_next_writes(&self, n: u32) {
        self.failing_writes
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The backend, for readiness checks (`/readyz` pings it and names its kind) — and for
    /// nothing else: sessions, refresh locks and back-offs go through the typed methods here.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The absolute session lifetime (the cookie's `Max-Age`).
    pub fn absolute_timeout(&self) -> Duration {
        self.absolute_timeout
    }

    /// The first of `keys` the store holds a session under, its idle expiry slid.
    async fn load_under(&self, keys: &[SessionKey]) -> Result<Option<Session>, StoreError> {
        let now = self.clock.now_ms();
        for key in keys {
            if let Some(stored) = self
                .store
                .load_and_touch(key.as_str(), self.idle_timeout, now)
                .await?
            {
                return Ok(self.open(key.clone(), stored));
            }
        }
        Ok(None)
    }

    /// Finds the session for a cookie value and slides its idle expiry, through the per-replica
    /// cache: no store round trip when the session was read less than a second ago, and a
    /// still-valid cached session when the store fails (the error is returned only when nothing
    /// usable is cached). A record that fails to open (unknown key, tampered) reads as no
    /// session: the user logs in again, never a 500.
    pub async fn load_cached(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        // Sessions are cached under the key they were found under: after a key rotation, an
        // older candidate's for sessions created before it.
        let keys: Vec<SessionKey> = self.hasher.candidates(id.as_str()).collect();
        self.load_cached_under(&keys).await
    }

    /// Like [`load_cached`](Self::load_cached), for a session known by its store key (the
    /// internal listener finds it from an identity assertion's session reference): the same
    /// cache, the same idle slide, the same "logged out" when it is gone.
    pub async fn load_cached_by_key(
        &self,
        key: &SessionKey,
    ) -> Result<Option<Session>, StoreError> {
        self.load_cached_under(std::slice::from_ref(key)).await
    }

    async fn load_cached_under(&self, keys: &[SessionKey]) -> Result<Option<Session>, StoreError> {
        // The deadline is known here, so no cached copy outlives it, not even by a second.
        let before_deadline =
            |session: &Session| session.absolute_deadline_ms > self.clock.now_ms();
        if let Some(session) = keys
            .iter()
            .find_map(|key| self.cache.fresh(key))
            .filter(before_deadline)
        {
            self.cache.mark_used(&session.key);
            return Ok(Some(session));
        }
        match self.load_under(keys).await {
            Ok(Some(session)) => {
                self.cache.put(&session);
                self.cache.mark_used(&session.key);
                Ok(Some(session))
            }
            Ok(None) => {
                for key in keys {
                    self.cache.remove(key);
                }
                Ok(None)
            }
            Err(e) => match keys.iter().find_map(|key| self.cache.any(key)) {
                Some(session)
                    if before_deadline(&session)
                        && session.data.access_expires_at_ms > self.clock.now_ms() =>
                {
                    tracing::warn!(session = session.key.short(), error = %e, "session store failing; using the cached session");
                    Ok(Some(session))
                }
                _ => Err(e),
            },
        }
    }

    /// Sessions that requests on this replica used within `window` (for background refresh).
    pub fn recently_used(&self, window: Duration) -> Vec<Session> {
        self.cache.recently_used(window)
    }

    /// This replica's copy of a session if it was read or written within the last second.
    pub fn cached(&self, key: &SessionKey) -> Option<Session> {
        self.cache.fresh(key)
    }

    /// Re-reads a session by key without sliding its expiry (used after waiting for a lock).
    pub async fn reload(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        let stored = self.store.load(key.as_str(), self.clock.now_ms()).await?;
        let session = stored.and_then(|s| self.open(key.clone(), s));
        match &session {
            Some(session) => self.cache.put(session),
            None => self.cache.remove(key),
        }
        Ok(session)
    }

    fn open(&self, key: SessionKey, stored: StoredSession) -> Option<Session> {
        let plain = match self.cipher.open(&stored.blob, key.as_str().as_bytes()) {
            Ok(plain) => plain,
            Err(e) => {
                tracing::info!(session = key.short(), error = %e, "session record cannot be opened; treating as logged out");
                return None;
            }
        };
        let data = SessionData::from_bytes(&plain)?;
        Some(Session {
            key,
            version: stored.version,
            absolute_deadline_ms: stored.absolute_deadline_ms,
            data: Arc::new(data),
        })
    }

    /// Creates a brand-new session with a fresh id. Never reuses an id from before login, so a
    /// cookie planted by an attacker before login (session fixation) is worthless after it.
    pub async fn create(&self, data: SessionData) -> Result<(SessionId, Session), StoreError> {
        let id = SessionId::generate();
        let key = self.hasher.current(id.as_str());
        let now = self.clock.now_ms();
        let deadline = now
            .saturating_add(u64::try_from(self.absolute_timeout.as_millis()).unwrap_or(u64::MAX));
        let blob = self.cipher.seal(&data.to_bytes(), key.as_str().as_bytes());
        self.store
            .create(key.as_str(), &blob, deadline, self.idle_timeout, now)
            .await?;
        let session = Session {
            key,
            version: 1,
            absolute_deadline_ms: deadline,
            data: Arc::new(data),
        };
        self.cache.put(&session);
        Ok((id, session))
    }

    /// Writes new contents if nobody wrote since `expected` was read.
    pub async fn replace(
        &self,
        key: &SessionKey,
        expected_version: u64,
        data: &SessionData,
    ) -> Result<CasOutcome, StoreError> {
        #[cfg(test)]
        if self
            .failing_writes
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            return Err(StoreError::Unavailable(std::sync::Arc::new(
                std::io::Error::other("injected write failure"),
            )));
        }
        let blob = self.cipher.seal(&data.to_bytes(), key.as_str().as_bytes());
        let outcome = self
            .store
            .compare_and_set(
                key.as_str(),
                expected_version,
                &blob,
                self.idle_timeout,
                self.clock.now_ms(),
            )
            .await?;
        // The cached copy holds the tokens just replaced (after a refresh, a rotated access
        // token): update it, so requests served from the cache use the new pair.
        if let CasOutcome::Written(version) = outcome
            && let Some(mut cached) = self.cache.any(key)
        {
            cached.version = version;
            cached.data = Arc::new(data.clone());
            self.cache.put(&cached);
        }
        Ok(outcome)
    }

    /// Deletes a session (logout, or a grant Pleo has revoked).
    pub async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.cache.remove(key);
        self.store.delete(key.as_str()).await
    }

    // The refresh lock and back-off of a session, shared by every replica (README, "Tokens and
    // refresh"). Used by `token/refresh.rs`; the store keeps them apart from the session
    // record, so taking the lock never conflicts with a session write.

    /// Takes the session's refresh lock if nobody holds it (`SET NX PX`), for `ttl`. `owner` is
    /// a random token naming the holder: only it can extend or release the lock.
    pub async fn lock_refresh(
        &self,
        key: &SessionKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.store.try_lock(key.as_str(), owner, ttl).await
    }

    /// Extends the refresh lock `owner` holds to `ttl` from now; false when it is no longer
    /// theirs (it expired, and maybe another replica took it).
    pub async fn extend_refresh_lock(
        &self,
        key: &SessionKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.store.extend_lock(key.as_str(), owner, ttl).await
    }

    /// Releases the refresh lock if `owner` still holds it.
    pub async fn unlock_refresh(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError> {
        self.store.unlock(key.as_str(), owner).await
    }

    /// Records a transient refresh failure at `now_ms`; returns how long every replica now waits
    /// before the next attempt (doubling with each failure, see [`BackoffPolicy`]).
    pub async fn record_refresh_failure(
        &self,
        key: &SessionKey,
        policy: BackoffPolicy,
        now_ms: u64,
    ) -> Result<Duration, StoreError> {
        self.store
            .record_refresh_failure(key.as_str(), policy, now_ms)
            .await
    }

    /// How long after `now_ms` the next refresh attempt is allowed, if a back-off is running.
    pub async fn refresh_backoff(
        &self,
        key: &SessionKey,
        now_ms: u64,
    ) -> Result<Option<Duration>, StoreError> {
        self.store.refresh_backoff(key.as_str(), now_ms).await
    }

    /// Forgets the session's refresh failures (after a successful refresh).
    pub async fn clear_refresh_backoff(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.store.clear_refresh_backoff(key.as_str()).await
    }
}

#[cfg(test)]
mod tests;
