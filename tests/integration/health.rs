//! Liveness and readiness.

use reqwest::StatusCode;

use crate::support::{Options, SESSION_COOKIE, StoreKind, TestEnv, json_body};

/// `/healthz` is 200 whenever the process serves; `/readyz` is 200 when Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_and_readyz_are_200_with_redis_reachable() {
    let env = TestEnv::start(Options::new(StoreKind::Redis)).await;
    let browser = env.browser();
    let health = browser.send(browser.get("/healthz")).await;
    assert_eq!(health.status(), StatusCode::OK);

    let ready = browser.send(browser.get("/readyz")).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body = json_body(ready).await;
    assert_eq!(body["ready"], true);
    assert_eq!(body["store"], "redis");
}

/// With Redis unreachable the gateway still starts (the store connects lazily), is alive, and
/// says it is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_is_503_when_redis_is_unreachable() {
    let env = TestEnv::start(Options::new(StoreKind::Redis).redis_url("redis://127.0.0.1:1")).await;
    let browser = env.browser();
    let health = browser.send(browser.get("/healthz")).await;
    assert_eq!(health.status(), StatusCode::OK, "alive even without Redis");

    let ready = browser.send(browser.get("/readyz")).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json_body(ready).await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["store"], "redis");

    // Requests that need the store are a 503 with Retry-After, never a logout; starting a
    // login needs none.
    // A cookie shaped like a session id, so the store must be asked about it.
    browser.set_cookie(SESSION_COOKIE, &"A".repeat(43));
    let session = browser.send(browser.get("/auth/session")).await;
    assert_eq!(session.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(session.headers().contains_key(reqwest::header::RETRY_AFTER));
    let login = browser.send(browser.get("/auth/login")).await;
    assert_eq!(login.status(), StatusCode::FOUND);
}

/// Malformed requests to the gateway's own routes get the gateway's JSON error format, not a
/// framework's plain-text body: a query that does not parse, a wrong method, an unknown route.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_get_json_errors() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    for (request, status, code) in [
        (
            browser.get("/auth/callback?state=a&state=b&code=c"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            browser.post("/auth/session"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            browser.get("/auth/nope"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (browser.get("/pleo"), StatusCode::NOT_FOUND, "not_found"),
    ] {
        let response = browser.send(request).await;
        assert_eq!(response.status(), status);
        let body = json_body(response).await;
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}
