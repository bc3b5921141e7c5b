//! Redis session store: standalone (`redis://`, `rediss://`), Sentinel (`redis+sentinel://`) and
//! Cluster (`redis+cluster://`).
//!
//! Layout, every key under the configured prefix:
//! - `{prefix}session:{hmac}` — a hash: `v` (version), `d` (sealed record), `a` (absolute
//!   deadline, unix ms; 0 once the browser logged out of a kept record). Its TTL is the idle
//!   timeout, capped at the absolute deadline. While the record is a background grant it also
//!   holds `k` (kept until, unix ms), `kd` (how far each write moves `k` on) and `i` (the
//!   browser's idle deadline, which the TTL no longer tracks), and its TTL reaches `k`.
//! - `{prefix}grants` — a hash: subject URN → the key of its background grant's record.
//! - `{prefix}lock:{hmac}` — the session's refresh lock: a random owner token, `SET NX PX`,
//!   extended while held, deleted only by its owner.
//! - `{prefix}backoff:{hmac}` — consecutive transient refresh failures and when the next attempt
//!   may be made, shared by every replica (exponential back-off, as Pleo asks).
//! - `{prefix}budget:{key}` — a shared rate budget for calls to Pleo (`redis_store/budget.rs`).
//!
//! Every multi-step operation is one Lua script on one key, so it is atomic and cluster-safe
//! (the scripts are in `redis_store/scripts.rs`). How the connection is made and kept (standalone, Sentinel with failover, Cluster) is
//! [`super::redis_conn`].

mod budget;

use std::{sync::Arc, time::Duration};

use redis::Script;

use super::{
    backend::{
        BackoffPolicy, BudgetDecision, BudgetRate, CasOutcome, SessionBackend, StoreError,
        StoredSession,
    },
    redis_conn::RedisConn,
};

mod scripts;
use scripts::*;

struct Scripts {
    load_and_touch: Script,
    compare_and_set: Script,
    create: Script,
    extend_lock: Script,
    unlock: Script,
    record_failure: Script,
    backoff_left: Script,
    keep: Script,
    release: Script,
    end_browser: Script,
    set_slot: Script,
    clear_slot: Script,
    budget_take: Script,
    budget_pause: Script,
}

/// A Redis-backed store; cheap to clone (connections are multiplexed and shared).
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// Builds a store for `url`. Standalone and Sentinel connect lazily, so the gateway starts
    /// (and reports not-ready) while Redis is down; Cluster needs its nodes to discover slots.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let conn = RedisConn::open(url).await?;
        Ok(Self {
            conn,
            prefix: Arc::from(prefix),
            scripts: Arc::new(Scripts {
                load_and_touch: Script::new(LOAD_AND_TOUCH),
                compare_and_set: Script::new(COMPARE_AND_SET),
                create: Script::new(CREATE),
                extend_lock: Script::new(EXTEND_LOCK),
                unlock: Script::new(UNLOCK),
                record_failure: Script::new(RECORD_FAILURE),
                backoff_left: Script::new(BACKOFF_LEFT),
                keep: Script::new(KEEP),
                release: Script::new(RELEASE),
                end_browser: Script::new(END_BROWSER),
                set_slot: Script::new(SET_SLOT),
                clear_slot: Script::new(CLEAR_SLOT),
                budget_take: Script::new(budget::BUDGET_TAKE),
                budget_pause: Script::new(budget::BUDGET_PAUSE),
            }),
        })
    }

    fn session_key(&self, key: &str) -> String {
        format!("{}session:{}", self.prefix, key)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}lock:{}", self.prefix, key)
    }

    fn backoff_key(&self, key: &str) -> String {
        format!("{}backoff:{}", self.prefix, key)
    }

    fn grants_key(&self) -> String {
        format!("{}grants", self.prefix)
    }
}

impl SessionBackend for RedisStore {
    async fn record_refresh_failure(
        &self,
        key: &str,
        policy: BackoffPolicy,
        now_ms: u64,
    ) -> Result<Duration, StoreError> {
        let mut conn = self.conn.clone();
        let wait: u64 = self
            .scripts
            .record_failure
            .key(self.backoff_key(key))
            .arg(ms(policy.first))
            .arg(ms(policy.max))
            .arg(now_ms)
            .arg(ms(policy.memory))
            .invoke_async(&mut conn)
            .await?;
        Ok(Duration::from_millis(wait))
    }

    async fn refresh_backoff(
        &self,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.conn.clone();
        let left: u64 = self
            .scripts
            .backoff_left
            .key(self.backoff_key(key))
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok((left > 0).then(|| Duration::from_millis(left)))
    }

