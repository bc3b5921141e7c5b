//! Token refresh: once per session however many requests ask, the rotated pair persisted, and
//! the right verdict when Pleo says no or is away.

use std::time::Duration;

use reqwest::{StatusCode, header};
use tokio::time::Instant;

use crate::support::{
    Options, SESSION_COOKIE, StoreKind, TestEnv, bearer_seen_by_pleo, eventually, json_body,
    session_set_cookie, sha256_hex, wait_until_refresh_due,
};

/// Access tokens live 3 s; the 2 s margin is capped at half of that, so refresh is due at 1.5 s.
const TOKEN_TTL: Duration = Duration::from_secs(3);
const MARGIN: Duration = Duration::from_secs(2);

fn short_lived(store: StoreKind) -> Options {
    Options::new(store)
        .access_token_ttl(TOKEN_TTL)
        .refresh_before_expiry(MARGIN)
}

for_each_store! {
    /// Twenty requests inside the refresh margin cause exactly one refresh; the rotated pair is
    /// stored, which the second refresh proves (the old refresh token would be a reuse).
    async fn concurrent_requests_at_expiry_refresh_once_and_persist_the_rotated_pair(store) {
        let env = TestEnv::start(short_lived(store)).await;
        let browser = env.browser();
        browser.login().await;
        let logged_in = Instant::now();
        assert_eq!(bearer_seen_by_pleo(&browser).await, env.tap.issued()[0].access_token);
        assert_eq!(env.mock.stats().refresh_token_grants, 0, "fresh token: no refresh yet");

        wait_until_refresh_due(logged_in, TOKEN_TTL).await;
        let requests = (0..20).map(|_| async {
            let response = browser.send(browser.get("/pleo/v2/employees")).await;
            response.status()
        });
        let statuses = futures_util::future::join_all(requests).await;
        let refreshed = Instant::now();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "every request succeeds: {statuses:?}"
        );
        let stats = env.mock.stats();
        assert_eq!(stats.refresh_token_grants, 1, "one refresh for twenty requests");
        assert_eq!(stats.reuse_detections, 0);
        assert_eq!(stats.refresh_failures, 0);
        assert_eq!(stats.api_unauthorized, 0, "no request went out with a stale token");
        let issued = env.tap.issued();
        assert_eq!(issued.len(), 2);
        assert_eq!(bearer_seen_by_pleo(&browser).await, issued[1].access_token);

        // Only possible if the store holds the rotated refresh token: the first one is spent.
        wait_until_refresh_due(refreshed, TOKEN_TTL).await;
        let response = browser.send(browser.get("/pleo/v2/employees")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let stats = env.mock.stats();
        assert_eq!(stats.refresh_token_grants, 2, "a second rotation");
        assert_eq!(stats.reuse_detections, 0, "the spent refresh token was never sent again");
        assert_eq!(stats.refresh_failures, 0);
        assert_eq!(bearer_seen_by_pleo(&browser).await, env.tap.issued()[2].access_token);
    }

    /// `invalid_grant` on refresh ends the session: 401 `session_ended`, and it stays ended.
    async fn invalid_grant_on_refresh_ends_the_session(store) {
        let env = TestEnv::start(short_lived(store)).await;
        let browser = env.browser();
        browser.login().await;
        let logged_in = Instant::now();
        env.mock.revoke_all();

        wait_until_refresh_due(logged_in, TOKEN_TTL).await;
        let response = browser.send(browser.get("/pleo/v2/employees")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let cleared = session_set_cookie(&response).expect("the dead session's cookie is expired");
        assert_eq!(cleared.max_age, Some(0));
        let body = json_body(response).await;
        assert_eq!(body["error"], "session_ended");
        assert!(body["login_url"].as_str().is_some_and(|u| u.starts_with("/auth/login")));
        let stats = env.mock.stats();
        assert_eq!(stats.refresh_failures, 1, "the refresh was tried once");
        assert_eq!(stats.refresh_token_grants, 0);

        let info = browser.send(browser.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
        // Ended for good: no second attempt at the dead grant.
        let again = browser.send(browser.get("/pleo/v2/employees")).await;
        assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(env.mock.stats().token_requests, 2, "code exchange + one refresh");
    }

    /// A 503 from the token endpoint is transient: 503 with `Retry-After`, the session and its
    /// cookie survive, and the next request after recovery refreshes and succeeds.
    async fn token_endpoint_outage_is_503_and_keeps_the_session(store) {
        let env = TestEnv::start(short_lived(store)).await;
        let browser = env.browser();
        browser.login().await;
        let logged_in = Instant::now();
        let cookie = browser.cookie(SESSION_COOKIE).expect("session cookie");
        env.mock.set_token_failure(Some(503));

        wait_until_refresh_due(logged_in, TOKEN_TTL).await;
        let response = browser.send(browser.get("/pleo/v2/employees")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = response.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry_after >= 1);
        assert!(session_set_cookie(&response).is_none(), "the cookie is left alone");
        assert_eq!(json_body(response).await["error"], "pleo_unavailable");
        assert_eq!(browser.cookie(SESSION_COOKIE), Some(cookie));
        let info = browser.send(browser.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::OK, "the session survives");

        env.mock.set_token_failure(None);
        // The gateway backs off before asking Pleo again; a client that honours Retry-After
        // gets through after it.
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let response = browser.send(browser.get("/pleo/v2/employees")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let stats = env.mock.stats();
        assert_eq!(stats.refresh_token_grants, 1);
        assert_eq!(stats.reuse_detections, 0);
    }
}

/// Pleo answers 401 to a token the gateway believed valid (revoked early): the gateway refreshes
/// once and retries once, and the caller never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pleo_401_on_a_valid_looking_token_refreshes_and_retries_once() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    env.mock.expire_access_tokens();

    let response = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let stats = env.mock.stats();
    assert_eq!(stats.api_unauthorized, 1, "the first attempt was refused");
    assert_eq!(stats.refresh_token_grants, 1);
    assert_eq!(stats.reuse_detections, 0);

    // With the grant itself revoked the retry cannot help: the session ends, no loop.
    env.mock.revoke_all();
    let response = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_body(response).await["error"], "session_ended");
    let stats = env.mock.stats();
    assert_eq!(stats.api_unauthorized, 2);
    assert_eq!(
        stats.token_requests, 3,
        "exchange, one refresh, one refused refresh"
    );
}

/// The retry after Pleo's 401 is the same request with the new bearer: its method, path, query,
/// headers and body as the first attempt sent them (the pool hands the headers back).
#[tokio::test]
async fn the_retry_after_a_401_repeats_the_request_with_the_new_token() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    env.mock.expire_access_tokens();

    let request = browser
        .post("/pleo/echo/expenses?page=2")
        .header("X-CSRF", "1")
        .header("x-custom-one", "kept")
        .header("x-custom-two", "also kept")
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"amount":12}"#);
    let response = browser.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let stats = env.mock.stats();
    assert_eq!(stats.api_unauthorized, 1, "the first attempt was refused");
    assert_eq!(stats.refresh_token_grants, 1);
    let echo = json_body(response).await;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/expenses");
    assert_eq!(echo["query"], "page=2");
    assert_eq!(echo["headers"]["x-custom-one"], "kept");
    assert_eq!(echo["headers"]["x-custom-two"], "also kept");
    assert_eq!(echo["headers"]["content-type"], "application/json");
    assert_eq!(echo["headers"]["content-length"], "13");
    assert_eq!(echo["body_sha256"], sha256_hex(br#"{"amount":12}"#));
    let latest = env.tap.issued()[1].access_token.clone();
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {latest}"),
        "one bearer, the new one"
    );
}

