//! Background access (`[background]`): the app's server side calls Pleo as a company with a
//! service token and `X-Pleo-Subject` on the internal listener, using the company's newest
//! grant — the very session record its last login created, so refreshes stay exactly-once.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;
use url::Url;

use crate::support::{
    Browser, Options, StoreKind, TestEnv, bearer_seen_by_pleo, json_body, random_b64,
    wait_until_refresh_due,
};

/// The service token of these tests (and a second one, for rotation).
const SERVICE_TOKEN: &str = "service-token-for-the-integration-tests-0123456789";
const OTHER_TOKEN: &str = "second-service-token-for-rotation-0123456789abcdef";

fn background(store: StoreKind) -> Options {
    Options::new(store)
        .env("BACKGROUND__ENABLED", "true")
        .env(
            "BACKGROUND__SERVICE_TOKENS",
            &format!("{SERVICE_TOKEN},{OTHER_TOKEN}"),
        )
        // Every replica must sign and verify alike.
        .env("IDENTITY__SIGNING_KEYS", &random_b64(32))
}

/// A background call: `GET {internal}{path}` with `token` and `subject`.
async fn call(
    internal: &Url,
    path: &str,
    token: Option<&str>,
    subject: Option<&str>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(internal.join(path).unwrap());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(subject) = subject {
        request = request.header("X-Pleo-Subject", subject);
    }
    request.send().await.unwrap()
}

