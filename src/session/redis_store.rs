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
//!
//! Every multi-step operation is one Lua script on one key, so it is atomic and cluster-safe.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisFuture, Script, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};
use tokio::sync::Mutex as AsyncMutex;

use super::store::{BackoffPolicy, CasOutcome, StoreError, StoredSession};

/// How long a single Redis command may take before it counts as a failure. Short, because a
/// request waiting on the store is a user waiting.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the Sentinel master in use is checked against the one the Sentinels name. A planned
/// failover (`SENTINEL FAILOVER`) leaves the old master up and writable until Sentinel demotes
/// it, about ten seconds later, discarding whatever was written to it meanwhile (sessions,
/// rotated refresh tokens); no connection error tells the client, so it has to ask.
const SENTINEL_RECHECK: Duration = Duration::from_secs(1);

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

    pub(super) async fn record_refresh_failure(
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

    pub(super) async fn refresh_backoff(
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

    pub(super) async fn clear_refresh_backoff(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.backoff_key(key))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn load_and_touch(
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

    pub(super) async fn load(
        &self,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<StoredSession>, StoreError> {
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

    pub(super) async fn create(
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

    pub(super) async fn compare_and_set(
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

    pub(super) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.session_key(key))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
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

    pub(super) async fn extend_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
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

    pub(super) async fn unlock(&self, key: &str, token: &str) -> Result<(), StoreError> {
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

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

/// One connection handle for the three deployment shapes.
#[derive(Clone)]
enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

/// A master found through Sentinel. The connection is dropped on connection-level errors (and
/// `READONLY`, which a demoted master answers), and when the Sentinels name another master (see
/// [`SENTINEL_RECHECK`]), so the next command asks Sentinel again and follows a failover.
struct SentinelConn {
    sentinel: AsyncMutex<SentinelClient>,
    current: AsyncMutex<Option<SentinelMaster>>,
}

/// The master in use and its address as Sentinel gave it.
struct SentinelMaster {
    conn: ConnectionManager,
    addr: ConnectionAddr,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2))
}

impl RedisConn {
    async fn open(url: &str) -> Result<Self, StoreError> {
        let cluster = url
            .strip_prefix("redis+cluster://")
            .map(|rest| (rest, "redis"))
            .or_else(|| {
                url.strip_prefix("rediss+cluster://")
                    .map(|rest| (rest, "rediss"))
            });
        if let Some((rest, scheme)) = cluster {
            let nodes = node_urls(rest, scheme)?;
            let client = ClusterClient::builder(nodes)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()?;
            return Ok(Self::Cluster(client.get_async_connection().await?));
        }
        let sentinel = url
            .strip_prefix("redis+sentinel://")
            .map(|rest| (rest, "redis"))
            .or_else(|| {
                url.strip_prefix("rediss+sentinel://")
                    .map(|rest| (rest, "rediss"))
            });
        if let Some((rest, scheme)) = sentinel {
            let (nodes_part, master) = rest.rsplit_once('/').ok_or_else(|| {
                StoreError::Redis(
                    (
                        ErrorKind::InvalidClientConfig,
                        "redis+sentinel:// needs /MASTER_NAME",
                    )
                        .into(),
                )
            })?;
            let nodes = node_urls(nodes_part, scheme)?;
            // The credentials (and TLS) given for the Sentinels are used for the master too:
            // without this, a password-protected master would refuse every command.
            let first = nodes
                .first()
                .map(String::as_str)
                .unwrap_or_default()
                .into_connection_info()?;
            let mut master_info = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(first.redis_settings().clone());
            if scheme == "rediss" {
                master_info = master_info.set_tls_mode(redis::TlsMode::Secure);
            }
            let client = SentinelClient::build(
                nodes,
                master,
                Some(master_info),
                SentinelServerType::Master,
            )?;
            let conn = Arc::new(SentinelConn {
                sentinel: AsyncMutex::new(client),
                current: AsyncMutex::new(None),
            });
            tokio::spawn(watch_sentinel_master(Arc::downgrade(&conn)));
            return Ok(Self::Sentinel(conn));
        }
        let client = redis::Client::open(url)?;
        Ok(Self::Single(ConnectionManager::new_lazy_with_config(
            client,
            manager_config(),
        )?))
    }
}

/// Every command, including a reconnect or a Sentinel lookup it has to wait for, gets at most
/// [`RESPONSE_TIMEOUT`]: a request waiting on the store is a user waiting, and a store that does
/// not answer in time is treated as down (503), never waited on indefinitely.
fn bounded<'a, T: Send + 'a>(command: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
    Box::pin(async move {
        match tokio::time::timeout(RESPONSE_TIMEOUT, command).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "redis command timed out",
            )
            .into()),
        }
    })
}

/// Splits `user:pass@h1:p1,h2:p2` into `redis://user:pass@h1:p1`, `redis://user:pass@h2:p2`.
fn node_urls(spec: &str, scheme: &str) -> Result<Vec<String>, StoreError> {
    let (auth, hosts) = match spec.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), spec),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{auth}{h}"))
        .collect();
    if nodes.is_empty() {
        return Err(StoreError::Redis(
            (ErrorKind::InvalidClientConfig, "no Redis nodes given").into(),
        ));
    }
    Ok(nodes)
}

