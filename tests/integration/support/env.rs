//! A mock Pleo and the gateway on real loopback sockets, configured the way an operator would:
//! the gateway only ever sees `PLEO_GATEWAY__SECTION__KEY` entries, loaded by
//! [`Config::load_with_env`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::middleware;
use pleo_gateway::{
    app::{self, AppState},
    config::Config,
    mock_pleo::{MockClient, MockPleo, MockPleoConfig},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use url::Url;

use super::{
    CLIENT_ID, SCOPES,
    browser::Browser,
    mock_tap::{MockTap, observe_mock},
    random_b64,
    redis::shared::{delete_prefix, redis_url},
};

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
    /// `http://127.0.0.1:<port>` of the gateway's internal listener (`server.internal_listen`:
    /// the harness always serves it).
    pub internal_url: Url,
    /// `http://127.0.0.1:<port>` of the mock.
    pub mock_url: Url,
    /// The confidential client's secret (`None` for a public client).
    pub client_secret: Option<String>,
    /// The Redis key prefix of this test (`None` with the memory store).
    pub redis_prefix: Option<String>,
    /// The Redis the gateways use (`None` with the memory store).
    redis_url: Option<String>,
    /// Whether that is the shared test Redis (rather than one of the test's own).
    shared_redis: bool,
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

        let store_url = match (options.store, &options.redis_url) {
            (StoreKind::Memory, _) => None,
            (StoreKind::Redis, Some(url)) => Some(url.clone()),
            (StoreKind::Redis, None) => Some(redis_url().await),
        };
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
            // Several tests send hundreds of calls to the mock at once; the Pleo rate budget
            // has tests of its own (rate_budget.rs), which turn it on.
            ("PLEO__RATE_LIMIT_PER_MINUTE".into(), "0".into()),
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
                    store_url.clone().unwrap_or_default(),
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
        let internal_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the internal listener");
        let internal_url = Url::parse(&format!(
            "http://{}",
            internal_listener.local_addr().expect("internal address")
        ))
        .expect("internal url");
        let gateway_task = serve_gateway(&env, gateway_listener, internal_listener, stop_rx).await;

        TestEnv {
            mock,
            tap,
            gateway_url,
            internal_url,
            mock_url,
            client_secret,
            redis_prefix,
            redis_url: store_url,
            shared_redis: options.redis_url.is_none(),
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
        self.add_replica_with_internal(overrides).await.0
    }

    /// Like [`TestEnv::add_replica_with`]; returns the URLs of the replica's main listener and
    /// of its internal listener.
    pub async fn add_replica_with_internal(&mut self, overrides: &[(&str, &str)]) -> (Url, Url) {
        let mut env = self.config_env.clone();
        for (key, value) in overrides {
            env.insert(format!("PLEO_GATEWAY__{key}"), (*value).to_owned());
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind replica");
        let address = listener.local_addr().expect("replica address");
        let internal = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the replica's internal listener");
        let internal_address = internal.local_addr().expect("internal address");
        let task = serve_gateway(&env, listener, internal, self.stop.subscribe()).await;
        self.tasks.push(task);
        (
            Url::parse(&format!("http://{address}")).expect("replica url"),
            Url::parse(&format!("http://{internal_address}")).expect("internal url"),
        )
    }

    /// The `PLEO_GATEWAY__…` configuration every replica of this test runs with (to run the
    /// real binary against the same store, say).
    pub fn config_env(&self) -> &HashMap<String, String> {
        &self.config_env
    }

    /// A fresh browser with an empty cookie jar.
    pub fn browser(&self) -> Browser {
        Browser::new(self.gateway_url.clone())
    }

    /// A browser talking to `gateway` (a replica's URL) with a copy of `other`'s cookies: the
    /// same user, routed to another replica by the load balancer.
    pub fn browser_like(&self, other: &Browser, gateway: Url) -> Browser {
        other.clone_to(gateway)
    }

    /// Every key under this test's Redis prefix with every value it holds (string values, or
    /// the field names and values of a hash).
    pub async fn redis_dump(&self) -> Vec<(String, Vec<Vec<u8>>)> {
        let prefix = self
            .redis_prefix
            .as_deref()
            .expect("a Redis-backed TestEnv");
        let url = self.redis_url.as_deref().expect("a Redis-backed TestEnv");
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
        if let (Some(prefix), Some(url)) = (&self.redis_prefix, &self.redis_url)
            && self.shared_redis
        {
            delete_prefix(url, prefix);
        }
    }
}

/// Configures a gateway from `env` exactly as an operator would, and serves it on `listener`
/// (and its internal listener on `internal`) until `stop` says so.
async fn serve_gateway(
    env: &HashMap<String, String>,
    listener: TcpListener,
    internal: TcpListener,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let config = Config::load_with_env(None, env)
        .unwrap_or_else(|e| panic!("the test configuration is invalid: {e}"));
    let store = app::open_store(&config)
        .await
        .expect("open the session store");
    let options = pleo_gateway::server::ServeOptions::from_config(&config.server);
    let state = AppState::new(config, store).expect("gateway state");
    tokio::spawn(pleo_gateway::server::serve(
        internal,
        pleo_gateway::internal::router(state.clone()),
        options,
        stopped(stop.clone()),
    ));
    tokio::spawn(async move {
        let _ =
            pleo_gateway::server::serve(listener, app::app(state), options, stopped(stop)).await;
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
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
