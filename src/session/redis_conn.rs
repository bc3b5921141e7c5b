//! The connection to Redis for the session store, in its three deployment shapes: standalone
//! (`redis://`, `rediss://`), Sentinel (`redis+sentinel://`, following failovers, planned ones
//! included) and Cluster (`redis+cluster://`). Every command is bounded in time.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};
use tokio::sync::Mutex as AsyncMutex;

use super::backend::StoreError;

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> Self {
        StoreError::Unavailable(Arc::new(error))
    }
}

/// How long a single Redis command may take before it counts as a failure. Short, because a
/// request waiting on the store is a user waiting.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the Sentinel master in use is checked against the one the Sentinels name. A planned
/// failover (`SENTINEL FAILOVER`) leaves the old master up and writable until Sentinel demotes
/// it, about ten seconds later, discarding whatever was written to it meanwhile (sessions,
/// rotated refresh tokens); no connection error tells the client, so it has to ask.
const SENTINEL_RECHECK: Duration = Duration::from_secs(1);

/// One connection handle for the three deployment shapes.
#[derive(Clone)]
pub(super) enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

/// A master found through Sentinel. The connection is dropped on connection-level errors (and
/// `READONLY`, which a demoted master answers), and when the Sentinels name another master (see
/// [`SENTINEL_RECHECK`]), so the next command asks Sentinel again and follows a failover.
pub(super) struct SentinelConn {
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
    /// Connects (lazily for standalone and Sentinel, so the gateway starts while Redis is down).
    pub(super) async fn open(url: &str) -> Result<Self, StoreError> {
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
                StoreError::from(redis::RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "redis+sentinel:// needs /MASTER_NAME",
                )))
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
        return Err(StoreError::from(redis::RedisError::from((
            ErrorKind::InvalidClientConfig,
            "no Redis nodes given",
        ))));
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
