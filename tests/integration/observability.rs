//! What an operator sees of the gateway: its Prometheus metrics, its OpenTelemetry traces and
//! its log lines — each taken from the released binary (see `observability/harness.rs`), and
//! none carrying a token, cookie, code, state or secret.

mod harness;

use std::time::Duration;

use reqwest::StatusCode;

use self::harness::{Options, ReceivedSpan, Stack, sample};
use crate::{
    at_rest::{contains, forms},
    support::{PATIENCE, SESSION_COOKIE, eventually, query_map, wait_until_refresh_due},
};

/// A login, two proxied Pleo calls (the second after Pleo revoked the token early, so it is
/// refreshed), an app page, a CSRF rejection and a replayed callback: every family counts
/// exactly these, with bounded labels, and says what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_logins_calls_refreshes_and_rejections() {
    let stack = Stack::start(Options::default()).await;
    let browser = stack.browser();
    browser.login().await;
    let first = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(first.status(), StatusCode::OK);
    let page = browser.send(browser.get("/reports/2024?tab=1")).await;
    assert_eq!(page.status(), StatusCode::OK);
    // Pleo ends the access token early: the gateway refreshes once and retries.
    stack.mock.expire_access_tokens();
    let retried = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(retried.status(), StatusCode::OK);
    let refused = browser.send(browser.post("/pleo/v2/employees")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let stranger = stack.browser();
    let replay = stranger
        .send(stranger.get("/auth/callback?state=made-up&code=made-up"))
        .await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);

    let text = stack.scrape().await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{text}"))
    };
    let http = |route, method, status| {
        value(
            "pleo_gateway_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(http("/auth/login", "GET", "302"), 1.0);
    assert_eq!(http("/auth/callback", "GET", "302"), 1.0);
    assert_eq!(http("/auth/callback", "GET", "400"), 1.0);
    assert_eq!(http("pleo", "GET", "200"), 2.0);
    assert_eq!(http("pleo", "POST", "403"), 1.0);
    assert_eq!(http("app", "GET", "200"), 1.0);
    assert_eq!(
        value(
            "pleo_gateway_http_request_duration_seconds_count",
            &[("route", "pleo")]
        ),
        3.0
    );

    assert_eq!(value("pleo_gateway_logins_started_total", &[]), 1.0);
    assert_eq!(value("pleo_gateway_logins_completed_total", &[]), 1.0);
    assert_eq!(
        value(
            "pleo_gateway_logins_failed_total",
            &[("reason", "invalid_state")]
        ),
        1.0
    );

    let refreshes = |outcome| {
        value(
            "pleo_gateway_token_refreshes_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(refreshes("success"), 1.0);
    for outcome in [
        "rejected",
        "transient",
        "waited",
        "lock_timeout",
        "reuse_avoided",
    ] {
        assert_eq!(
            refreshes(outcome),
            0.0,
            "{outcome} is exported before it happens"
        );
    }
    assert_eq!(
        value(
            "pleo_gateway_token_refresh_duration_seconds_count",
            &[("outcome", "success")]
        ),
        1.0
    );

    let pleo = |endpoint, class| {
        value(
            "pleo_gateway_pleo_requests_total",
            &[("endpoint", endpoint), ("status_class", class)],
        )
    };
    assert_eq!(
        pleo("token", "2xx"),
        2.0,
        "the code exchange and the refresh"
    );
    assert_eq!(pleo("introspect", "2xx"), 1.0);
    assert_eq!(pleo("api", "2xx"), 2.0);
    assert_eq!(pleo("api", "4xx"), 1.0, "the 401 that caused the refresh");
    assert_eq!(
        value(
            "pleo_gateway_pleo_request_duration_seconds_count",
            &[("endpoint", "api")]
        ),
        3.0
    );
    assert_eq!(
        value(
            "pleo_gateway_app_requests_total",
            &[("status_class", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        value("pleo_gateway_app_request_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        value(
            "pleo_gateway_csrf_rejections_total",
            &[("route", "pleo"), ("reason", "csrf_header_missing")]
        ),
        1.0
    );

    let store = |operation| {
        value(
            "pleo_gateway_store_operations_total",
            &[("operation", operation), ("outcome", "ok")],
        )
    };
    assert_eq!(store("create"), 1.0);
    assert_eq!(store("try_lock"), 1.0);
    assert_eq!(store("compare_and_set"), 1.0, "the refreshed pair stored");
    assert_eq!(store("unlock"), 1.0);
    assert!(
        value(
            "pleo_gateway_store_operation_duration_seconds_count",
            &[("operation", "create")]
        ) == 1.0
    );

    assert_eq!(value("pleo_gateway_websockets_open", &[]), 0.0);
    assert_eq!(
        value(
            "pleo_gateway_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("git_sha", "unknown")
            ]
        ),
        1.0
    );
    assert!(value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(value("process_open_fds", &[]) >= 3.0);
    assert!(value("process_cpu_seconds_total", &[]) >= 0.0);
    assert!(value("process_start_time_seconds", &[]) > 1.6e9);

    for family in [
        "pleo_gateway_http_requests_total",
        "pleo_gateway_token_refreshes_total",
        "pleo_gateway_token_refresh_duration_seconds",
        "pleo_gateway_store_operations_total",
        "pleo_gateway_pleo_requests_total",
        "pleo_gateway_app_requests_total",
        "pleo_gateway_logins_failed_total",
        "pleo_gateway_csrf_rejections_total",
        "pleo_gateway_websockets_open",
        "pleo_gateway_build_info",
        "process_cpu_seconds_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP"
        );
    }
    // Paths and queries never become labels.
    for raw in ["/v2/employees", "reports", "made-up"] {
        assert!(!text.contains(raw), "{raw} in the metrics:\n{text}");
    }
}

/// Access tokens live 2 s; a refresh is due 1 s after each is issued.
const SHORT_TTL: Duration = Duration::from_secs(2);

/// The caller (a trusted proxy) sends a `traceparent`; a Pleo call whose token is due is one
/// trace with the refresh in it, and both Pleo and the app receive the gateway's
/// `traceparent`. The spans reach the collector when the gateway is stopped (flushed at
/// shutdown, long before their export would be due).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxied_call_with_a_due_token_is_one_trace_with_its_refresh() {
    let mut stack = Stack::start(Options {
        access_token_ttl: SHORT_TTL,
        refresh_before_expiry: Some(SHORT_TTL / 2),
        otel: true,
        env: vec![
            ("PLEO_GATEWAY__SERVER__TRUSTED_PROXIES", "127.0.0.1".into()),
            // Nothing is exported before shutdown: what arrives was flushed by it.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
        ],
    })
    .await;
    let browser = stack.browser();
    browser.login().await;
    wait_until_refresh_due(stack.tap.issued()[0].issued_at, SHORT_TTL).await;

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = browser
        .send(
            browser
                .get("/pleo/v2/employees")
                .header("traceparent", format!("00-{caller_trace}-{caller_span}-01")),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stack.tap.issued().len(), 2, "the token was refreshed");
    let page = browser.send(browser.get("/dashboard")).await;
    assert_eq!(page.status(), StatusCode::OK);

    // What Pleo and the app were sent.
    let trace_of = |traceparent: &str| traceparent.split('-').nth(1).unwrap_or_default().to_owned();
    let pleo_seen = stack.pleo_seen.lock().unwrap().clone();
    let traceparent_at = |path: &str| {
        pleo_seen
            .iter()
            .filter(|(p, _)| p == path)
            .filter_map(|(_, headers)| headers.get("traceparent")?.to_str().ok().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let api = traceparent_at("/v2/employees");
    assert_eq!(api.len(), 1, "{pleo_seen:?}");
    assert_eq!(
        trace_of(&api[0]),
        caller_trace,
        "Pleo's call continues the caller's trace"
    );
    let token_calls = traceparent_at("/oauth/token");
    assert_eq!(
        token_calls.len(),
        2,
        "the code exchange and the refresh carry one"
    );
    assert_eq!(
        trace_of(&token_calls[1]),
        caller_trace,
        "the refresh is in the same trace"
    );
    let app_seen = stack.app_seen.lock().unwrap().clone();
    let app_traceparent = app_seen[0]
        .1
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("the app receives a traceparent")
        .to_owned();
    let app_trace = trace_of(&app_traceparent);
    assert_ne!(
        app_trace, caller_trace,
        "a request without one starts a trace of its own"
    );

    stack.stop().await;
    let spans: Vec<ReceivedSpan> =
        eventually("the spans reach the collector", PATIENCE, async || {
            let spans = stack.received.lock().unwrap().spans.clone();
            spans
                .iter()
                .any(|s| s.kind == 2 && s.trace_id == app_trace)
                .then_some(spans)
        })
        .await;
    let trace: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == caller_trace)
        .collect();
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "session.load",
        "refresh",
        "refresh.lock_wait",
        "refresh.token_request",
        "refresh.store_write",
        "pleo.request",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let server = trace
        .iter()
        .find(|s| s.kind == 2)
        .expect("a server span for the inbound request");
    assert_eq!(
        server.parent_span_id, caller_span,
        "a child of the caller's span"
    );
    assert_eq!(server.name, "GET pleo");
    assert!(
        server.attributes["http.response.status_code"].contains("200"),
        "{server:?}"
    );
    let clients: Vec<&&ReceivedSpan> = trace.iter().filter(|s| s.kind == 3).collect();
    assert_eq!(
        clients.len(),
        2,
        "the token request and the API call: {names:?}"
    );
    // Pleo got the client span's id as the parent of whatever it does.
    let api_span = api[0].split('-').nth(2).unwrap_or_default();
    assert!(
        clients.iter().any(|s| s.span_id == api_span),
        "{api_span} is not one of {clients:?}"
    );
    let app_spans: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace_id == app_trace)
        .map(|s| s.name.as_str())
        .collect();
    assert!(app_spans.contains(&"GET app"), "{app_spans:?}");
    assert!(app_spans.contains(&"app.request"), "{app_spans:?}");
}

/// JSON logs at debug with traces on: one access line per request with its request id, status,
/// route, session prefix and subject; the request id on the lines each request causes; a line
/// for the refresh's outcome — and, in the whole output and every exported span, no token,
/// cookie, code, state or client secret in any encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_name_each_request_and_never_a_secret() {
    let mut stack = Stack::start(Options {
        access_token_ttl: SHORT_TTL,
        refresh_before_expiry: Some(SHORT_TTL / 2),
        otel: true,
        env: vec![
            ("RUST_LOG", "debug".into()),
            ("PLEO_GATEWAY_LOG_FORMAT", "json".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    })
    .await;
    let browser = stack.browser();
    let (callback, trip) = browser.login_with("").await;
    assert_eq!(callback.status(), StatusCode::FOUND);
    let callback_id = request_id(&callback);
    wait_until_refresh_due(stack.tap.issued()[0].issued_at, SHORT_TTL).await;
    let call = browser
        .send(browser.get("/pleo/v2/employees?limit=5"))
        .await;
    assert_eq!(call.status(), StatusCode::OK);
    let call_id = request_id(&call);
    let page = browser.send(browser.get("/dashboard")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let cookie = browser.cookie(SESSION_COOKIE).expect("a session cookie");
    let logout = browser
        .send(browser.post("/auth/logout").header("X-CSRF", "1"))
        .await;
    assert_eq!(logout.status(), StatusCode::OK);
    // Five requests reached the gateway: login, callback, the Pleo call, the page, logout
    // (and the harness's readiness checks, left out here).
    let access = eventually("five access lines", PATIENCE, async || {
        let lines: Vec<serde_json::Value> = stack
            .json_lines()
            .into_iter()
            .filter(|l| {
                l["target"] == "pleo_gateway::access_log" && l["fields"]["route"] != "/healthz"
            })
            .collect();
        if lines.len() == 5 {
            Ok(lines)
        } else {
            Err(format!(
                "{} access lines in:\n{}",
                lines.len(),
                stack.output()
            ))
        }
    })
    .await;
    let routes: Vec<&str> = access
        .iter()
        .map(|l| l["fields"]["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        [
            "/auth/login",
            "/auth/callback",
            "pleo",
            "app",
            "/auth/logout"
        ]
    );
    let line = &access[2]["fields"];
    assert_eq!(line["request_id"], call_id.as_str());
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert_eq!(line["session"].as_str().map(str::len), Some(12), "{line}");
    assert!(
        line["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("urn:pleo:company:")),
        "{line}"
    );
    assert!(
        access[0]["fields"].get("session").is_none(),
        "no session yet"
    );

    let lines = stack.json_lines();
    let in_request = |id: &str, message: &str| {
        lines.iter().any(|l| {
            l["fields"]["message"] == message
                && l["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|span| span["request_id"] == id))
        })
    };
    assert!(
        in_request(&callback_id, "login completed"),
        "{}",
        stack.output()
    );
    assert!(in_request(&call_id, "token refresh"), "{}", stack.output());
    let refresh = lines
        .iter()
        .find(|l| l["fields"]["message"] == "token refresh")
        .unwrap();
    assert_eq!(refresh["fields"]["outcome"], "success");

    stack.stop().await;
    let mut secrets: Vec<(String, String)> = vec![
        ("session cookie".into(), cookie),
        ("client secret".into(), stack.client_secret.clone()),
    ];
    let callback_query = query_map(&trip.callback_url);
    secrets.push(("authorization code".into(), callback_query["code"].clone()));
    secrets.push(("login state".into(), callback_query["state"].clone()));
    for (i, pair) in stack.tap.issued().iter().enumerate() {
        secrets.push((format!("access token #{i}"), pair.access_token.clone()));
        secrets.push((format!("refresh token #{i}"), pair.refresh_token.clone()));
    }
    let output = stack.output();
    let exported: Vec<u8> = {
        let received = stack.received.lock().unwrap();
        assert!(!received.spans.is_empty(), "traces were exported");
        received.bodies.iter().flat_map(|b| b.to_vec()).collect()
    };
    for (what, secret) in &secrets {
        for (form, needle) in forms(secret) {
            assert!(
                !contains(output.as_bytes(), &needle),
                "{what} ({form}) in the log"
            );
            assert!(!contains(&exported, &needle), "{what} ({form}) in a span");
        }
    }
    assert!(!output.contains("limit=5"), "a query reached the log");
}

fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an X-Request-Id")
        .to_owned()
}
