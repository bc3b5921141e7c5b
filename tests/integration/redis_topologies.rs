//! Sessions on the Redis topologies an operator moves to when one Redis is not enough: Cluster
//! (`redis+cluster://`) and Sentinel (`redis+sentinel://`), with a failover under the gateway.
//!
//! Each test runs its own `redis-server` processes (Debian's 7.0) on free loopback ports, with
//! their files in a temporary directory, and kills them when it ends, also when it fails. The
//! shared test Redis is not involved. (`support::PrivateRedis` starts one plain server; these
//! tests need cluster nodes, replicas and sentinels, hence [`RedisProcess`].)

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::{StatusCode, header};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::support::{
    Browser, Options, PATIENCE, SESSION_COOKIE, StoreKind, TestEnv, json_body, session_set_cookie,
    wait_until_refresh_due,
};

/// The Sentinel service name.
const MASTER_NAME: &str = "mymaster";
/// Bound on forming a topology, a failover, or Sentinel demoting the old master (which it does
/// about ten seconds after a failover); only reached when something is broken.
const TOPOLOGY_PATIENCE: Duration = Duration::from_secs(60);
/// Bound on the gateway following a failover Sentinel has announced: it must stop writing to
/// the old master well before Sentinel demotes it, or those writes are lost.
const FOLLOW_PATIENCE: Duration = Duration::from_secs(5);
/// Pause between two looks at something that is expected to change.
const POLL: Duration = Duration::from_millis(50);
/// Attempts at starting one server when its port was taken between choosing and binding it.
const START_ATTEMPTS: usize = 5;

// ---------------------------------------------------------------------------------------------
// redis-server processes
// ---------------------------------------------------------------------------------------------

/// What a [`RedisProcess`] is.
enum Kind {
    /// A plain server; with `Some(port)`, a replica of the server on that port.
    Server { replica_of: Option<u16> },
    /// A cluster node (its bus port, `port + 10000`, must be free too).
    ClusterNode,
    /// A Sentinel monitoring [`MASTER_NAME`] at `master` with `quorum`.
    Sentinel { master: u16, quorum: usize },
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Server { replica_of: None } => "master",
            Kind::Server {
                replica_of: Some(_),
            } => "replica",
            Kind::ClusterNode => "node",
            Kind::Sentinel { .. } => "sentinel",
        }
    }
}

/// A `redis-server` child process on its own port and directory; killed (and reaped) on drop.
/// When the test is failing, its log's tail goes to the test output.
struct RedisProcess {
    child: Child,
    port: u16,
    log: PathBuf,
    what: &'static str,
}

impl RedisProcess {
    /// Starts one server under `root` and waits until it answers, retrying on another port if
    /// the chosen one was taken meanwhile.
    async fn start(root: &Path, kind: &Kind) -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port(matches!(kind, Kind::ClusterNode));
            let dir = root.join(format!("{}-{port}", kind.name()));
            std::fs::create_dir_all(&dir).expect("a directory for redis-server");
            let log = dir.join("redis.log");
            let mut command = Command::new("redis-server");
            if let Kind::Sentinel { master, quorum } = kind {
                // Sentinel rewrites its configuration file, so it must be a writable file.
                let conf = dir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir \"{dir}\"\nlogfile \"{log}\"\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master} {quorum}\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n",
                        dir = dir.display(),
                        log = log.display(),
                    ),
                )
                .expect("write sentinel.conf");
                command.arg(&conf).arg("--sentinel");
            } else {
                command
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    // Full syncs start at once instead of waiting 5 s for more replicas.
                    .args(["--repl-diskless-sync-delay", "0"])
                    .arg("--dir")
                    .arg(&dir)
                    .arg("--logfile")
                    .arg(&log);
                match kind {
                    Kind::Server {
                        replica_of: Some(master),
                    } => {
                        command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
                    }
                    Kind::ClusterNode => {
                        command
                            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                            .arg(dir.join(format!("nodes-{port}.conf")));
                    }
                    _ => {}
                }
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run redis-server (apt-get install redis-server): {e}")
                });
            let mut process = RedisProcess {
                child,
                port,
                log,
                what: kind.name(),
            };
            if process.wait_ready().await {
                return process;
            }
            failures.push(format!("port {port}: {}", process.log_tail(5)));
        }
        panic!(
            "a {} did not start in {START_ATTEMPTS} attempts:\n{}",
            kind.name(),
            failures.join("\n")
        );
    }

    /// Waits (bounded) until this very process answers on its port; false if it exited.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = self.child.id().to_string();
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            // The process id, not just a PONG: the port could have gone to someone else.
            if let Some(info) = try_cli(self.port, &["INFO", "server"]).await
                && info_field(&info, "process_id") == Some(pid.as_str())
            {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }

    /// SIGKILL, as a crash: no goodbye to clients or replicas.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args).await
    }

    /// The first line of `ROLE`: `master`, `slave` or `sentinel`; `None` when not answering.
    async fn role(&self) -> Option<String> {
        let reply = try_cli(self.port, &["ROLE"]).await?;
        reply.lines().next().map(str::to_owned)
    }

    /// Keys matching `pattern` on this server alone.
    async fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .await
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} on port {} (last lines of its log) ---\n{}",
                self.what,
                self.port,
                self.log_tail(25)
            );
        }
    }
}

