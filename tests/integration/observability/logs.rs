//! Logs: an access line per request, the request id on every line, and never a secret.

use reqwest::StatusCode;

use super::{
    SHORT_TTL,
    harness::{Options, Stack},
    request_id,
};
use crate::{
    at_rest::{contains, forms},
    support::{PATIENCE, SESSION_COOKIE, eventually, query_map, wait_until_refresh_due},
};

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
