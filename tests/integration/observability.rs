//! What an operator sees of the gateway: its Prometheus metrics, its OpenTelemetry traces and
//! its log lines — each taken from the released binary (see `observability/harness.rs`), and
//! none carrying a token, cookie, code, state or secret.

mod harness;
mod logs;
mod traces;

use std::time::Duration;

use reqwest::StatusCode;

use self::harness::{Options, Stack, sample};

/// Access tokens live 2 s; a refresh is due 1 s after each is issued.
const SHORT_TTL: Duration = Duration::from_secs(2);

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

fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an X-Request-Id")
        .to_owned()
}
