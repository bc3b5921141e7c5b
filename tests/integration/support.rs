//! The shared harness: a mock Pleo and the gateway on real loopback sockets, a browser-like
//! client that keeps the session cookie itself, and Redis helpers scoped to one test's prefix.
//!
//! Everything is configured the way an operator would: the gateway only ever sees
//! `PLEO_GATEWAY__SECTION__KEY` entries, loaded by [`Config::load_with_env`].

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    middleware::{self, Next},
    response::Response,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{Stream, StreamExt};
use pleo_gateway::{
    app::{self, AppState},
    config::Config,
    mock_pleo::{MockClient, MockPleo, MockPleoConfig},
};
use rand::RngCore;
use reqwest::{Method, StatusCode, header};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use url::Url;

/// Redis used by the tests; a shared instance, so only keys under a per-test prefix are touched.
pub fn redis_url() -> String {
    std::env::var("PLEO_GATEWAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Scopes the gateway asks for.
pub const SCOPES: [&str; 2] = ["users:read", "export-jobs:read"];
/// The client id registered with the mock.
pub const CLIENT_ID: &str = "integration-client";
/// Upper bound on any wait in a test: generous, only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Where the gateway keeps its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// In-process store.
    Memory,
    /// The shared Redis, under a fresh key prefix.
    Redis,
}

/// How to start a [`TestEnv`].
#[derive(Clone, Debug)]
pub struct Options {
    store: StoreKind,
    access_token_ttl: Duration,
    refresh_before_expiry: Option<Duration>,
    public_client: bool,
    redis_url: Option<String>,
    extra_env: Vec<(String, String)>,
}

impl Options {
    /// Defaults: a confidential client, 15-minute access tokens, the gateway's default margin.
    pub fn new(store: StoreKind) -> Self {
        Self {
            store,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_before_expiry: None,
            public_client: false,
            redis_url: None,
            extra_env: Vec::new(),
        }
    }

    /// Lifetime of the access tokens the mock issues.
    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl = ttl;
        self
    }

    /// `pleo.refresh_before_expiry`.
    pub fn refresh_before_expiry(mut self, margin: Duration) -> Self {
        self.refresh_before_expiry = Some(margin);
        self
    }

    /// Registers a public client (no secret, PKCE only) instead of a confidential one.
    pub fn public_client(mut self) -> Self {
        self.public_client = true;
        self
    }

    /// `session.redis_url` other than the test Redis (e.g. a closed port).
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = Some(url.to_owned());
        self
    }

    /// Any further `PLEO_GATEWAY__…` key.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running mock Pleo plus gateway; both stop when this is dropped.