/// Two replicas share Redis; a burst of requests hitting both at refresh time still costs one
/// refresh, because the lock lives in the store, not in one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_two_replicas_refresh_once() {
    let mut env = TestEnv::start(short_lived(StoreKind::Redis)).await;
    let replica = env.add_replica().await;
    let on_first = env.browser();
    on_first.login().await;
    let logged_in = Instant::now();
    let on_second = env.browser_like(&on_first, replica);
    let info = on_second.send(on_second.get("/auth/session")).await;
    assert_eq!(
        info.status(),
        StatusCode::OK,
        "the session is shared through Redis"
    );

    wait_until_refresh_due(logged_in, TOKEN_TTL).await;
    let requests = (0..20).map(|i| {
        let browser = if i % 2 == 0 { &on_first } else { &on_second };
        async move {
            browser
                .send(browser.get("/pleo/v2/employees"))
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every request succeeds: {statuses:?}"
    );
    let stats = env.mock.stats();
    assert_eq!(
        stats.refresh_token_grants, 1,
        "one refresh across both replicas"
    );
    assert_eq!(stats.reuse_detections, 0);
    assert_eq!(stats.refresh_failures, 0);
    let latest = env.tap.issued()[1].access_token.clone();
    assert_eq!(bearer_seen_by_pleo(&on_first).await, latest);
    assert_eq!(bearer_seen_by_pleo(&on_second).await, latest);
}

/// With `pleo.proactive_refresh`, a session a request used recently is refreshed in the
/// background when its token comes within twice the margin of expiring — before any request
/// would have to wait for it — and a session nobody used is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proactive_refresh_renews_active_sessions_before_requests_need_it() {
    const LIFETIME: Duration = Duration::from_secs(8);
    let env = TestEnv::start(
        Options::new(StoreKind::Redis)
            .access_token_ttl(LIFETIME)
            .refresh_before_expiry(MARGIN)
            .env("PLEO__PROACTIVE_REFRESH", "true"),
    )
    .await;
    let active = env.browser();
    active.login().await;
    let idle = env.browser();
    idle.login().await;
    let issued = env.tap.issued()[0].issued_at;
    let response = active.send(active.get("/pleo/v2/employees")).await;
    assert_eq!(response.status(), StatusCode::OK);

    // Background refresh is due at 8 s - 2 × 2 s = 4 s; a request-driven one only at 6 s.
    let request_driven_at = issued + LIFETIME - MARGIN;
    eventually(
        "a background refresh before a request would have needed one",
        request_driven_at.saturating_duration_since(Instant::now()),
        async || env.mock.stats().refresh_token_grants >= 1,
    )
    .await;
    tokio::time::sleep_until(request_driven_at + Duration::from_millis(300)).await;
    let stats = env.mock.stats();
    assert_eq!(
        stats.refresh_token_grants, 1,
        "only the used session: {stats:?}"
    );
    assert_eq!(stats.reuse_detections, 0);

    // The request that would have waited for a refresh finds a fresh token.
    let response = active.send(active.get("/pleo/v2/employees")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(env.mock.stats().refresh_token_grants, 1);
}
