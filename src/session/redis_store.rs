//! Redis session store: standalone (`redis://`, `rediss://`), Sentinel (`redis+sentinel://`) and
//! Cluster (`redis+cluster://`).
//!
//! Layout, every key under the configured prefix:
//! - `{prefix}session:{hmac}` — a hash: `v` (version), `d` (sealed record), `a` (absolute
//!   deadline, unix ms). Its TTL is the idle timeout, capped at the absolute deadline.
//! - `{prefix}lock:{hmac}` — the session's refresh lock: a random owner token, `SET NX PX`,
//!   extended while held, deleted only by its owner.
//! - `{prefix}backoff:{hmac}` — consecutive transient refresh failures and when the next attempt
//!   may be made, shared by every replica (exponential back-off, as Pleo asks).
//! - `{prefix}budget:{key}` — a shared rate budget for calls to Pleo (`redis_store/budget.rs`).
//!
//! Every multi-step operation is one Lua script on one key, so it is atomic and cluster-safe.
//! How the connection is made and kept (standalone, Sentinel with failover, Cluster) is
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

/// Loads a session and slides its TTL: min(idle, absolute deadline - now). Deletes it when the
/// absolute deadline has passed.
const LOAD_AND_TOUCH: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'd', 'a')
if not r[1] then return false end
local now = tonumber(ARGV[2])
local abs = tonumber(r[3])
if abs <= now then redis.call('DEL', KEYS[1]) return false end
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), abs - now))
return r
";

/// Replaces the record only if the version is unchanged; returns the new version, -1 when the
/// session is gone, -2 on a version conflict.
const COMPARE_AND_SET: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'a')
if not r[1] then return -1 end
if r[1] ~= ARGV[1] then return -2 end
local now = tonumber(ARGV[4])
local abs = tonumber(r[2])
if abs <= now then redis.call('DEL', KEYS[1]) return -1 end
local v = tonumber(r[1]) + 1
redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[3]), abs - now))
return v
";

/// Creates a session at version 1 with its TTL in one step.
const CREATE: &str = r"
redis.call('HSET', KEYS[1], 'v', 1, 'd', ARGV[1], 'a', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Extends the lock's TTL only while `token` owns it.
const EXTEND_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lock only while `token` owns it, so a holder whose lock expired and was taken by
/// another replica cannot release that replica's lock.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Records one more failed refresh: the wait doubles from ARGV[1] ms up to ARGV[2] ms; returns
/// it. The count survives the wait (key kept ARGV[4] ms) so consecutive failures keep doubling.
const RECORD_FAILURE: &str = r"
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local wait = math.min(tonumber(ARGV[1]) * 2 ^ (n - 1), tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'until', tonumber(ARGV[3]) + wait)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return wait
";

/// Milliseconds left of the current back-off, 0 when none.
const BACKOFF_LEFT: &str = r"
local u = redis.call('HGET', KEYS[1], 'until')
if not u then return 0 end
local left = tonumber(u) - tonumber(ARGV[1])
if left > 0 then return left end
return 0
";

struct Scripts {
    load_and_touch: Script,
    compare_and_set: Script,
    create: Script,
    extend_lock: Script,
    unlock: Script,
    record_failure: Script,
    backoff_left: Script,
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
        let (version, blob, absolute): (Option<u64>, Option<Vec<u8>>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(self.session_key(key))
                .arg("v")
                .arg("d")
                .arg("a")
                .query_async(&mut conn)
                .await?;
        match (version, blob, absolute) {
            (Some(version), Some(blob), Some(absolute_deadline_ms))
                if absolute_deadline_ms > now_ms =>
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
}
