//! Traces: one trace per request across the gateway, Pleo and the app, refresh included.

use reqwest::StatusCode;

use super::{
    SHORT_TTL,
    harness::{Options, ReceivedSpan, Stack},
};
use crate::support::{PATIENCE, eventually, wait_until_refresh_due};

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
