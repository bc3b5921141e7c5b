//! Every `redis-server` the tests run themselves, one harness for all: the fallback for the
//! shared test Redis ([`shared`]), a test's private server that it freezes, stops or restarts,
//! and the nodes, replicas and Sentinels of the topology tests ([`topology`]).
//!
//! Each server gets a free loopback port and a temporary directory, runs in the foreground as
//! a child of the test process, and counts as started once it answers `PING` — as the very
//! process started, by `INFO server`'s `process_id`, not something else that took the port. It
//! is killed (SIGKILL, then reaped) when dropped, and a [`Watchdog`] kills it and removes its
//! directory if the test process ends without dropping it.

// Paths relative to this file's directory: it is reached through `#[path]` (see support.rs).
#[path = "redis/shared.rs"]
pub mod shared;
#[path = "redis/topology.rs"]
pub mod topology;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use super::{
    process::{Watchdog, free_port, require_program},
    wait::{PATIENCE, eventually},
};

/// The Sentinel service name of [`Role::Sentinel`].
pub const SENTINEL_MASTER: &str = "mymaster";
/// The package that has `redis-server` and `redis-cli`.
const APT_PACKAGE: &str = "redis-server";
/// Attempts at starting one server when its port was taken between choosing and binding it.
const START_ATTEMPTS: usize = 5;
/// Bound on one start: a redis-server answers within milliseconds unless something is wrong.
const START_PATIENCE: Duration = Duration::from_secs(10);
/// Bound on one readiness check while starting.
const PING_PATIENCE: Duration = Duration::from_millis(500);

/// What a [`RedisServer`] is.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    /// In memory only (no RDB, no AOF).
    Plain,
    /// Every write goes to an append-only file (fsync always), so [`RedisServer::stop`] then
    /// [`RedisServer::restart`] keeps the data.
    Persistent,
    /// A replica of the server on this port.
    Replica(u16),
    /// A cluster node (its bus port, `port + 10000`, must be free too).
    ClusterNode,
    /// A Sentinel monitoring [`SENTINEL_MASTER`] at this port, with this quorum.
    Sentinel { master: u16, quorum: usize },
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Plain | Role::Persistent => "redis-server",
            Role::Replica(_) => "replica",
            Role::ClusterNode => "cluster node",
            Role::Sentinel { .. } => "sentinel",
        }
    }
}

/// One `redis-server` child process on its own port and directory.
pub struct RedisServer {
    role: Role,
    port: u16,
    dir: TempDir,
    running: Option<Running>,
}

/// The process, while it runs, and the watchdog that kills it if this test process dies first.
struct Running {
    child: Child,
    _watchdog: Watchdog,
}

impl RedisServer {
    /// An in-memory Redis (no RDB, no AOF) on a free port, ready to answer.
    pub async fn start() -> Self {
        Self::start_as(Role::Plain).await
    }

    /// A Redis that writes every command to an append-only file (fsync always) in its own
    /// directory, so [`RedisServer::stop`] then [`RedisServer::restart`] keeps the data.
    pub async fn start_persistent() -> Self {
        Self::start_as(Role::Persistent).await
    }