pub struct TestEnv {
    /// The mock, for its counters and failure knobs.
    pub mock: MockPleo,
    /// What passed through the mock's listener (issued tokens, streamed bytes).
    pub tap: Arc<MockTap>,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway_url: Url,
    /// `http://127.0.0.1:<port>` of the mock.
    pub mock_url: Url,
    /// The confidential client's secret (`None` for a public client).
    pub client_secret: Option<String>,
    /// The Redis key prefix of this test (`None` with the memory store).
    pub redis_prefix: Option<String>,
    /// The Redis the gateways use when it is not the shared test Redis (a [`PrivateRedis`]).
    private_redis_url: Option<String>,
    /// The `PLEO_GATEWAY__…` entries every gateway replica of this test is configured with.
    config_env: HashMap<String, String>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestEnv {
    /// Binds both listeners on ephemeral ports, then serves the mock and the gateway.
    pub async fn start(options: Options) -> TestEnv {
        pleo_gateway::telemetry::install_crypto_provider();
        init_test_tracing();
        // The gateway's port comes first: the mock must know the exact redirect_uri.
        let gateway_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let gateway_addr = gateway_listener.local_addr().expect("gateway address");
        let mock_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let mock_addr = mock_listener.local_addr().expect("mock address");
        let gateway_url = Url::parse(&format!("http://{gateway_addr}")).expect("gateway url");
        let mock_url = Url::parse(&format!("http://{mock_addr}")).expect("mock url");

        let client_secret = (!options.public_client).then(|| random_b64(24));
        let mock = MockPleo::new(MockPleoConfig {
            clients: vec![MockClient {
                client_id: CLIENT_ID.into(),
                client_secret: client_secret.clone(),
                redirect_uris: vec![format!("http://{gateway_addr}/auth/callback")],
            }],
            access_token_ttl: options.access_token_ttl,
            auto_approve: true,
            ..MockPleoConfig::default()
        });

        let redis_prefix = (options.store == StoreKind::Redis).then(|| {
            format!(
                "pleo-gateway-test:{}:",
                random_b64(9).replace(['+', '/'], "x")
            )
        });
        let mut env: Vec<(String, String)> = vec![
            ("SERVER__LISTEN".into(), gateway_addr.to_string()),
            (
                "SERVER__PUBLIC_URL".into(),
                format!("http://{gateway_addr}"),
            ),
            ("PLEO__AUTH_URL".into(), format!("http://{mock_addr}")),
            ("PLEO__API_URL".into(), format!("http://{mock_addr}")),
            ("PLEO__CLIENT_ID".into(), CLIENT_ID.into()),
            ("PLEO__SCOPES".into(), SCOPES.join(",")),
            // Room for the 20 MB upload test; the default is 10 MiB.
            ("PROXY__MAX_BODY_BYTES".into(), "64MiB".into()),
            // Every test logs in from 127.0.0.1, some of them hundreds of times; the rate
            // limits have tests of their own (hostile.rs), which set them explicitly.
            ("SERVER__AUTH_RATE_PER_CLIENT".into(), "off".into()),
            ("SERVER__AUTH_RATE_GLOBAL".into(), "off".into()),
        ];
        if let Some(secret) = &client_secret {
            env.push(("PLEO__CLIENT_SECRET".into(), secret.clone()));
        }
        if let Some(margin) = options.refresh_before_expiry {
            env.push((
                "PLEO__REFRESH_BEFORE_EXPIRY".into(),
                format!("{}ms", margin.as_millis()),
            ));
        }
        match options.store {
            StoreKind::Memory => env.push(("SESSION__STORE".into(), "memory".into())),
            StoreKind::Redis => {
                env.push(("SESSION__STORE".into(), "redis".into()));
                env.push((
                    "SESSION__REDIS_URL".into(),
                    options.redis_url.clone().unwrap_or_else(redis_url),
                ));
                env.push((
                    "SESSION__KEY_PREFIX".into(),
                    redis_prefix.clone().unwrap_or_default(),
                ));
                env.push(("SESSION__ENCRYPTION_KEYS".into(), random_b64(32)));
            }
        }
        env.extend(options.extra_env.iter().cloned());
        let env: HashMap<String, String> = env
            .into_iter()
            .map(|(key, value)| (format!("PLEO_GATEWAY__{key}"), value))
            .collect();
        let (stop, stop_rx) = watch::channel(false);
        let tap = Arc::new(MockTap::default());
        let mock_router = mock.router().layer(middleware::from_fn_with_state(
            Arc::clone(&tap),
            observe_mock,
        ));
        let mock_task = tokio::spawn({
            let stopped = stopped(stop_rx.clone());
            async move {
                let _ = axum::serve(mock_listener, mock_router)
                    .with_graceful_shutdown(stopped)
                    .await;
            }
        });
        let gateway_task = serve_gateway(&env, gateway_listener, stop_rx).await;

        TestEnv {
            mock,
            tap,
            gateway_url,
            mock_url,
            client_secret,
            redis_prefix,
            private_redis_url: options.redis_url.clone(),
            config_env: env,
            stop,
            tasks: vec![mock_task, gateway_task],
        }
    }

    /// Starts another gateway replica with the same configuration (same Redis prefix and keys,
    /// same `public_url`, as behind a load balancer) and returns its URL.
    pub async fn add_replica(&mut self) -> Url {
        self.add_replica_with(&[]).await
    }

    /// Like [`TestEnv::add_replica`], with some `PLEO_GATEWAY__…` keys (given without the
    /// prefix, as in [`Options::env`]) set differently: a replica mid-way through a rolling
    /// configuration change, say one with another `SESSION__ENCRYPTION_KEYS`.
    pub async fn add_replica_with(&mut self, overrides: &[(&str, &str)]) -> Url {
        let mut env = self.config_env.clone();
        for (key, value) in overrides {
            env.insert(format!("PLEO_GATEWAY__{key}"), (*value).to_owned());
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind replica");
        let address = listener.local_addr().expect("replica address");
        let task = serve_gateway(&env, listener, self.stop.subscribe()).await;
        self.tasks.push(task);
        Url::parse(&format!("http://{address}")).expect("replica url")
    }

    /// A fresh browser with an empty cookie jar.
    pub fn browser(&self) -> Browser {
        Browser::new(self.gateway_url.clone())
    }

    /// A browser talking to `gateway` (a replica's URL) with a copy of `other`'s cookies: the
    /// same user, routed to another replica by the load balancer.
    pub fn browser_like(&self, other: &Browser, gateway: Url) -> Browser {
        let browser = Browser::new(gateway);
        let cookies = other.cookies.lock().expect("jar lock").clone();
        *browser.cookies.lock().expect("jar lock") = cookies;
        browser
    }

    /// Every key under this test's Redis prefix with every value it holds (string values, or
    /// the field names and values of a hash).
    pub async fn redis_dump(&self) -> Vec<(String, Vec<Vec<u8>>)> {
        let prefix = self
            .redis_prefix
            .as_deref()
            .expect("a Redis-backed TestEnv");
        let url = self.private_redis_url.clone().unwrap_or_else(redis_url);
        let client = redis::Client::open(url).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis");
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut dump = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("TYPE");
            let values: Vec<Vec<u8>> = match kind.as_str() {
                "string" => vec![
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .expect("GET"),
                ],
                "hash" => redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("HGETALL"),
                "none" => continue,
                other => panic!("unexpected Redis type {other} at {key}"),
            };
            dump.push((key, values));
        }
        dump
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
        // A private Redis dies with its test (and may be stopped right now: a connection to a
        // SIGSTOPped server would hang), so only the shared one is cleaned up.
        if let Some(prefix) = &self.redis_prefix
            && self.private_redis_url.is_none()
        {
            delete_prefix(prefix);
        }
    }
}

/// Configures a gateway from `env` exactly as an operator would, and serves it on `listener`
/// until `stop` says so.
async fn serve_gateway(
    env: &HashMap<String, String>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let config = Config::load_with_env(None, env)
        .unwrap_or_else(|e| panic!("the test configuration is invalid: {e}"));
    let store = app::open_store(&config)
        .await
        .expect("open the session store");
    let options = pleo_gateway::server::ServeOptions::from_config(&config.server);
    let state = AppState::new(config, store).expect("gateway state");
    tokio::spawn(async move {
        let _ =
            pleo_gateway::server::serve(listener, app::app(state), options, stopped(stop)).await;
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Removes every key under `prefix` (SCAN + DEL; never FLUSH on the shared Redis).
fn delete_prefix(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
        else {
            return;
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// Logs to the test output when `RUST_LOG` is set; silent otherwise.
fn init_test_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// `n` random bytes, standard base64.
pub fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A Redis of one test's own
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child process of one test, for tests that freeze, stop or restart Redis
/// (the shared test Redis is never touched that way). Killed when dropped.
pub struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    append_only: bool,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// An in-memory Redis (no RDB, no AOF) on a free port, ready to answer.
    pub async fn start() -> Self {
        Self::spawn(false).await
    }

    /// A Redis that writes every command to an append-only file (fsync always) in its own
    /// directory, so [`PrivateRedis::stop`] then [`PrivateRedis::restart`] keeps the data.
    pub async fn start_persistent() -> Self {
        Self::spawn(true).await
    }

    async fn spawn(append_only: bool) -> Self {
        // Bind port 0 and let go: the port is free now, and stays so in practice.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self {
            port,
            dir: tempfile::tempdir().expect("a directory for redis-server"),
            append_only,
            child: None,
        };
        redis.launch().await;
        redis
    }

    async fn launch(&mut self) {
        let port = self.port.to_string();
        let append_only = if self.append_only { "yes" } else { "no" };
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port, "--save", ""])
            .args(["--appendonly", append_only, "--appendfsync", "always"])
            .args(["--daemonize", "no", "--dir"])
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if self.ping().await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited with {status}: {}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer PING: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it answers PING within half a second.
    pub async fn ping(&self) -> bool {
        let attempt = async {
            let client = redis::Client::open(self.url()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), attempt).await,
            Ok(Some(pong)) if pong == "PONG"
        )
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> String {
        self.child
            .as_ref()
            .expect("redis-server running")
            .id()
            .to_string()
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGSTOP: the server keeps its sockets and data but answers nothing, like a Redis behind a
    /// network partition. Connections stay open; commands time out.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`PrivateRedis::freeze`]: everything is as it was.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM and wait for the exit: a clean shutdown (the append-only file is flushed).
    /// Connections are closed; new ones are refused.
    pub async fn stop(&mut self) {
        self.signal("-TERM");
        let mut child = self.child.take().expect("redis-server running");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while child.try_wait().expect("wait for redis-server").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts it again on the same port and directory after [`PrivateRedis::stop`].
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.launch().await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a frozen (SIGSTOPped) server.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the mock's listener saw
// ---------------------------------------------------------------------------------------------

/// Observations of the mock's traffic: every token pair it issued, and control over `/big`.
#[derive(Debug)]
pub struct MockTap {
    issued: Mutex<Vec<IssuedPair>>,
    /// Bytes of `/big` response bodies handed to the socket so far.
    big_bytes_sent: AtomicU64,
    /// Bytes of `/echo` request bodies the mock has read so far.
    echo_bytes_received: AtomicU64,
    /// `Some(n)`: `/big` pauses after `n` bytes until [`MockTap::release_big`].
    big_hold_after: Mutex<Option<u64>>,
    big_release: watch::Sender<bool>,
}

impl Default for MockTap {
    fn default() -> Self {
        Self {
            issued: Mutex::new(Vec::new()),
            big_bytes_sent: AtomicU64::new(0),
            echo_bytes_received: AtomicU64::new(0),
            big_hold_after: Mutex::new(None),
            big_release: watch::channel(false).0,
        }
    }
}

/// One successful token response of the mock.
#[derive(Clone, Debug)]
pub struct IssuedPair {
    /// `access_token`.
    pub access_token: String,
    /// `refresh_token`.
    pub refresh_token: String,
    /// When the mock handed the response to its socket (after any `set_token_delay`): the
    /// gateway's clock for this token's expiry starts a moment later.
    pub issued_at: tokio::time::Instant,
}

impl MockTap {
    /// Every pair `/oauth/token` issued, oldest first.
    pub fn issued(&self) -> Vec<IssuedPair> {
        self.issued.lock().expect("tap lock").clone()
    }

    /// Makes `/big` stop after `bytes` bytes until [`MockTap::release_big`] is called.
    pub fn hold_big_after(&self, bytes: u64) {
        *self.big_hold_after.lock().expect("tap lock") = Some(bytes);
    }

    /// Lets a held `/big` stream carry on to the end.
    pub fn release_big(&self) {
        self.big_release.send_replace(true);
    }

    /// Bytes of `/big` produced so far.
    pub fn big_bytes_sent(&self) -> u64 {
        self.big_bytes_sent.load(Ordering::SeqCst)
    }

    /// Bytes of `/echo` request bodies read by the mock so far.
    pub fn echo_bytes_received(&self) -> u64 {
        self.echo_bytes_received.load(Ordering::SeqCst)
    }
}

/// Middleware around the mock's router: records token responses, counts `/echo` upload bytes as
/// the mock reads them, and meters (and optionally holds) `/big` downloads.
async fn observe_mock(State(tap): State<Arc<MockTap>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let request = if path.starts_with("/echo") {
        let (parts, body) = request.into_parts();
        Request::from_parts(parts, Body::from_stream(lingering(Arc::clone(&tap), body)))
    } else {
        request
    };
    let response = next.run(request).await;
    if path == "/oauth/token" && response.status() == StatusCode::OK {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .expect("token response body");
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let field = |name: &str| json[name].as_str().unwrap_or_default().to_owned();
            tap.issued.lock().expect("tap lock").push(IssuedPair {
                access_token: field("access_token"),
                refresh_token: field("refresh_token"),
                issued_at: tokio::time::Instant::now(),
            });
        }
        return Response::from_parts(parts, Body::from(bytes));
    }
    if path == "/big" && response.status() == StatusCode::OK {
        let hold_after = *tap.big_hold_after.lock().expect("tap lock");
        let (parts, body) = response.into_parts();
        let metered = metered_big(Arc::clone(&tap), body.into_data_stream(), hold_after);
        return Response::from_parts(parts, Body::from_stream(metered));
    }
    response
}

/// Hands an `/echo` upload to the mock chunk by chunk, counting what the mock reads. If the mock
/// answers without reading it all (the bearer check's 401 reads nothing), the rest is read and
/// dropped, as servers with a lingering close do: otherwise the connection is closed with
/// unread data, the kernel answers the gateway's next bytes with a reset, and the gateway may
/// lose the early answer to that reset — a race of the test server, not of the gateway.
fn lingering(
    tap: Arc<MockTap>,
    body: Body,
) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    let (to_mock, from_client) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(1);
    tokio::spawn(async move {
        let mut body = body.into_data_stream();
        let mut mock_reading = true;
        while let Some(chunk) = body.next().await {
            if mock_reading && to_mock.send(chunk).await.is_err() {
                mock_reading = false;
            }
        }
    });
    futures_util::stream::unfold((from_client, tap), |(mut from_client, tap)| async move {
        let chunk = from_client.recv().await?;
        if let Ok(bytes) = &chunk {
            tap.echo_bytes_received
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        Some((chunk, (from_client, tap)))
    })
}

/// Passes `/big`'s chunks on, counting them, and waits for the release once `hold_after` bytes
/// have gone out.
fn metered_big(
    tap: Arc<MockTap>,
    inner: impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    hold_after: Option<u64>,
) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    let release = tap.big_release.subscribe();
    futures_util::stream::unfold(
        (inner, tap, release, 0u64),
        move |(mut inner, tap, mut release, sent)| async move {
            if hold_after.is_some_and(|limit| sent >= limit) {
                let _ = release.wait_for(|go| *go).await;
            }
            let chunk = inner.next().await?;
            let len = chunk.as_ref().map_or(0, |bytes| bytes.len() as u64);
            tap.big_bytes_sent.fetch_add(len, Ordering::SeqCst);
            Some((chunk, (inner, tap, release, sent + len)))
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------------

/// A client that behaves like a browser towards the gateway: it keeps the cookies the gateway
/// sets and sends them back, and never follows redirects by itself.
pub struct Browser {
    http: reqwest::Client,
    gateway: Url,
    cookies: Mutex<BTreeMap<String, String>>,
}

/// The steps of one login, for tests that look at them.
#[derive(Debug)]
pub struct LoginTrip {
    /// Where the gateway sent the browser (Pleo's authorize endpoint with every parameter).
    pub authorize_url: Url,
    /// Where the mock sent the browser back (the gateway's callback with code and state).
    pub callback_url: Url,
}

impl Browser {
    fn new(gateway: Url) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        Self {
            http,
            gateway,
            cookies: Mutex::new(BTreeMap::new()),
        }
    }

    /// An absolute URL, or a path on the gateway.
    pub fn url(&self, path_or_url: &str) -> Url {
        Url::parse(path_or_url)
            .or_else(|_| self.gateway.join(path_or_url))
            .expect("a valid URL or gateway path")
    }

    /// A request builder for `method` on a gateway path or absolute URL.
    pub fn request(&self, method: Method, path_or_url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path_or_url))
    }

    /// `GET` on a gateway path or absolute URL.
    pub fn get(&self, path_or_url: &str) -> reqwest::RequestBuilder {
        self.request(Method::GET, path_or_url)
    }

    /// `POST` on a gateway path or absolute URL.
    pub fn post(&self, path_or_url: &str) -> reqwest::RequestBuilder {
        self.request(Method::POST, path_or_url)
    }

    /// Sends a request, attaching the cookie jar when it goes to the gateway (unless the test
    /// set its own `Cookie`), and takes in any `Set-Cookie` the gateway answers with.
    pub async fn send(&self, builder: reqwest::RequestBuilder) -> reqwest::Response {
        let mut request = builder.build().expect("a well-formed request");
        let to_gateway = request.url().origin() == self.gateway.origin();
        if to_gateway
            && !request.headers().contains_key(header::COOKIE)
            && let Some(line) = self.cookie_header()
        {
            request
                .headers_mut()
                .insert(header::COOKIE, line.parse().expect("cookie header value"));
        }
        let response = self.http.execute(request).await.expect("request sent");
        if to_gateway {
            self.absorb_set_cookies(&response);
        }
        response
    }

    /// The `Cookie` line the jar would send.
    pub fn cookie_header(&self) -> Option<String> {
        let jar = self.cookies.lock().expect("jar lock");
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// The value of cookie `name` in the jar.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().expect("jar lock").get(name).cloned()
    }

    /// Puts a cookie in the jar (to plant one before login, say).
    pub fn set_cookie(&self, name: &str, value: &str) {
        self.cookies
            .lock()
            .expect("jar lock")
            .insert(name.to_owned(), value.to_owned());
    }

    fn absorb_set_cookies(&self, response: &reqwest::Response) {
        let mut jar = self.cookies.lock().expect("jar lock");
        for line in response.headers().get_all(header::SET_COOKIE) {
            let Ok(line) = line.to_str() else { continue };
            let cookie = SetCookie::parse(line);
            if cookie.value.is_empty() || cookie.max_age == Some(0) {
                jar.remove(&cookie.name);
            } else {
                jar.insert(cookie.name, cookie.value);
            }
        }
    }

    /// `GET /auth/login?{query}` → the authorize URL the gateway redirects to.
    pub async fn begin_login(&self, query: &str) -> Url {
        let path = if query.is_empty() {
            "/auth/login".to_owned()
        } else {
            format!("/auth/login?{query}")
        };
        let response = self.send(self.get(&path)).await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "/auth/login must redirect"
        );
        location(&response)
    }

    /// Follows the authorize URL at the (auto-approving) mock → the callback URL it redirects to.
    pub async fn authorize(&self, authorize_url: &Url) -> Url {
        let response = self.send(self.get(authorize_url.as_str())).await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "the mock must redirect back: {:?}",
            response.text().await
        );
        location(&response)
    }

    /// Whole login: `/auth/login?{query}` → Pleo → `/auth/callback`; returns the callback's
    /// response (cookie already taken in) and the URLs on the way.
    pub async fn login_with(&self, query: &str) -> (reqwest::Response, LoginTrip) {
        let authorize_url = self.begin_login(query).await;
        let callback_url = self.authorize(&authorize_url).await;
        let response = self.send(self.get(callback_url.as_str())).await;
        (
            response,
            LoginTrip {
                authorize_url,
                callback_url,
            },
        )
    }

    /// Logs in and checks it worked (302 with a session cookie).
    pub async fn login(&self) -> reqwest::Response {
        let (response, _) = self.login_with("").await;
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "the callback must redirect"
        );
        assert!(
            session_set_cookie(&response).is_some(),
            "the callback must set the session cookie"
        );
        response
    }
}

/// A parsed `Set-Cookie` line (only what the tests look at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie value.
    pub value: String,
    /// `Max-Age`, when present.
    pub max_age: Option<u64>,
    /// The attributes after the value, as sent.
    pub attributes: Vec<String>,
}

