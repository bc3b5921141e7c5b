//! Liveness and readiness.

use reqwest::StatusCode;

use crate::support::{
    Browser, Options, PATIENCE, RedisServer, SESSION_COOKIE, StoreKind, TestEnv, eventually,
    json_body,
};

/// `/readyz`'s status and JSON body.
async fn readyz(browser: &Browser) -> (StatusCode, serde_json::Value) {
    let response = browser.send(browser.get("/readyz")).await;
    (response.status(), json_body(response).await)
}

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
/// says it is not ready: start-up is not over until the store has answered once.
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
    assert_eq!(body["status"], "starting");
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

/// A Redis outage after start-up keeps the replica ready (every replica shares the Redis, so
/// dropping them all would turn a partial outage into a total one): `/readyz` stays 200 and
/// reports the store's health; a session this replica has cached is still served (its Pleo
/// calls work), one it has not is a 503 with `Retry-After`, and logins still start. When Redis
/// is back, the store is reported reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_stays_200_through_a_redis_outage_and_reports_the_store() {
    let mut redis = RedisServer::start_persistent().await;
    let env = TestEnv::start(Options::new(StoreKind::Redis).redis_url(&redis.url())).await;
    let browser = env.browser();
    let (status, body) = readyz(&browser).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["store_status"], "reachable");
    browser.login().await;

    redis.stop().await;
    let (status, body) = readyz(&browser).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still ready during the outage: {body}"
    );
    assert_eq!(body["ready"], true);
    assert_eq!(body["status"], "serving");
    assert_ne!(body["store_status"], "reachable", "{body}");
    // What this replica can answer without the store, it answers: the cached session's calls.
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    // A session it has not seen needs the store: 503 with Retry-After, never a logout.
    let stranger = env.browser();
    stranger.set_cookie(SESSION_COOKIE, &"B".repeat(43));
    let session = stranger.send(stranger.get("/auth/session")).await;
    assert_eq!(session.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(session.headers().contains_key(reqwest::header::RETRY_AFTER));
    let login = env.browser().send(env.browser().get("/auth/login")).await;
    assert_eq!(login.status(), StatusCode::FOUND);

    redis.restart().await;
    eventually("/readyz to see the store again", PATIENCE, async || {
        readyz(&browser).await.1["store_status"] == "reachable"
    })
    .await;
    let session = browser.send(browser.get("/auth/session")).await;
    assert_eq!(
        session.status(),
        StatusCode::OK,
        "the session outlived the outage"
    );
}

/// A replica that has never reached its Redis (a wrong URL or password, a network policy)
/// stays unready, so a bad rollout stops at its first pod; it turns ready once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_turns_200_once_redis_first_answers() {
    let mut redis = RedisServer::start().await;
    redis.stop().await;
    let env = TestEnv::start(Options::new(StoreKind::Redis).redis_url(&redis.url())).await;
    let browser = env.browser();
    let (status, body) = readyz(&browser).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "starting");

    redis.restart().await;
    let body = eventually("/readyz to turn 200", PATIENCE, async || {
        let (status, body) = readyz(&browser).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(body["status"], "serving");
    assert_eq!(body["store_status"], "reachable");
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