/// The bearer token Pleo saw on a background call for `subject`.
async fn background_bearer(env: &TestEnv, subject: &str) -> String {
    let response = call(
        &env.internal_url,
        "/pleo/echo/job",
        Some(SERVICE_TOKEN),
        Some(subject),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_body(response).await;
    assert!(echo["headers"].get("cookie").is_none(), "{echo}");
    assert!(echo["headers"].get("x-pleo-subject").is_none(), "{echo}");
    echo["headers"]["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap()
        .to_owned()
}

async fn subject_of(browser: &Browser) -> String {
    let info = json_body(browser.send(browser.get("/auth/session")).await).await;
    info["subject"].as_str().expect("a subject").to_owned()
}

async fn refused(response: reqwest::Response, status: StatusCode, code: &str) -> serde_json::Value {
    assert_eq!(response.status(), status);
    let body = json_body(response).await;
    assert_eq!(body["error"], code, "{body}");
    body
}

for_each_store! {
    /// A background call acts as the company's newest login; an older login keeps its own
    /// session (and token) for its browser.
    async fn a_service_token_acts_as_the_companys_newest_grant(store) {
        let env = TestEnv::start(background(store)).await;
        let first = env.browser();
        first.login().await;
        let subject = subject_of(&first).await;
        assert_eq!(background_bearer(&env, &subject).await, bearer_seen_by_pleo(&first).await);

        let second = env.browser();
        second.login().await;
        let newest = bearer_seen_by_pleo(&second).await;
        assert_ne!(newest, bearer_seen_by_pleo(&first).await);
        assert_eq!(background_bearer(&env, &subject).await, newest, "the slot moved");
        // Either configured token works (rotation).
        let rotated = call(&env.internal_url, "/pleo/echo/job", Some(OTHER_TOKEN), Some(&subject)).await;
        assert_eq!(rotated.status(), StatusCode::OK);
        let info = first.send(first.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::OK, "the older session is untouched");
    }

    /// Without the service token nothing is served: missing or wrong is 401, a subject nobody
    /// logged in for is 401 naming it, a malformed subject 400.
    async fn the_service_credential_is_required(store) {
        let env = TestEnv::start(background(store)).await;
        let browser = env.browser();
        browser.login().await;
        let subject = subject_of(&browser).await;
        let internal = &env.internal_url;
        let api_before = env.mock.stats().api_requests;
        refused(call(internal, "/pleo/echo/x", None, Some(&subject)).await, StatusCode::UNAUTHORIZED, "credentials_missing").await;
        refused(call(internal, "/pleo/echo/x", Some("wrong-token"), Some(&subject)).await, StatusCode::UNAUTHORIZED, "invalid_service_token").await;
        let almost = &SERVICE_TOKEN[..SERVICE_TOKEN.len() - 1];
        refused(call(internal, "/pleo/echo/x", Some(almost), Some(&subject)).await, StatusCode::UNAUTHORIZED, "invalid_service_token").await;
        refused(call(internal, "/pleo/echo/x", Some(SERVICE_TOKEN), None).await, StatusCode::BAD_REQUEST, "bad_request").await;
        refused(call(internal, "/pleo/echo/x", Some(SERVICE_TOKEN), Some("urn:pleo:user:1")).await, StatusCode::BAD_REQUEST, "bad_request").await;
        let nobody = "urn:pleo:company:00000000-0000-0000-0000-0000000000ff";
        let body = refused(call(internal, "/pleo/echo/x", Some(SERVICE_TOKEN), Some(nobody)).await, StatusCode::UNAUTHORIZED, "no_background_grant").await;
        assert!(body["message"].as_str().unwrap().contains(nobody), "{body}");
        assert_eq!(env.mock.stats().api_requests, api_before, "Pleo was never called");
        // The public listener knows nothing of service tokens.
        let public = call(&env.gateway_url, "/pleo/echo/x", Some(SERVICE_TOKEN), Some(&subject)).await;
        refused(public, StatusCode::UNAUTHORIZED, "not_authenticated").await;
    }

    /// Logging out ends the browser session but not the background grant; disconnecting
    /// (which revokes the installation at Pleo) removes it.
    async fn logout_keeps_the_background_grant_and_disconnect_removes_it(store) {
        let env = TestEnv::start(background(store)).await;
        let browser = env.browser();
        browser.login().await;
        let subject = subject_of(&browser).await;
        let bearer = bearer_seen_by_pleo(&browser).await;
        let cookie_line = browser.cookie_header().unwrap();
        let logout = browser.send(browser.post("/auth/logout").header("X-CSRF", "1")).await;
        assert_eq!(logout.status(), StatusCode::OK);
        let replayed = reqwest::Client::new()
            .get(env.gateway_url.join("/auth/session").unwrap())
            .header("Cookie", &cookie_line)
            .send()
            .await
            .unwrap();
        assert_eq!(replayed.status(), StatusCode::UNAUTHORIZED, "the old cookie is logged out");
        assert_eq!(background_bearer(&env, &subject).await, bearer, "the grant lives on");

        let again = env.browser();
        again.login().await;
        let disconnect = again.send(again.post("/auth/disconnect").header("X-CSRF", "1")).await;
        assert_eq!(disconnect.status(), StatusCode::OK);
        let body = refused(
            call(&env.internal_url, "/pleo/echo/x", Some(SERVICE_TOKEN), Some(&subject)).await,
            StatusCode::UNAUTHORIZED,
            "no_background_grant",
        )
        .await;
        assert!(body["message"].as_str().unwrap().contains(&subject), "{body}");
    }

    /// A grant Pleo rejects is deleted; the call and later ones get 401 naming the subject.
    async fn a_grant_pleo_rejects_is_gone_and_named(store) {
        let env = TestEnv::start(background(store)).await;
        let browser = env.browser();
        browser.login().await;
        let subject = subject_of(&browser).await;
        env.mock.revoke_all();
        for attempt in ["the call that finds out", "a later call"] {
            let body = refused(
                call(&env.internal_url, "/pleo/echo/x", Some(SERVICE_TOKEN), Some(&subject)).await,
                StatusCode::UNAUTHORIZED,
                "no_background_grant",
            )
            .await;
            assert!(body["message"].as_str().unwrap().contains(&subject), "{attempt}: {body}");
        }
        assert_eq!(env.mock.stats().refresh_token_grants, 0);
    }
}

/// With background access off, a service token is just a wrong credential.
#[tokio::test]
async fn service_tokens_are_refused_while_background_access_is_off() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    let subject = subject_of(&browser).await;
    refused(
        call(
            &env.internal_url,
            "/pleo/echo/x",
            Some(SERVICE_TOKEN),
            Some(&subject),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_service_token",
    )
    .await;
}

/// Three replicas, one company: browser requests on every replica's public listener and
/// background calls on every replica's internal listener arrive together just as the token
/// enters its refresh margin. All succeed, and each expiry costs Pleo exactly one refresh and no
/// reuse of a rotated refresh token (which would revoke the grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_background_and_browser_calls_at_expiry_refresh_once() {
    const TOKEN_TTL: Duration = Duration::from_secs(4);
    let test = async {
        let mut env = TestEnv::start(
            background(StoreKind::Redis)
                .access_token_ttl(TOKEN_TTL)
                .refresh_before_expiry(Duration::from_secs(2)),
        )
        .await;
        let (second, second_internal) = env.add_replica_with_internal(&[]).await;
        let (third, third_internal) = env.add_replica_with_internal(&[]).await;
        let first = env.browser();
        first.login().await;
        let subject = subject_of(&first).await;
        let browsers = [
            env.browser_like(&first, second),
            env.browser_like(&first, third),
            first,
        ];
        let internals = [env.internal_url.clone(), second_internal, third_internal];
        let client = reqwest::Client::new();
        for cycle in 1..=2u64 {
            let current = env.tap.issued().last().cloned().expect("a token pair");
            wait_until_refresh_due(current.issued_at, TOKEN_TTL).await;
            let started = Instant::now();
            let requests = (0..240).map(|i| {
                let (browsers, internals, client, subject) =
                    (&browsers, &internals, &client, &subject);
                async move {
                    if i % 2 == 0 {
                        let browser = &browsers[i % 3];
                        browser
                            .send(browser.get("/pleo/v2/employees"))
                            .await
                            .status()
                    } else {
                        client
                            .get(internals[i % 3].join("/pleo/v2/employees").unwrap())
                            .bearer_auth(SERVICE_TOKEN)
                            .header("X-Pleo-Subject", subject.as_str())
                            .send()
                            .await
                            .unwrap()
                            .status()
                    }
                }
            });
            let statuses = futures_util::future::join_all(requests).await;
            let failed: Vec<(usize, StatusCode)> = statuses
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, s)| *s != StatusCode::OK)
                .collect();
            assert!(failed.is_empty(), "cycle {cycle}: failed: {failed:?}");
            let stats = env.mock.stats();
            assert_eq!(
                stats.refresh_token_grants, cycle,
                "cycle {cycle}: {stats:?}"
            );
            assert_eq!(stats.reuse_detections, 0, "cycle {cycle}: {stats:?}");
            assert_eq!(stats.api_unauthorized, 0, "cycle {cycle}: {stats:?}");
            eprintln!(
                "cycle {cycle}: 240 mixed calls on 3 replicas in {:?}",
                started.elapsed()
            );
        }
        let latest = env.tap.issued().last().cloned().unwrap();
        assert_eq!(background_bearer(&env, &subject).await, latest.access_token);
    };
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