    /// A server of `role` on a free port, answering `PING`; retried on another port if the
    /// chosen one was taken meanwhile. Panics at once when `redis-server` is not installed.
    pub async fn start_as(role: Role) -> Self {
        require_program("redis-server", APT_PACKAGE);
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = RedisServer {
                role,
                port: free_port(matches!(role, Role::ClusterNode)),
                dir: tempfile::Builder::new()
                    .prefix("pleo-gateway-redis-")
                    .tempdir()
                    .expect("a directory for redis-server"),
                running: None,
            };
            match server.launch().await {
                Ok(()) => return server,
                Err(why) => failures.push(format!("port {}: {why}", server.port)),
            }
        }
        panic!(
            "a {} did not start in {START_ATTEMPTS} attempts:\n{}",
            role.name(),
            failures.join("\n")
        );
    }

    /// Starts the process on this server's port and directory and waits until it answers;
    /// `Err` (with the log's tail) if it exited first.
    async fn launch(&mut self) -> Result<(), String> {
        let child = self.command().spawn().unwrap_or_else(|e| {
            panic!("cannot run redis-server (apt-get install -y {APT_PACKAGE}): {e}")
        });
        let pid = child.id();
        self.running = Some(Running {
            child,
            _watchdog: Watchdog::new(pid, Some(self.dir.path())),
        });
        let what = format!("{} on port {} to answer PING", self.role.name(), self.port);
        let started = eventually(&what, START_PATIENCE, async || {
            if !self.is_running() {
                return Some(false);
            }
            answers_ping(&self.address(), Some(pid), PING_PATIENCE)
                .await
                .then_some(true)
        })
        .await;
        if started {
            Ok(())
        } else {
            self.kill();
            Err(self.log_tail(5))
        }
    }

    fn command(&self) -> Command {
        let dir = self.dir.path();
        let log = dir.join("redis.log");
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        if let Role::Sentinel { master, quorum } = self.role {
            // Sentinel rewrites its configuration file, so it must be a writable file.
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir \"{dir}\"\nlogfile \"{log}\"\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} {quorum}\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
                    dir = dir.display(),
                    log = log.display(),
                ),
            )
            .expect("write sentinel.conf");
            command.arg(&conf).arg("--sentinel");
        } else {
            let append_only = if matches!(self.role, Role::Persistent) {
                "yes"
            } else {
                "no"
            };
            command
                .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                .args(["--appendonly", append_only, "--appendfsync", "always"])
                // Full syncs start at once instead of waiting 5 s for more replicas.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--daemonize", "no", "--dir"])
                .arg(dir)
                .arg("--logfile")
                .arg(&log);
            match self.role {
                Role::Replica(master) => {
                    command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
                }
                Role::ClusterNode => {
                    command
                        .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                        .arg(dir.join("nodes.conf"));
                }
                _ => {}
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address())
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn is_running(&mut self) -> bool {
        self.running
            .as_mut()
            .is_some_and(|running| matches!(running.child.try_wait(), Ok(None)))
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .running
            .as_ref()
            .expect("redis-server running")
            .child
            .id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// SIGSTOP: the server keeps its sockets and data but answers nothing, like a Redis behind a
    /// network partition. Connections stay open; commands time out.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::freeze`]: everything is as it was.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM and wait for the exit: a clean shutdown (the append-only file is flushed).
    /// Connections are closed; new ones are refused.
    pub async fn stop(&mut self) {
        self.signal("-TERM");
        let what = format!("{} on port {} to exit", self.role.name(), self.port);
        eventually(&what, PATIENCE, async || !self.is_running()).await;
        self.running = None;
    }

    /// SIGKILL, as a crash: no goodbye to clients or replicas.
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }

    /// Starts it again on the same port and directory after [`RedisServer::stop`].
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "stop it first");
        if let Err(why) = self.launch().await {
            panic!(
                "{} did not restart on port {}: {why}",
                self.role.name(),
                self.port
            );
        }
    }

    /// `redis-cli -p <port> <args…>`'s raw output; panics when it cannot connect.
    pub async fn cli(&self, args: &[&str]) -> String {
        try_cli(self.port, args)
            .await
            .unwrap_or_else(|| panic!("redis-cli -p {} {args:?} failed", self.port))
    }

    /// `redis-cli -p <port> <args…>`'s raw output; `None` when it is not answering.
    pub async fn try_cli(&self, args: &[&str]) -> Option<String> {
        try_cli(self.port, args).await
    }

    /// The first line of `ROLE`: `master`, `slave` or `sentinel`; `None` when not answering.
    pub async fn role(&self) -> Option<String> {
        let reply = self.try_cli(&["ROLE"]).await?;
        reply.lines().next().map(str::to_owned)
    }

    /// Keys matching `pattern` on this server alone.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .await
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a frozen (SIGSTOPped) server. The watchdog goes with `running`.
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} on port {} (last lines of its log) ---\n{}",
                self.role.name(),
                self.port,
                self.log_tail(25)
            );
        }
    }
}

/// Whether the Redis at `address` (`host:port`) answers `PING` within `patience` — and, with
/// `Some(pid)`, is that process (`INFO server`'s `process_id`).
pub async fn answers_ping(address: &str, pid: Option<u32>, patience: Duration) -> bool {
    let attempt = async {
        let client = redis::Client::open(format!("redis://{address}")).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
        if pong != "PONG" {
            return Some(false);
        }
        let Some(pid) = pid else { return Some(true) };
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        Some(info_field(&info, "process_id") == Some(pid.to_string().as_str()))
    };
    matches!(
        tokio::time::timeout(patience, attempt).await,
        Ok(Some(true))
    )
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

/// `field:value` out of an `INFO` or `CLUSTER INFO` reply.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}