impl SetCookie {
    /// Parses `name=value; Attr; Attr=x`.
    pub fn parse(line: &str) -> Self {
        let mut parts = line.split(';').map(str::trim);
        let (name, value) = parts
            .next()
            .and_then(|pair| pair.split_once('='))
            .unwrap_or((line, ""));
        let attributes: Vec<String> = parts.map(str::to_owned).collect();
        let max_age = attributes.iter().find_map(|attribute| {
            let (key, value) = attribute.split_once('=')?;
            key.eq_ignore_ascii_case("max-age")
                .then(|| value.trim().parse().ok())
                .flatten()
        });
        Self {
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            max_age,
            attributes,
        }
    }
}

/// The gateway's session cookie name with a plain-http `public_url` (no `__Host-` prefix).
pub const SESSION_COOKIE: &str = "pleo-session";

/// The `Set-Cookie` of the session cookie in `response`, if any.
pub fn session_set_cookie(response: &reqwest::Response) -> Option<SetCookie> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(SetCookie::parse)
        .find(|cookie| cookie.name == SESSION_COOKIE)
}

/// The `Location` of a redirect, resolved against the request URL.
pub fn location(response: &reqwest::Response) -> Url {
    let value = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location header");
    response.url().join(value).expect("a valid Location")
}

/// The query parameters of `url` (the last value of a repeated one wins).
pub fn query_map(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Reads a JSON body, with the status and raw text in the panic message when it is not JSON.
pub async fn json_body(response: reqwest::Response) -> serde_json::Value {
    let status = response.status();
    let text = response.text().await.expect("response body");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("expected JSON ({status}), got {e}: {text}"))
}

