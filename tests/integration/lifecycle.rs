//! The real binary's life as an orchestrator sees it: the `healthcheck` subcommand, and SIGTERM
//! (`server.shutdown_delay`: `/readyz` fails first while everything is still served, then the
//! listener closes, in-flight requests drain and the process exits 0).

use std::{
    collections::HashMap,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use pleo_gateway::mock_pleo::{MockClient, MockPleo, MockPleoConfig};
use reqwest::StatusCode;
use tokio::{net::TcpListener, time::Instant};
use url::Url;

use crate::support::{
    Browser, CLIENT_ID, PATIENCE, SCOPES, eventually, json_body,
    process::{Watchdog, free_port},
    random_b64,
};

const BINARY: &str = env!("CARGO_BIN_EXE_pleo-gateway");

/// The gateway binary on a free loopback port with the memory store, logging in against an
/// in-process mock Pleo; killed when dropped.
struct Gateway {
    child: Child,
    env: HashMap<String, String>,
    url: Url,
    _watchdog: Watchdog,
    _mock: tokio::task::JoinHandle<()>,
}

impl Gateway {
    async fn start() -> Self {
        pleo_gateway::telemetry::install_crypto_provider();
        let port = free_port(false);
        let mock_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock_url = format!("http://{}", mock_listener.local_addr().unwrap());
        let secret = random_b64(24);
        let mock = MockPleo::new(MockPleoConfig {
            clients: vec![MockClient {
                client_id: CLIENT_ID.into(),
                client_secret: Some(secret.clone()),
                redirect_uris: vec![format!("http://127.0.0.1:{port}/auth/callback")],
            }],
            auto_approve: true,
            ..MockPleoConfig::default()
        });
        let mock = tokio::spawn(async move {
            let _ = mock
                .serve(mock_listener, std::future::pending::<()>())
                .await;
        });
        // Only configuration the test needs: shutdown_delay keeps its default.
        let env: HashMap<String, String> = [
            ("SERVER__LISTEN", format!("127.0.0.1:{port}")),
            ("SERVER__PUBLIC_URL", format!("http://127.0.0.1:{port}")),
            ("SERVER__METRICS_LISTEN", "off".into()),
            ("PLEO__AUTH_URL", mock_url.clone()),
            ("PLEO__API_URL", mock_url),
            ("PLEO__CLIENT_ID", CLIENT_ID.into()),
            ("PLEO__CLIENT_SECRET", secret),
            ("PLEO__SCOPES", SCOPES.join(",")),
            ("SESSION__STORE", "memory".into()),
        ]
        .into_iter()
        .map(|(key, value)| (format!("PLEO_GATEWAY__{key}"), value))
        .collect();
        let child = Command::new(BINARY)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pleo-gateway");
        let watchdog = Watchdog::new(child.id(), None);
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let mut gateway = Gateway {
            child,
            env,
            url,
            _watchdog: watchdog,
            _mock: mock,
        };
        let health = gateway.url.join("/healthz").unwrap();
        eventually("the gateway to answer /healthz", PATIENCE, async || {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("pleo-gateway exited at start-up: {status}");
            }
            reqwest::get(health.clone())
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        gateway
    }

    /// `pleo-gateway healthcheck <args>` with the gateway's own configuration.
    fn healthcheck(&self, args: &[&str]) -> Output {
        Command::new(BINARY)
            .env_clear()
            .envs(&self.env)
            .arg("healthcheck")
            .args(args)
            .output()
            .expect("run pleo-gateway healthcheck")
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// SIGTERM: `/readyz` turns 503 ("draining") at once while logged-in requests are still served
/// for `server.shutdown_delay` (default 5 s); then the process exits 0. `healthcheck` follows
/// along: alive throughout, not ready while draining, failing once the process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_fails_readiness_first_keeps_serving_for_the_delay_then_exits_0() {
    let mut gateway = Gateway::start().await;
    let browser = Browser::new(gateway.url.clone());
    browser.login().await;
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    let alive = gateway.healthcheck(&[]);
    assert!(alive.status.success(), "{}", stderr(&alive));
    let ready = gateway.healthcheck(&["--ready"]);
    assert!(ready.status.success(), "{}", stderr(&ready));

    gateway.terminate();
    let signalled = Instant::now();
    let body = eventually("/readyz to fail after SIGTERM", PATIENCE, async || {
        let response = browser.send(browser.get("/readyz")).await;
        (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    let body = json_body(body).await;
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["status"], "draining", "{body}");

    // Still serving: a new connection, a logged-in Pleo call, the probes.
    let newcomer = Browser::new(gateway.url.clone());
    let login = newcomer.send(newcomer.get("/auth/login")).await;
    assert_eq!(login.status(), StatusCode::FOUND);
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(
        employees.status(),
        StatusCode::OK,
        "a request {:?} after SIGTERM, within the 5 s delay",
        signalled.elapsed()
    );
    let not_ready = gateway.healthcheck(&["--ready"]);
    assert!(!not_ready.status.success());
    assert!(
        stderr(&not_ready).contains("draining"),
        "{}",
        stderr(&not_ready)
    );
    let alive = gateway.healthcheck(&[]);
    assert!(alive.status.success(), "{}", stderr(&alive));
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "still running within the delay"
    );

    let status = eventually("the gateway to exit", PATIENCE, async || {
        gateway.child.try_wait().unwrap()
    })
    .await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(5),
        "exited {:?} after SIGTERM, before the 5 s shutdown_delay",
        signalled.elapsed()
    );
    let gone = gateway.healthcheck(&[]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("cannot connect"),
        "{}",
        stderr(&gone)
    );
}

/// `healthcheck --url` probes any URL (the mock Pleo, the demo app): non-200 is exit 1 with
/// the status; an invalid configuration without `--url` is exit 1 naming the problem.
#[test]
fn healthcheck_reports_what_is_wrong() {
    let output = Command::new(BINARY)
        .env_clear()
        .args(["healthcheck", "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("pleo.client_id"),
        "{}",
        stderr(&output)
    );

    let closed = free_port(false);
    let output = Command::new(BINARY)
        .env_clear()
        .args([
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{closed}/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot connect"),
        "{}",
        stderr(&output)
    );
}
