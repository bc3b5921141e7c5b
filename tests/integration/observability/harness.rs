//! The released binary as an operator runs it, with everything it talks to started by the test:
//! a mock Pleo, an app that records the headers it gets, and an OTLP receiver that decodes what
//! the gateway exports. One gateway process per test, so its metrics count that test alone,
//! its stdout is that test's log, and its trace export is configured by `OTEL_*` as in
//! production.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::HeaderMap,
    middleware::{self, Next},
    response::Response,
    routing::{any, post},
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use pleo_gateway::mock_pleo::{MockClient, MockPleo, MockPleoConfig};
use prost::Message;
use tokio::net::TcpListener;
use url::Url;

use crate::support::{
    Browser, CLIENT_ID, PATIENCE, SCOPES, eventually,
    mock_tap::{MockTap, observe_mock},
    random_b64,
};

/// How to start a [`Stack`].
pub struct Options {
    pub access_token_ttl: Duration,
    pub refresh_before_expiry: Option<Duration>,
    /// Export traces to the stack's receiver.
    pub otel: bool,
    /// Further environment of the gateway (`PLEO_GATEWAY__…`, `RUST_LOG`, …).
    pub env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_before_expiry: None,
            otel: false,
            env: Vec::new(),
        }
    }
}

/// One span as the receiver decoded it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// OTLP's numeric kind: 2 server, 3 client.
    pub kind: i32,
    pub attributes: HashMap<String, String>,
}

/// What the receiver got: every export request's raw body, and the spans in them.
#[derive(Default)]
pub struct Received {
    pub bodies: Vec<Bytes>,
    pub spans: Vec<ReceivedSpan>,
}

/// The headers the app (or Pleo) saw, per path, in arrival order.
pub type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

pub struct Stack {
    pub mock: MockPleo,
    pub tap: Arc<MockTap>,
    pub client_secret: String,
    pub gateway_url: Url,
    pub metrics_url: Url,
    /// Requests the mock Pleo received, with their headers.
    pub pleo_seen: Seen,
    /// Requests the app received, with their headers.
    pub app_seen: Seen,
    pub received: Arc<Mutex<Received>>,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Serves `router` on an ephemeral loopback port.
async fn serve(router: Router) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (port, task)
}

async fn record(State(seen): State<Seen>, request: Request, next: Next) -> Response {
    seen.lock()
        .expect("seen lock")
        .push((request.uri().path().to_owned(), request.headers().clone()));
    next.run(request).await
}