/// Polls `check` every 50 ms until it holds or [`PATIENCE`] runs out.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bearer token the gateway currently sends, as Pleo's echo endpoint saw it.
pub async fn bearer_seen_by_pleo(browser: &Browser) -> String {
    let response = browser.send(browser.get("/pleo/echo/whoami")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_body(response).await;
    echo["headers"]["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("a bearer token")
        .to_owned()
}

/// Sends `count` GETs of `path` all at once, spread round-robin over `browsers` (one per
/// replica, say), and returns every status in order.
pub async fn burst(browsers: &[&Browser], count: usize, path: &str) -> Vec<StatusCode> {
    let requests = (0..count).map(|i| {
        let browser = browsers[i % browsers.len()];
        async move { browser.send(browser.get(path)).await.status() }
    });
    futures_util::future::join_all(requests).await
}

/// Sleeps until the gateway's refresh margin has been reached for a token issued at `issued`:
/// with the margin capped at half the lifetime, that is `lifetime / 2` plus a safety step.
pub async fn wait_until_refresh_due(issued: tokio::time::Instant, lifetime: Duration) {
    tokio::time::sleep_until(issued + lifetime / 2 + Duration::from_millis(300)).await;
}

/// Declares a store-agnostic scenario once and runs it against both stores: the body becomes
/// `async fn name(store: StoreKind)`, with `memory::name` and `redis::name` tests calling it.
macro_rules! for_each_store {
    ($(
        $(#[$meta:meta])*
        async fn $name:ident($store:ident) $body:block
    )*) => {
        $(
            $(#[$meta])*
            async fn $name($store: $crate::support::StoreKind) $body
        )*

        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::support::StoreKind::Memory).await
                }
            )*
        }

        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::support::StoreKind::Redis).await
                }
            )*
        }
    };
}