impl SentinelConn {
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut current = self.current.lock().await;
        if let Some(master) = current.as_ref() {
            return Ok(master.conn.clone());
        }
        let client = self.sentinel.lock().await.async_get_client().await?;
        let addr = client.get_connection_info().addr().clone();
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
        *current = Some(SentinelMaster {
            conn: conn.clone(),
            addr,
        });
        Ok(conn)
    }

    /// Drops the master in use when the Sentinels name another one. Keeps it when they cannot be
    /// asked: a master that works is not given up because a Sentinel is away.
    async fn follow_announced_master(&self) {
        let Some(in_use) = self.current.lock().await.as_ref().map(|m| m.addr.clone()) else {
            return;
        };
        let ask = async { self.sentinel.lock().await.async_get_client().await };
        let Ok(Ok(client)) = tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, ask).await
        else {
            return;
        };
        let announced = client.get_connection_info().addr();
        if *announced == in_use {
            return;
        }
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|m| m.addr == in_use) {
            tracing::warn!(
                from = %in_use,
                to = %announced,
                "Sentinel names a new Redis master; switching"
            );
            *current = None;
        }
    }

    async fn forget_on_failover(&self, error: &redis::RedisError) {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        {
            *self.current.lock().await = None;
        }
    }
}

/// Every [`SENTINEL_RECHECK`], checks the master in use against the Sentinels; ends with the
/// store.
async fn watch_sentinel_master(conn: Weak<SentinelConn>) {
    let mut tick = tokio::time::interval(SENTINEL_RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(conn) = conn.upgrade() else {
            return;
        };
        conn.follow_announced_master().await;
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        bounded(match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(s) => Box::pin(async move {
                let mut conn = s.connection().await?;
                let result = conn.req_packed_command(cmd).await;
                if let Err(e) = &result {
                    s.forget_on_failover(e).await;
                }
                result
            }),
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        bounded(match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(s) => Box::pin(async move {
                let mut conn = s.connection().await?;
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &result {
                    s.forget_on_failover(e).await;
                }
                result
            }),
        })
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_keep_credentials_on_every_node() {
        assert_eq!(
            node_urls("u:p@h1:1,h2:2", "redis").unwrap(),
            vec!["redis://u:p@h1:1", "redis://u:p@h2:2"]
        );
        assert_eq!(node_urls("h1:1", "redis").unwrap(), vec!["redis://h1:1"]);
        assert!(node_urls("", "redis").is_err());
    }
}