/// A loopback port that is free right now (and, for a cluster node, so is `port + 10000`, its
/// cluster bus). Released before returning, for redis-server to bind.
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if !with_bus {
            return port;
        }
        if let Some(bus) = port.checked_add(10_000)
            && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// `redis-cli -h 127.0.0.1 -p <port> <args…>` with the raw (non-tty) output; `None` when it could
/// not connect or took more than 10 s. Error replies are output too (redis-cli still exits 0).
async fn try_cli(port: u16, args: &[&str]) -> Option<String> {
    let run = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .ok()?
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn cli(port: u16, args: &[&str]) -> String {
    try_cli(port, args)
        .await
        .unwrap_or_else(|| panic!("redis-cli -p {port} {args:?} failed"))
}

/// `field:value` out of an `INFO` or `CLUSTER INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// Polls `check` every [`POLL`] until it holds; panics with `what` after `patience`.
async fn wait_for<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Topologies
// ---------------------------------------------------------------------------------------------

/// A Redis Cluster of masters without replicas.
struct RedisCluster {
    nodes: Vec<RedisProcess>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts `masters` nodes, joins them with `redis-cli --cluster create`, and waits until
    /// every node reports the whole cluster healthy.
    async fn start(masters: usize) -> Self {
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let mut nodes = Vec::new();
        for _ in 0..masters {
            nodes.push(RedisProcess::start(dir.path(), &Kind::ClusterNode).await);
        }
        let cluster = RedisCluster { nodes, _dir: dir };
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
            wait_for(
                &format!("cluster_state:ok on node {}", node.port),
                TOPOLOGY_PATIENCE,
                || async {
                    let info = node.cli(&["CLUSTER", "INFO"]).await;
                    info_field(&info, "cluster_state") == Some("ok")
                        && info_field(&info, "cluster_slots_ok") == Some("16384")
                        && info_field(&info, "cluster_known_nodes") == Some(known.as_str())
                },
            )
            .await;
        }
        cluster
    }

    fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`.
    fn url(&self) -> String {
        format!("redis+cluster://{}", self.addresses().join(","))
    }

    /// How many keys match `pattern` on each node.
    async fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            counts.push(node.keys(pattern).await.len());
        }
        counts
    }
}

/// A master, one replica of it, and Sentinels monitoring them.
struct SentinelSetup {
    /// `[0]` is the master at the start, `[1]` its replica.
    servers: Vec<RedisProcess>,
    sentinels: Vec<RedisProcess>,
    _dir: TempDir,
}

impl SentinelSetup {
    /// Starts the master and its replica, waits for the replica to sync, then starts
    /// `sentinels` Sentinels (quorum: a majority) and waits until each one knows the replica
    /// and the other Sentinels, so that a failover can happen at once.
    async fn start(sentinels: usize) -> Self {
        let dir = tempfile::tempdir().expect("a directory for the sentinel setup");
        let master = RedisProcess::start(dir.path(), &Kind::Server { replica_of: None }).await;
        let replica = RedisProcess::start(
            dir.path(),
            &Kind::Server {
                replica_of: Some(master.port),
            },
        )
        .await;
        wait_for("the replica to sync", TOPOLOGY_PATIENCE, || async {
            let info = replica.cli(&["INFO", "replication"]).await;
            info_field(&info, "master_link_status") == Some("up")
        })
        .await;
        let kind = Kind::Sentinel {
            master: master.port,
            quorum: sentinels / 2 + 1,
        };
        let mut started = Vec::new();
        for _ in 0..sentinels {
            started.push(RedisProcess::start(dir.path(), &kind).await);
        }
        let setup = SentinelSetup {
            servers: vec![master, replica],
            sentinels: started,
            _dir: dir,
        };
        let replica_port = setup.servers[1].port.to_string();
        for sentinel in &setup.sentinels {
            wait_for(
                &format!("Sentinel {} to see a healthy replica", sentinel.port),
                TOPOLOGY_PATIENCE,
                || async {
                    let replicas = sentinel_entries(
                        &sentinel.cli(&["SENTINEL", "REPLICAS", MASTER_NAME]).await,
                    );
                    replicas.iter().any(|replica| {
                        replica.field("port") == Some(replica_port.as_str())
                            && replica.field("flags") == Some("slave")
                            && replica.field("master-link-status") == Some("ok")
                    })
                },
            )
            .await;
            wait_for(
                &format!("Sentinel {} to know the other Sentinels", sentinel.port),
                TOPOLOGY_PATIENCE,
                || async {
                    let others = sentinel_entries(
                        &sentinel.cli(&["SENTINEL", "SENTINELS", MASTER_NAME]).await,
                    );
                    others.len() == sentinels - 1
                },
            )
            .await;
        }
        setup
    }

    /// `redis+sentinel://127.0.0.1:s1,…/mymaster`.
    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", nodes.join(","))
    }

    /// The master's port as Sentinel `index` reports it.
    async fn master_port(&self, index: usize) -> Option<u16> {
        let reply = try_cli(
            self.sentinels[index].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        )
        .await?;
        reply.lines().nth(1)?.trim().parse().ok()
    }

    /// Waits until `replica` has applied everything `master` had written when this was called:
    /// replication is asynchronous, and a failover loses what had not reached the replica.
    async fn wait_replicated(&self, master: &RedisProcess, replica: &RedisProcess) {
        let info = master.cli(&["INFO", "replication"]).await;
        let target: u64 = info_field(&info, "master_repl_offset")
            .and_then(|offset| offset.parse().ok())
            .expect("master_repl_offset");
        wait_for("the replica to catch up", TOPOLOGY_PATIENCE, || async {
            let info = replica.cli(&["INFO", "replication"]).await;
            info_field(&info, "slave_repl_offset")
                .and_then(|offset| offset.parse::<u64>().ok())
                .is_some_and(|offset| offset >= target)
        })
        .await;
    }

    /// `SENTINEL FAILOVER`: promotes the replica although the master is fine (as for planned
    /// maintenance). Retried while Sentinel is not ready for it (`NOGOODSLAVE`, `INPROG`).
    async fn force_failover(&self) {
        let sentinel = &self.sentinels[0];
        let mut last = String::new();
        let deadline = Instant::now() + TOPOLOGY_PATIENCE;
        while Instant::now() < deadline {
            last = sentinel.cli(&["SENTINEL", "FAILOVER", MASTER_NAME]).await;
            if last.trim() == "OK" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("SENTINEL FAILOVER was refused: {last}");
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

// ---------------------------------------------------------------------------------------------
// Requests with one session cookie, through a switch of Redis
// ---------------------------------------------------------------------------------------------

/// One GET with exactly this session cookie. While Redis is switching it may be refused for now
/// (503 with `Retry-After`), but it must never be an error of the gateway's own (500) or a
/// logout (401, or a cleared cookie). Returns the status.
async fn probe(browser: &Browser, cookie: &str, path: &str) -> StatusCode {
    let response = browser
        .send(
            browser
                .get(path)
                .header(header::COOKIE, format!("{SESSION_COOKIE}={cookie}")),
        )
        .await;
    let status = response.status();
    if let Some(set) = session_set_cookie(&response) {
        assert!(
            !set.value.is_empty() && set.max_age != Some(0),
            "GET {path} cleared the session cookie ({status}): {set:?}"
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            response.headers().contains_key(header::RETRY_AFTER),
            "a 503 without Retry-After for GET {path}"
        );
        return status;
    }
    if status != StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        panic!("GET {path} with the session cookie: {status} {body}");
    }
    status
}

/// Repeats [`probe`] until it is a 200, within [`PATIENCE`].
async fn until_ok(browser: &Browser, cookie: &str, path: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut refused = 0;
    while probe(browser, cookie, path).await != StatusCode::OK {
        refused += 1;
        assert!(
            Instant::now() < deadline,
            "GET {path} still 503 after {refused} tries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// Login, API calls, two token refreshes (each a lock key plus a compare-and-set script on the
/// session key, two keys the cluster places independently) and logout on a 3-master Redis
/// Cluster; many sessions land on more than one node, each still readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_and_api_calls_work_on_redis_cluster() {
    const TOKEN_TTL: Duration = Duration::from_secs(3);
    let cluster = RedisCluster::start(3).await;
    let env = TestEnv::start(
        Options::new(StoreKind::Redis)
            .redis_url(&cluster.url())
            .access_token_ttl(TOKEN_TTL)
            .refresh_before_expiry(Duration::from_secs(2)),
    )
    .await;
    let prefix = env.redis_prefix.clone().expect("a Redis key prefix");
    let sessions = format!("{prefix}session:*");

    let ready = reqwest::get(env.gateway_url.join("/readyz").expect("url"))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), StatusCode::OK, "ready on the cluster");

    let browser = env.browser();
    browser.login().await;
    let logged_in = Instant::now();
    let info = browser.send(browser.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::OK);
    assert_eq!(json_body(info).await["authenticated"], true);
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    assert_eq!(json_body(employees).await["pagination"]["total"], 8);
    assert_eq!(
        cluster.keys_per_node(&sessions).await.iter().sum::<usize>(),
        1,
        "one session key in the cluster"
    );

    // A refresh, then another: the second one is only possible if the rotated pair was stored.
    wait_until_refresh_due(logged_in, TOKEN_TTL).await;
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    let refreshed = Instant::now();
    assert_eq!(env.mock.stats().refresh_token_grants, 1);
    wait_until_refresh_due(refreshed, TOKEN_TTL).await;
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    let stats = env.mock.stats();
    assert_eq!(stats.refresh_token_grants, 2, "two rotations");
    assert_eq!(
        stats.reuse_detections, 0,
        "no spent refresh token sent again"
    );
    assert_eq!(stats.refresh_failures, 0);
    assert_eq!(stats.api_unauthorized, 0);

    // More sessions: their keys hash to slots all over the cluster, and each one is found again.
    let others: Vec<Browser> = (0..12).map(|_| env.browser()).collect();
    for other in &others {
        other.login().await;
    }
    for other in &others {
        let info = other.send(other.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::OK);
    }
    let per_node = cluster.keys_per_node(&sessions).await;
    assert_eq!(
        per_node.iter().sum::<usize>(),
        13,
        "every session once: {per_node:?}"
    );
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() > 1,
        "sessions spread over the nodes: {per_node:?}"
    );

    let logout = browser
        .send(browser.post("/auth/logout").header("X-CSRF", "1"))
        .await;
    assert_eq!(logout.status(), StatusCode::OK);
    let info = browser.send(browser.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
    let per_node = cluster.keys_per_node(&sessions).await;
    assert_eq!(
        per_node.iter().sum::<usize>(),
        12,
        "the logged-out session is gone from its node: {per_node:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------------------

/// A planned failover (`SENTINEL FAILOVER`): the replica is promoted while the old master stays
/// up, writable, until Sentinel demotes it about ten seconds later, dropping whatever was written
/// to it meanwhile. The gateway must follow the announced master promptly; the same cookie keeps
/// working (503s during the switch allowed, never a 500 or a logout), refreshed token pairs
/// survive the demotion, and new logins work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_works_through_sentinel_and_survives_failover() {
    let redis = SentinelSetup::start(1).await;
    let (old, new) = (&redis.servers[0], &redis.servers[1]);
    let env = TestEnv::start(Options::new(StoreKind::Redis).redis_url(&redis.url())).await;
    let prefix = env.redis_prefix.clone().expect("a Redis key prefix");
    let sessions = format!("{prefix}session:*");

    let browser = env.browser();
    browser.login().await;
    let cookie = browser.cookie(SESSION_COOKIE).expect("session cookie");
    until_ok(&browser, &cookie, "/auth/session").await;
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    assert_eq!(
        old.keys(&sessions).await.len(),
        1,
        "the session is on the master"
    );
    redis.wait_replicated(old, new).await;
    assert_eq!(new.keys(&sessions).await.len(), 1, "and on the replica");

    redis.force_failover().await;
    wait_for(
        "Sentinel to announce the promoted replica",
        TOPOLOGY_PATIENCE,
        || async {
            probe(&browser, &cookie, "/auth/session").await;
            redis.master_port(0).await == Some(new.port)
                && new.role().await.as_deref() == Some("master")
        },
    )
    .await;

    // New logins write their sessions to the new master as soon as the gateway follows it,
    // rather than to the old master (where Sentinel's demotion would later drop them).
    let announced = Instant::now();
    loop {
        let visitor = env.browser();
        let (response, _) = visitor.login_with("").await;
        assert!(
            [StatusCode::FOUND, StatusCode::SERVICE_UNAVAILABLE].contains(&response.status()),
            "a login during failover: {}",
            response.status()
        );
        if new.keys(&sessions).await.len() >= 2 {
            break;
        }
        assert!(
            announced.elapsed() < FOLLOW_PATIENCE,
            "{FOLLOW_PATIENCE:?} after Sentinel announced the new master, the gateway still \
             writes to the old one (old master's sessions: {}); Sentinel demotes it later \
             and everything written there is lost",
            old.keys(&sessions).await.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same cookie works, and a refresh stores its rotated pair on the new master.
    until_ok(&browser, &cookie, "/auth/session").await;
    env.mock.expire_access_tokens();
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    assert_eq!(env.mock.stats().refresh_token_grants, 1);

    // Sentinel demotes the old master, which drops its own data for the new master's.
    wait_for(
        "Sentinel to demote the old master",
        TOPOLOGY_PATIENCE,
        || async {
            probe(&browser, &cookie, "/auth/session").await;
            old.role().await.as_deref() == Some("slave")
        },
    )
    .await;
    redis.wait_replicated(new, old).await;

    // Still the same session, with the pair refreshed after the failover: refreshing again
    // sends that refresh token, not a spent one.
    until_ok(&browser, &cookie, "/auth/session").await;
    env.mock.expire_access_tokens();
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    let stats = env.mock.stats();
    assert_eq!(stats.refresh_token_grants, 2, "a second rotation");
    assert_eq!(
        stats.reuse_detections, 0,
        "no spent refresh token sent again"
    );
    assert_eq!(stats.refresh_failures, 0);

    let before = new.keys(&sessions).await.len();
    let newcomer = env.browser();
    newcomer.login().await;
    let info = newcomer.send(newcomer.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::OK);
    assert_eq!(
        new.keys(&sessions).await.len(),
        before + 1,
        "the newcomer's session is on the new master"
    );

    let logout = browser
        .send(
            browser
                .post("/auth/logout")
                .header("X-CSRF", "1")
                .header(header::COOKIE, format!("{SESSION_COOKIE}={cookie}")),
        )
        .await;
    assert_eq!(logout.status(), StatusCode::OK);
    assert_eq!(
        new.keys(&sessions).await.len(),
        before,
        "the session is deleted"
    );
}

/// The master crashes (SIGKILL) and so does the first Sentinel of the URL: the others elect a
/// leader and promote the replica, the gateway asks the Sentinels that still answer, and the same
/// cookie works again (503s during the switch allowed, never a 500 or a logout), refresh
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_survive_a_crashed_master_and_a_dead_sentinel() {
    let mut redis = SentinelSetup::start(3).await;
    let new_port = redis.servers[1].port;
    let env = TestEnv::start(Options::new(StoreKind::Redis).redis_url(&redis.url())).await;
    let prefix = env.redis_prefix.clone().expect("a Redis key prefix");
    let sessions = format!("{prefix}session:*");

    let browser = env.browser();
    browser.login().await;
    let cookie = browser.cookie(SESSION_COOKIE).expect("session cookie");
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    redis
        .wait_replicated(&redis.servers[0], &redis.servers[1])
        .await;

    redis.servers[0].kill();
    redis.sentinels[0].kill();
    wait_for(
        "the Sentinels to promote the replica",
        TOPOLOGY_PATIENCE,
        || async {
            probe(&browser, &cookie, "/auth/session").await;
            redis.master_port(1).await == Some(new_port)
                && redis.servers[1].role().await.as_deref() == Some("master")
        },
    )
    .await;

    until_ok(&browser, &cookie, "/auth/session").await;
    env.mock.expire_access_tokens();
    until_ok(&browser, &cookie, "/pleo/v2/employees").await;
    let stats = env.mock.stats();
    assert_eq!(stats.refresh_token_grants, 1, "refreshed on the new master");
    assert_eq!(stats.reuse_detections, 0);

    let newcomer = env.browser();
    newcomer.login().await;
    assert_eq!(
        redis.servers[1].keys(&sessions).await.len(),
        2,
        "both sessions on the promoted replica"
    );
}