/// `pleo-gateway grants list` shows the company's grant, `grants revoke` removes it (the
/// browser session stays), and revoking again fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_listed_and_revoked_from_the_command_line() {
    let env = TestEnv::start(background(StoreKind::Redis)).await;
    let browser = env.browser();
    browser.login().await;
    let subject = subject_of(&browser).await;
    let grants = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pleo-gateway"))
            .env_clear()
            .envs(env.config_env())
            .arg("grants")
            .args(args)
            .output()
            .expect("run pleo-gateway grants")
    };
    let listed = grants(&["list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&subject))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.ends_with("live"), "{line}");

    let revoked = grants(&["revoke", &subject]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    refused(
        call(
            &env.internal_url,
            "/pleo/echo/x",
            Some(SERVICE_TOKEN),
            Some(&subject),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "no_background_grant",
    )
    .await;
    assert_eq!(
        browser.send(browser.get("/auth/session")).await.status(),
        StatusCode::OK
    );
    assert!(!String::from_utf8_lossy(&grants(&["list"]).stdout).contains(&subject));
    let again = grants(&["revoke", &subject]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no background grant"));
}

/// The real binary with debug logging on both listeners: a login, background calls with the
/// right token and with wrong ones. Neither the service token nor a guess at it appears in
/// anything it logged, while the log does show the calls happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_token_never_appears_in_logs() {
    use pleo_gateway::mock_pleo::{MockClient, MockPleo, MockPleoConfig};
    use std::process::{Command, Stdio};

    use crate::support::{CLIENT_ID, SCOPES, process::free_port, wait::PATIENCE};

    let (port, internal_port) = (free_port(false), free_port(false));
    let public = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let internal = Url::parse(&format!("http://127.0.0.1:{internal_port}")).unwrap();
    let secret = random_b64(24);
    let mock = MockPleo::new(MockPleoConfig {
        clients: vec![MockClient {
            client_id: CLIENT_ID.into(),
            client_secret: Some(secret.clone()),
            redirect_uris: vec![format!("{public}auth/callback")],
        }],
        auto_approve: true,
        ..MockPleoConfig::default()
    });
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_url = format!("http://{}", mock_listener.local_addr().unwrap());
    tokio::spawn(mock.serve(mock_listener, std::future::pending()));
    let guess = "service-token-for-the-integration-tests-0123456788";
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_pleo-gateway"))
        .env_clear()
        .env("RUST_LOG", "debug")
        .envs([
            ("PLEO_GATEWAY__SERVER__LISTEN", format!("127.0.0.1:{port}")),
            (
                "PLEO_GATEWAY__SERVER__PUBLIC_URL",
                public.as_str().trim_end_matches('/').to_owned(),
            ),
            (
                "PLEO_GATEWAY__SERVER__INTERNAL_LISTEN",
                format!("127.0.0.1:{internal_port}"),
            ),
            ("PLEO_GATEWAY__SERVER__METRICS_LISTEN", "off".into()),
            ("PLEO_GATEWAY__SERVER__AUTH_RATE_PER_CLIENT", "off".into()),
            ("PLEO_GATEWAY__PLEO__AUTH_URL", mock_url.clone()),
            ("PLEO_GATEWAY__PLEO__API_URL", mock_url.clone()),
            ("PLEO_GATEWAY__PLEO__CLIENT_ID", CLIENT_ID.into()),
            ("PLEO_GATEWAY__PLEO__CLIENT_SECRET", secret),
            ("PLEO_GATEWAY__PLEO__SCOPES", SCOPES.join(",")),
            ("PLEO_GATEWAY__SESSION__STORE", "memory".into()),
            ("PLEO_GATEWAY__BACKGROUND__ENABLED", "true".into()),
            (
                "PLEO_GATEWAY__BACKGROUND__SERVICE_TOKENS",
                SERVICE_TOKEN.into(),
            ),
        ])
        .stdout(logs.reopen().unwrap())
        .stderr(logs.reopen().unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("start pleo-gateway");
    let watchdog = crate::support::process::Watchdog::new(gateway.id(), None);
    crate::support::eventually("the gateway to listen", PATIENCE, async || {
        tokio::net::TcpStream::connect(("127.0.0.1", internal_port))
            .await
            .is_ok()
    })
    .await;

    let browser = Browser::new(public.clone());
    browser.login().await;
    let subject = subject_of(&browser).await;
    let ok = call(
        &internal,
        "/pleo/echo/job",
        Some(SERVICE_TOKEN),
        Some(&subject),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    for token in [guess, SERVICE_TOKEN] {
        let wrong_subject = "urn:pleo:company:00000000-0000-0000-0000-0000000000ff";
        let _ = call(
            &internal,
            "/pleo/echo/job",
            Some(token),
            Some(wrong_subject),
        )
        .await;
        let _ = call(&public, "/pleo/echo/job", Some(token), Some(&subject)).await;
    }
    let _ = call(&internal, "/pleo/echo/job", Some(guess), Some(&subject)).await;
    let _ = gateway.kill();
    let _ = gateway.wait();
    drop(watchdog);

    let logged = std::fs::read_to_string(logs.path()).unwrap();
    assert!(
        logged.contains("background grant moved to the newest login"),
        "the log shows what happened: {logged}"
    );
    assert!(
        logged.contains("internal_background"),
        "requests on the internal listener have access lines: {logged}"
    );
    for secret in [SERVICE_TOKEN, guess, &SERVICE_TOKEN[..24]] {
        assert!(!logged.contains(secret), "{secret} was logged:\n{logged}");
    }
}