async fn export(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body.clone()).expect("an OTLP protobuf body");
    let mut received = received.lock().expect("receiver lock");
    received.bodies.push(body);
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                        (kv.key.clone(), format!("{value:?}"))
                    })
                    .collect();
                received.spans.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes,
                });
            }
        }
    }
    ""
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Stack {
    pub async fn start(options: Options) -> Stack {
        pleo_gateway::telemetry::install_crypto_provider();
        let gateway_port = free_port();
        let metrics_port = free_port();
        let client_secret = random_b64(24);
        let mock = MockPleo::new(MockPleoConfig {
            clients: vec![MockClient {
                client_id: CLIENT_ID.into(),
                client_secret: Some(client_secret.clone()),
                redirect_uris: vec![format!("http://127.0.0.1:{gateway_port}/auth/callback")],
            }],
            access_token_ttl: options.access_token_ttl,
            auto_approve: true,
            ..MockPleoConfig::default()
        });
        let tap = Arc::new(MockTap::default());
        let pleo_seen = Seen::default();
        let (mock_port, mock_task) = serve(
            mock.router()
                .layer(middleware::from_fn_with_state(
                    Arc::clone(&tap),
                    observe_mock,
                ))
                .layer(middleware::from_fn_with_state(
                    Arc::clone(&pleo_seen),
                    record,
                )),
        )
        .await;
        let app_seen = Seen::default();
        let (app_port, app_task) =
            serve(Router::new().fallback(any(|| async { "the app" })).layer(
                middleware::from_fn_with_state(Arc::clone(&app_seen), record),
            ))
            .await;
        let received = Arc::new(Mutex::new(Received::default()));
        let (otlp_port, otlp_task) = serve(
            Router::new()
                .route("/v1/traces", post(export))
                .with_state(Arc::clone(&received)),
        )
        .await;

        let mock_url = format!("http://127.0.0.1:{mock_port}");
        let mut env: Vec<(String, String)> = [
            (
                "PLEO_GATEWAY__SERVER__LISTEN",
                format!("127.0.0.1:{gateway_port}"),
            ),
            (
                "PLEO_GATEWAY__SERVER__PUBLIC_URL",
                format!("http://127.0.0.1:{gateway_port}"),
            ),
            (
                "PLEO_GATEWAY__SERVER__METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            ),
            ("PLEO_GATEWAY__SERVER__AUTH_RATE_PER_CLIENT", "off".into()),
            ("PLEO_GATEWAY__SERVER__AUTH_RATE_GLOBAL", "off".into()),
            ("PLEO_GATEWAY__PLEO__AUTH_URL", mock_url.clone()),
            ("PLEO_GATEWAY__PLEO__API_URL", mock_url),
            ("PLEO_GATEWAY__PLEO__CLIENT_ID", CLIENT_ID.into()),
            ("PLEO_GATEWAY__PLEO__CLIENT_SECRET", client_secret.clone()),
            ("PLEO_GATEWAY__PLEO__SCOPES", SCOPES.join(",")),
            ("PLEO_GATEWAY__SESSION__STORE", "memory".into()),
            (
                "PLEO_GATEWAY__PROXY__UPSTREAM",
                format!("http://127.0.0.1:{app_port}"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(margin) = options.refresh_before_expiry {
            env.push((
                "PLEO_GATEWAY__PLEO__REFRESH_BEFORE_EXPIRY".into(),
                format!("{}ms", margin.as_millis()),
            ));
        }
        if options.otel {
            env.push((
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{otlp_port}"),
            ));
            env.push(("OTEL_SERVICE_NAME".into(), "gateway-under-test".into()));
        }
        env.extend(options.env.into_iter().map(|(k, v)| (k.to_owned(), v)));

        let mut child = Command::new(env!("CARGO_BIN_EXE_pleo-gateway"))
            // Only what the test gives: no PLEO_GATEWAY__* or OTEL_* of the machine.
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the pleo-gateway binary");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let sink = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().expect("output lock").push(line);
                }
            });
        }
        let mut stack = Stack {
            mock,
            tap,
            client_secret,
            gateway_url: Url::parse(&format!("http://127.0.0.1:{gateway_port}")).expect("url"),
            metrics_url: Url::parse(&format!("http://127.0.0.1:{metrics_port}/metrics"))
                .expect("url"),
            pleo_seen,
            app_seen,
            received,
            child,
            output,
            tasks: vec![mock_task, app_task, otlp_task],
        };
        stack.wait_until_serving().await;
        stack
    }

    async fn wait_until_serving(&mut self) {
        let health = self.gateway_url.join("/healthz").expect("url");
        let client = reqwest::Client::new();
        eventually("the gateway serves /healthz", PATIENCE, async || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the gateway exited ({status}):\n{}", self.output());
            }
            client
                .get(health.clone())
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// A browser with an empty cookie jar.
    pub fn browser(&self) -> Browser {
        Browser::new(self.gateway_url.clone())
    }

    /// Everything the gateway wrote to stdout and stderr so far, one line each.
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").join("\n")
    }

    /// The output lines that are JSON objects.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.output
            .lock()
            .expect("output lock")
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// `GET /metrics` on the metrics listener.
    pub async fn scrape(&self) -> String {
        let response = reqwest::get(self.metrics_url.clone())
            .await
            .expect("scrape /metrics");
        assert!(response.status().is_success());
        response.text().await.expect("metrics text")
    }

    /// SIGTERM, as Kubernetes stops a pod, and waits for the process to exit.
    pub async fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        eventually("the gateway exits after SIGTERM", PATIENCE, async || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        })
        .await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition (labels in any order;
/// the sample must have exactly these).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, found) = match series.split_once('{') {
                Some((metric, rest)) => (metric, parse_labels(rest.strip_suffix('}')?)),
                None => (series, Vec::new()),
            };
            let mut wanted: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            wanted.sort();
            (metric == name && found == wanted).then(|| value.parse().ok())?
        })
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = text
        .split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
        })
        .collect();
    labels.sort();
    labels
}
