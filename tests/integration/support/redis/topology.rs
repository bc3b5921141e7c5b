//! The Redis topologies an operator moves to when one Redis is not enough, built from
//! [`RedisServer`]s: a Cluster of masters, and a master with a replica watched by Sentinels.

use std::time::Duration;

use super::{RedisServer, Role, SENTINEL_MASTER, info_field};
use crate::support::wait::eventually;

/// Bound on forming a topology, a failover, or Sentinel demoting the old master (which it does
/// about ten seconds after a failover); only reached when something is broken.
pub const TOPOLOGY_PATIENCE: Duration = Duration::from_secs(60);

/// A Redis Cluster of masters without replicas.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes, joins them with `redis-cli --cluster create`, and waits until
    /// every node reports the whole cluster healthy.
    pub async fn start(masters: usize) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..masters {
            nodes.push(RedisServer::start_as(Role::ClusterNode).await);
        }
        let cluster = RedisCluster { nodes };
        let addresses = cluster.addresses();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let created = cluster.nodes[0].cli(&args).await;
        assert!(
            created.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed:\n{created}"
        );
        let known = masters.to_string();
        for node in &cluster.nodes {
            let what = format!("cluster_state:ok on node {}", node.port());
            eventually(&what, TOPOLOGY_PATIENCE, async || {
                let info = node.cli(&["CLUSTER", "INFO"]).await;
                info_field(&info, "cluster_state") == Some("ok")
                    && info_field(&info, "cluster_slots_ok") == Some("16384")
                    && info_field(&info, "cluster_known_nodes") == Some(known.as_str())
            })
            .await;
        }
        cluster
    }

    fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.addresses().join(","))
    }

    /// How many keys match `pattern` on each node.
    pub async fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            counts.push(node.keys(pattern).await.len());
        }
        counts
    }
}

/// A master, one replica of it, and Sentinels monitoring them.
pub struct SentinelSetup {
    /// `[0]` is the master at the start, `[1]` its replica.
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl SentinelSetup {
    /// Starts the master and its replica, waits for the replica to sync, then starts
    /// `sentinels` Sentinels (quorum: a majority) and waits until each one knows the replica
    /// and the other Sentinels, so that a failover can happen at once.
    pub async fn start(sentinels: usize) -> Self {
        let master = RedisServer::start_as(Role::Plain).await;
        let replica = RedisServer::start_as(Role::Replica(master.port())).await;
        eventually("the replica to sync", TOPOLOGY_PATIENCE, async || {
            let info = replica.cli(&["INFO", "replication"]).await;
            info_field(&info, "master_link_status") == Some("up")
        })
        .await;
        let role = Role::Sentinel {
            master: master.port(),
            quorum: sentinels / 2 + 1,
        };
        let mut started = Vec::new();
        for _ in 0..sentinels {
            started.push(RedisServer::start_as(role).await);
        }
        let setup = SentinelSetup {
            servers: vec![master, replica],
            sentinels: started,
        };
        let replica_port = setup.servers[1].port().to_string();
        for sentinel in &setup.sentinels {
            let what = format!("Sentinel {} to see a healthy replica", sentinel.port());
            eventually(&what, TOPOLOGY_PATIENCE, async || {
                let reply = sentinel
                    .cli(&["SENTINEL", "REPLICAS", SENTINEL_MASTER])
                    .await;
                sentinel_entries(&reply).iter().any(|replica| {
                    replica.field("port") == Some(replica_port.as_str())
                        && replica.field("flags") == Some("slave")
                        && replica.field("master-link-status") == Some("ok")
                })
            })
            .await;
            let what = format!("Sentinel {} to know the other Sentinels", sentinel.port());
            eventually(&what, TOPOLOGY_PATIENCE, async || {
                let reply = sentinel
                    .cli(&["SENTINEL", "SENTINELS", SENTINEL_MASTER])
                    .await;
                sentinel_entries(&reply).len() == sentinels - 1
            })
            .await;
        }
        setup
    }

    /// `redis+sentinel://127.0.0.1:s1,…/mymaster`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port()))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", nodes.join(","))
    }

    /// The master's port as Sentinel `index` reports it.
    pub async fn master_port(&self, index: usize) -> Option<u16> {
        let reply = self.sentinels[index]
            .try_cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER])
            .await?;
        reply.lines().nth(1)?.trim().parse().ok()
    }

    /// Waits until `replica` has applied everything `master` had written when this was called:
    /// replication is asynchronous, and a failover loses what had not reached the replica.
    pub async fn wait_replicated(&self, master: &RedisServer, replica: &RedisServer) {
        let info = master.cli(&["INFO", "replication"]).await;
        let target: u64 = info_field(&info, "master_repl_offset")
            .and_then(|offset| offset.parse().ok())
            .expect("master_repl_offset");
        eventually("the replica to catch up", TOPOLOGY_PATIENCE, async || {
            let info = replica.cli(&["INFO", "replication"]).await;
            info_field(&info, "slave_repl_offset")
                .and_then(|offset| offset.parse::<u64>().ok())
                .is_some_and(|offset| offset >= target)
        })
        .await;
    }

    /// `SENTINEL FAILOVER`: promotes the replica although the master is fine (as for planned
    /// maintenance). Retried while Sentinel is not ready for it (`NOGOODSLAVE`, `INPROG`).
    pub async fn force_failover(&self) {
        let sentinel = &self.sentinels[0];
        eventually(
            "Sentinel to accept SENTINEL FAILOVER",
            TOPOLOGY_PATIENCE,
            async || {
                let reply = sentinel
                    .cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER])
                    .await;
                if reply.trim() == "OK" {
                    Ok(())
                } else {
                    Err(reply)
                }
            },
        )
        .await;
    }
}

/// One entry of a `SENTINEL REPLICAS` / `SENTINEL SENTINELS` reply.
struct SentinelEntry(Vec<(String, String)>);

impl SentinelEntry {
    fn field(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Splits redis-cli's raw output of a list of field/value maps (one item a line) into entries;
/// each starts with its `name` field.
fn sentinel_entries(raw: &str) -> Vec<SentinelEntry> {
    let lines: Vec<&str> = raw.lines().filter(|line| !line.is_empty()).collect();
    let mut entries: Vec<SentinelEntry> = Vec::new();
    for pair in lines.chunks(2) {
        let [key, value] = pair else { break };
        if *key == "name" || entries.is_empty() {
            entries.push(SentinelEntry(Vec::new()));
        }
        if let Some(entry) = entries.last_mut() {
            entry.0.push(((*key).to_owned(), (*value).to_owned()));
        }
    }
    entries
}