    async fn clear_refresh_backoff(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.backoff_key(key))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn load_and_touch(
        &self,
        key: &str,
        idle: Duration,
        now_ms: u64,
    ) -> Result<Option<StoredSession>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Option<(u64, Vec<u8>, u64)> = self
            .scripts
            .load_and_touch
            .key(self.session_key(key))
            .arg(ms(idle))
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(
            reply.map(|(version, blob, absolute_deadline_ms)| StoredSession {
                version,
                blob,
                absolute_deadline_ms,
            }),
        )
    }

    async fn load(&self, key: &str, now_ms: u64) -> Result<Option<StoredSession>, StoreError> {
        let mut conn = self.conn.clone();
        #[allow(clippy::type_complexity)]
        let (version, blob, absolute, keep): (
            Option<u64>,
            Option<Vec<u8>>,
            Option<u64>,
            Option<u64>,
        ) = redis::cmd("HMGET")
            .arg(self.session_key(key))
            .arg("v")
            .arg("d")
            .arg("a")
            .arg("k")
            .query_async(&mut conn)
            .await?;
        // A record kept as a background grant is there for its background caller even after
        // its browser session has ended.
        let kept = keep.is_some_and(|k| k > now_ms);
        match (version, blob, absolute) {
            (Some(version), Some(blob), Some(absolute_deadline_ms))
                if absolute_deadline_ms > now_ms || kept =>
            {
                Ok(Some(StoredSession {
                    version,
                    blob,
                    absolute_deadline_ms,
                }))
            }
            (None, None, None) => Ok(None),
            (Some(_), Some(_), Some(_)) => Ok(None),
            _ => Err(StoreError::Corrupt("session hash is missing fields")),
        }
    }

    async fn create(
        &self,
        key: &str,
        blob: &[u8],
        absolute_deadline_ms: u64,
        idle: Duration,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let ttl = ms(idle)
            .min(absolute_deadline_ms.saturating_sub(now_ms))
            .max(1);
        let _: i64 = self
            .scripts
            .create
            .key(self.session_key(key))
            .arg(blob)
            .arg(absolute_deadline_ms)
            .arg(ttl)
            .invoke_async(&mut conn)
            .await?;
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
        let mut conn = self.conn.clone();
        let reply: i64 = self
            .scripts
            .compare_and_set
            .key(self.session_key(key))
            .arg(expected_version)
            .arg(blob)
            .arg(ms(idle))
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(match reply {
            -1 => CasOutcome::Missing,
            -2 => CasOutcome::Conflict,
            v => CasOutcome::Written(u64::try_from(v).map_err(|_| StoreError::Corrupt("version"))?),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.session_key(key))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Option<String> = redis::cmd("SET")
            .arg(self.lock_key(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl).max(1))
            .query_async(&mut conn)
            .await?;
        Ok(reply.is_some())
    }

    async fn extend_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let reply: i64 = self
            .scripts
            .extend_lock
            .key(self.lock_key(key))
            .arg(token)
            .arg(ms(ttl).max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(reply == 1)
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .unlock
            .key(self.lock_key(key))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn take_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        now_ms: u64,
    ) -> Result<BudgetDecision, StoreError> {
        self.take_budget_in_redis(key, rate, now_ms).await
    }

    async fn pause_budget(
        &self,
        key: &str,
        rate: BudgetRate,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.pause_budget_in_redis(key, rate, until_ms, now_ms)
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn keep(&self, key: &str, keep: Duration, now_ms: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let kept: i64 = self
            .scripts
            .keep
            .key(self.session_key(key))
            .arg(ms(keep).max(1))
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(kept == 1)
    }

    async fn release(&self, key: &str, now_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .release
            .key(self.session_key(key))
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn end_browser_session(&self, key: &str, now_ms: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let kept: i64 = self
            .scripts
            .end_browser
            .key(self.session_key(key))
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(kept == 1)
    }

    async fn set_grant_slot(&self, subject: &str, key: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(self
            .scripts
            .set_slot
            .key(self.grants_key())
            .arg(subject)
            .arg(key)
            .invoke_async(&mut conn)
            .await?)
    }

    async fn grant_slot(&self, subject: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HGET")
            .arg(self.grants_key())
            .arg(subject)
            .query_async(&mut conn)
            .await?)
    }

    async fn clear_grant_slot(
        &self,
        subject: &str,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let cleared: i64 = self
            .scripts
            .clear_slot
            .key(self.grants_key())
            .arg(subject)
            .arg(expected.unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        Ok(cleared == 1)
    }

    async fn grant_slots(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn.clone();
        let all: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.grants_key())
            .query_async(&mut conn)
            .await?;
        Ok(all.into_iter().collect())
    }
}
