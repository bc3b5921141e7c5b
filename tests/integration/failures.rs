//! When Pleo's token endpoint or Redis fails, or a client gives up mid-request: clear statuses
//! (503 with `Retry-After`), no panic, no hang, and never a logout that the failure did not
//! force.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{StatusCode, header};
use tokio::time::Instant;

use crate::support::{
    Browser, Options, PATIENCE, RedisServer, SESSION_COOKIE, StoreKind, TestEnv,
    bearer_seen_by_pleo, eventually, json_body, session_set_cookie, wait_until_refresh_due,
};

/// Access tokens live 4 s; a refresh is due 2 s after each is issued.
const TOKEN_TTL: Duration = Duration::from_secs(4);
const MARGIN: Duration = Duration::from_secs(2);

fn short_lived(store: StoreKind) -> Options {
    Options::new(store)
        .access_token_ttl(TOKEN_TTL)
        .refresh_before_expiry(MARGIN)
}

/// What a caller saw, with the parts the failure rules are about.
#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    /// `Retry-After` in seconds, when present.
    retry_after: Option<u64>,
    /// Whether the response carried any `Set-Cookie` for the session cookie.
    touched_cookie: bool,
    /// The `error` code of a gateway error body.
    error: Option<String>,
    took: Duration,
}

async fn probe(browser: &Browser, path: &str) -> Outcome {
    let started = Instant::now();
    let response = browser.send(browser.get(path)).await;
    let took = started.elapsed();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let touched_cookie = session_set_cookie(&response).is_some();
    let body = response.bytes().await.unwrap_or_default();
    let error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|json| json["error"].as_str().map(str::to_owned));
    Outcome {
        status,
        retry_after,
        touched_cookie,
        error,
        took,
    }
}

/// `count` concurrent [`probe`]s spread over `browsers`.
async fn probe_burst(browsers: &[&Browser], count: usize, path: &str) -> Vec<Outcome> {
    let probes = (0..count).map(|i| probe(browsers[i % browsers.len()], path));
    futures_util::future::join_all(probes).await
}

/// A 503 that keeps the session: `Retry-After`, no `Set-Cookie`.
/// The longest `Retry-After` among `outcomes`.
fn retry_after(outcomes: &[Outcome]) -> Duration {
    Duration::from_secs(
        outcomes
            .iter()
            .filter_map(|o| o.retry_after)
            .max()
            .unwrap_or(0),
    )
}

fn assert_retryable_503(outcome: &Outcome, what: &str) {
    assert_eq!(
        outcome.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {outcome:?}"
    );
    assert!(
        outcome.retry_after.is_some_and(|s| s >= 1),
        "{what}: Retry-After is set: {outcome:?}"
    );
    assert!(
        !outcome.touched_cookie,
        "{what}: the cookie is left alone: {outcome:?}"
    );
}

/// The token endpoint fails in the two transient ways, on three replicas.
///
/// 503: every caller gets 503 with `Retry-After`, the cookie is never touched, the session
/// stays valid on every replica, and after recovery a burst causes exactly one refresh and
/// succeeds.
///
/// Timeout (`pleo.request_timeout` 1 s, token endpoint 2 s late): callers get 503 with
/// `Retry-After` within about one timeout per replica (requests queued on a replica share its
/// attempt's failure instead of each trying again), and the session survives. But the mock,
/// like a real server whose response was lost, had already rotated the pair: the refresh token
/// the gateway still holds is dead, and nobody can recover the new one. (The other replicas'
/// attempts in that burst already present it; while the endpoint stays slow their refusals time
/// out too, so nothing ends yet.) Once Pleo answers in time, the next refresh presents the dead
/// token, Pleo calls it a reuse and refuses (`invalid_grant`), and the gateway ends the session
/// cleanly: 401 `session_ended`, on every replica. No panic, no hang, no 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_endpoint_503_or_timeout_keeps_the_session() {
    let test = async {
        let mut env =
            TestEnv::start(short_lived(StoreKind::Redis).env("PLEO__REQUEST_TIMEOUT", "1s")).await;
        let second = env.add_replica().await;
        let third = env.add_replica().await;
        let first = env.browser();
        first.login().await;
        let cookie = first.cookie(SESSION_COOKIE).expect("session cookie");
        let browsers = [
            env.browser_like(&first, second),
            env.browser_like(&first, third),
            first,
        ];
        let replicas: Vec<&Browser> = browsers.iter().collect();

        // --- 503 from the token endpoint
        env.mock.set_token_failure(Some(503));
        wait_until_refresh_due(env.tap.issued()[0].issued_at, TOKEN_TTL).await;
        let outcomes = probe_burst(&replicas, 30, "/pleo/v2/employees").await;
        for outcome in &outcomes {
            assert_retryable_503(outcome, "token endpoint 503");
            assert_eq!(outcome.error.as_deref(), Some("pleo_unavailable"));
        }
        let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
        let stats = env.mock.stats();
        assert_eq!(stats.refresh_token_grants, 0, "{stats:?}");
        // One attempt for the whole burst across three replicas: the first failure starts a
        // back-off shared through Redis, and everyone else answers 503 without asking Pleo.
        assert_eq!(
            stats.token_requests - 1,
            1,
            "a single refresh attempt during the back-off: {stats:?}"
        );
        assert_eq!(
            stats.api_requests, 1,
            "only the login's introspection: {stats:?}"
        );
        eprintln!(
            "token endpoint 503: 30 callers answered 503 within {slowest:?}; {} token requests",
            stats.token_requests - 1
        );
        for browser in &browsers {
            assert_eq!(browser.cookie(SESSION_COOKIE).as_deref(), Some(&*cookie));
            let info = probe(browser, "/auth/session").await;
            assert_eq!(
                info.status,
                StatusCode::OK,
                "the session survives: {info:?}"
            );
        }

        env.mock.set_token_failure(None);
        // Clients that honour Retry-After get through once the back-off has passed.
        tokio::time::sleep(retry_after(&outcomes)).await;
        let outcomes = probe_burst(&replicas, 30, "/pleo/v2/employees").await;
        assert!(
            outcomes.iter().all(|o| o.status == StatusCode::OK),
            "after recovery every request succeeds: {outcomes:?}"
        );
        let stats = env.mock.stats();
        assert_eq!(
            stats.refresh_token_grants, 1,
            "one refresh on recovery: {stats:?}"
        );
        assert_eq!(stats.reuse_detections, 0, "{stats:?}");

        // --- the token endpoint answers after the gateway's 1 s timeout
        let current = env.tap.issued().last().cloned().expect("a token pair");
        assert_eq!(env.tap.issued().len(), 2);
        env.mock.set_token_delay(Duration::from_secs(2));
        wait_until_refresh_due(current.issued_at, TOKEN_TTL).await;
        let outcomes = probe_burst(&replicas, 30, "/pleo/v2/employees").await;
        let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
        eprintln!(
            "token endpoint timeout: {:?} within {slowest:?}; {:?}",
            outcomes
                .iter()
                .map(|o| o.status.as_u16())
                .collect::<Vec<_>>(),
            env.mock.stats()
        );
        for outcome in &outcomes {
            assert_retryable_503(outcome, "token endpoint timeout");
            assert_eq!(outcome.error.as_deref(), Some("pleo_unavailable"));
        }
        assert!(
            slowest < Duration::from_secs(5),
            "callers are not held for long behind a timing-out refresh: {slowest:?}"
        );
        let stats = env.mock.stats();
        assert_eq!(
            stats.refresh_token_grants, 2,
            "the timed-out refresh did rotate at Pleo: {stats:?}"
        );
        for browser in &browsers {
            let info = probe(browser, "/auth/session").await;
            assert_eq!(
                info.status,
                StatusCode::OK,
                "the session survives: {info:?}"
            );
            assert!(!info.touched_cookie);
        }

        // The rotated pair's response was lost: the stored refresh token is dead, and the next
        // refresh ends the session, cleanly.
        env.mock.set_token_delay(Duration::ZERO);
        tokio::time::sleep(retry_after(&outcomes)).await;
        let ended = probe(&browsers[0], "/pleo/v2/employees").await;
        assert_eq!(ended.status, StatusCode::UNAUTHORIZED, "{ended:?}");
        assert_eq!(ended.error.as_deref(), Some("session_ended"));
        let stats = env.mock.stats();
        assert_eq!(
            stats.refresh_token_grants, 2,
            "no pair was issued for the dead token: {stats:?}"
        );
        assert!(stats.reuse_detections >= 1, "{stats:?}");
        eprintln!("after the lost refresh response: {ended:?}, {stats:?}");
        for browser in &browsers {
            eventually(
                "every replica sees the session ended",
                PATIENCE,
                async || probe(browser, "/auth/session").await.status == StatusCode::UNAUTHORIZED,
            )
            .await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test finishes within 60 s");
}

/// A client triggers a refresh and hangs up while the token endpoint (1 s late) is answering.
/// The refresh runs on: the rotated pair is stored (the record's version moves to 2), and the
/// next request — on another replica — uses it without a second refresh. Fails if the refresh
/// runs inside the request's future (the disconnect would cancel it after Pleo rotated, the
/// next request would replay the dead refresh token and the session would end).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_disconnect_mid_refresh_still_stores_the_new_pair() {
    let test = async {
        let mut env = TestEnv::start(short_lived(StoreKind::Redis)).await;
        let replica = env.add_replica().await;
        let browser = env.browser();
        browser.login().await;
        let elsewhere = env.browser_like(&browser, replica);
        env.mock.set_token_delay(Duration::from_secs(1));
        wait_until_refresh_due(env.tap.issued()[0].issued_at, TOKEN_TTL).await;

        // Give up on the request once Pleo has been asked to refresh, well before the answer.
        let request = browser.send(browser.get("/pleo/v2/employees"));
        let hung_up = tokio::time::timeout(Duration::from_millis(400), request).await;
        assert!(
            hung_up.is_err(),
            "the request was still waiting when dropped"
        );
        let stats = env.mock.stats();
        assert_eq!(stats.token_requests, 2, "the refresh was sent: {stats:?}");

        eventually("Pleo answered the refresh", PATIENCE, async || {
            env.tap.issued().len() == 2
        })
        .await;
        eventually("the rotated pair is stored", PATIENCE, async || {
            session_version(&env).await == Some(2)
        })
        .await;

        env.mock.set_token_delay(Duration::ZERO);
        let response = elsewhere.send(elsewhere.get("/pleo/v2/employees")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            bearer_seen_by_pleo(&elsewhere).await,
            env.tap.issued()[1].access_token,
            "the pair of the abandoned request is in use"
        );
        let stats = env.mock.stats();
        assert_eq!(
            stats.refresh_token_grants, 1,
            "no second refresh: {stats:?}"
        );
        assert_eq!(stats.reuse_detections, 0, "{stats:?}");
        assert_eq!(stats.token_requests, 2, "{stats:?}");
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test finishes within 60 s");
}

/// The version field of the (single) session record under the test's prefix.
async fn session_version(env: &TestEnv) -> Option<u64> {
    env.redis_dump()
        .await
        .into_iter()
        .filter(|(key, _)| key.contains(":session:"))
        .find_map(|(_, values)| {
            values
                .chunks(2)
                .find(|pair| pair[0] == b"v")
                .and_then(|pair| std::str::from_utf8(&pair[1]).ok()?.parse().ok())
        })
}

/// What one request of the background traffic saw, and when.
#[derive(Debug)]
struct Sample {
    at: Duration,
    outcome: Outcome,
}

/// Requests `path` on `browser` every 100 ms until told to stop; returns what each saw.
fn traffic(
    browser: Browser,
    path: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut samples = Vec::new();
        while !*stop.borrow() {
            let at = started.elapsed();
            let outcome = probe(&browser, path).await;
            samples.push(Sample { at, outcome });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    })
}

/// The rules for every request made while Redis was away or coming back: 200 (from the
/// per-replica cache) or 503 with `Retry-After`, never a touched cookie, never a 401 or 500,
/// and an answer within the store's 2 s command timeout plus slack (this replica is connected).
fn assert_outage_outcomes(samples: &[Sample], what: &str) {
    for sample in samples {
        let outcome = &sample.outcome;
        match outcome.status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => assert_retryable_503(outcome, what),
            _ => panic!("{what}: unexpected answer at {:?}: {outcome:?}", sample.at),
        }
        assert!(!outcome.touched_cookie, "{what}: {outcome:?}");
        assert!(
            outcome.took < Duration::from_secs(3),
            "{what}: an answer within bounded time: {sample:?}"
        );
    }
}

fn summary(samples: &[Sample]) -> String {
    let count = |status: StatusCode| {
        samples
            .iter()
            .filter(|s| s.outcome.status == status)
            .count()
    };
    let slowest = samples
        .iter()
        .map(|s| s.outcome.took)
        .max()
        .unwrap_or_default();
    format!(
        "{} requests: {} × 200, {} × 503, slowest {slowest:?}",
        samples.len(),
        count(StatusCode::OK),
        count(StatusCode::SERVICE_UNAVAILABLE)
    )
}

/// A gateway and a second replica on `redis`, one user logged in on the first; the browser on
/// the second replica has never been served there (nothing cached).
async fn outage_setup(redis: &RedisServer) -> (TestEnv, Browser, Browser) {
    let mut env = TestEnv::start(Options::new(StoreKind::Redis).redis_url(&redis.url())).await;
    let replica = env.add_replica().await;
    let browser = env.browser();
    browser.login().await;
    assert_eq!(
        probe(&browser, "/pleo/v2/employees").await.status,
        StatusCode::OK
    );
    let cold = env.browser_like(&browser, replica);
    (env, browser, cold)
}

/// During the outage: the replica that never saw the session answers 503 (with `Retry-After`,
/// in bounded time, cookie untouched) for everything that needs the store, `/readyz` stays
/// ready (what the replica can answer, it answers) and reports the store, and a login can
/// still start.
async fn assert_unavailable_during_outage(env: &TestEnv, cold: &Browser) -> Vec<Outcome> {
    let readyz = probe(&env.browser(), "/readyz").await;
    assert_eq!(readyz.status, StatusCode::OK, "{readyz:?}");
    assert_ne!(store_status(&env.browser()).await, "reachable");
    let mut seen = vec![readyz];
    // Starting a login needs no store (the pending login lives in a cookie): it still works.
    let login = probe(cold, "/auth/login").await;
    assert_eq!(login.status, StatusCode::FOUND, "{login:?}");
    for path in ["/auth/session", "/pleo/v2/employees"] {
        let outcome = probe(cold, path).await;
        assert_retryable_503(&outcome, path);
        assert_eq!(
            outcome.error.as_deref(),
            Some("session_store_unavailable"),
            "{path}: {outcome:?}"
        );
        // This replica has no connection to Redis yet: each command waits for a connection
        // attempt (two tries with a 2 s connect timeout), ~4 s rather than the 2 s command
        // timeout a connected replica sees.
        assert!(outcome.took < Duration::from_secs(5), "{path}: {outcome:?}");
        seen.push(outcome);
    }
    seen
}

/// `/readyz`'s `store_status`.
async fn store_status(browser: &Browser) -> String {
    let body = json_body(browser.send(browser.get("/readyz")).await).await;
    body["store_status"].as_str().unwrap_or_default().to_owned()
}

/// After the outage: `/readyz` reports the store reachable again, and the same cookie works
/// on both replicas.
async fn assert_recovered(env: &TestEnv, browser: &Browser, cold: &Browser) {
    let health = env.browser();
    eventually(
        "/readyz to report the store reachable",
        PATIENCE,
        async || store_status(&health).await == "reachable",
    )
    .await;
    for (who, b) in [("first replica", browser), ("second replica", cold)] {
        eventually(
            &format!("{who}: the same cookie works again"),
            PATIENCE,
            async || probe(b, "/auth/session").await.status == StatusCode::OK,
        )
        .await;
        let outcome = probe(b, "/pleo/v2/employees").await;
        assert_eq!(outcome.status, StatusCode::OK, "{who}: {outcome:?}");
        assert!(!outcome.touched_cookie);
    }
}

/// Redis is frozen (SIGSTOP: connections stay open, nothing answers — a partition) while a
/// user's requests flow, then thawed. Requests meanwhile get 200 from the replica's session
/// cache or 503 with `Retry-After`, within the 2 s command timeout; never a cleared cookie,
/// 401 or 500; `/readyz` stays 200. Afterwards the same cookie works on both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_frozen_mid_traffic_then_thawed_keeps_the_session() {
    let test = async {
        let redis = RedisServer::start().await;
        let (env, browser, cold) = outage_setup(&redis).await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let flow = traffic(
            env.browser_like(&browser, env.gateway_url.clone()),
            "/pleo/v2/employees",
            stopped,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;

        redis.freeze();
        let frozen_at = Instant::now();
        let during = assert_unavailable_during_outage(&env, &cold).await;
        // Long enough for every cached session to go stale (1 s) and several commands to time out.
        tokio::time::sleep_until(frozen_at + Duration::from_secs(4)).await;
        redis.thaw();
        assert_recovered(&env, &browser, &cold).await;
        stop.send_replace(true);
        let samples = flow.await.expect("traffic task");

        assert_outage_outcomes(&samples, "frozen Redis");
        assert!(samples.len() >= 10, "traffic flowed: {}", summary(&samples));
        eprintln!(
            "frozen Redis: traffic {}; cold replica during the outage: {:?}",
            summary(&samples),
            during
                .iter()
                .map(|o| (o.status.as_u16(), o.took))
                .collect::<Vec<_>>()
        );
    };
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

/// Redis is shut down cleanly mid-traffic (connections closed, new ones refused), then started
/// again on the same port with its append-only file. Meanwhile: 200 from the cache or 503 with
/// `Retry-After`, never a cleared cookie; `/readyz` 200. Afterwards the same cookie works —
/// the gateway reconnects by itself and the session survived in Redis's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_mid_traffic_then_restarted_keeps_the_session() {
    let test = async {
        let mut redis = RedisServer::start_persistent().await;
        let (env, browser, cold) = outage_setup(&redis).await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let flow = traffic(
            env.browser_like(&browser, env.gateway_url.clone()),
            "/pleo/v2/employees",
            stopped,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;

        redis.stop().await;
        let stopped_at = Instant::now();
        let during = assert_unavailable_during_outage(&env, &cold).await;
        tokio::time::sleep_until(stopped_at + Duration::from_secs(3)).await;
        redis.restart().await;
        assert_recovered(&env, &browser, &cold).await;
        stop.send_replace(true);
        let samples = flow.await.expect("traffic task");

        assert_outage_outcomes(&samples, "stopped Redis");
        assert!(samples.len() >= 10, "traffic flowed: {}", summary(&samples));
        eprintln!(
            "stopped Redis: traffic {}; cold replica during the outage: {:?}",
            summary(&samples),
            during
                .iter()
                .map(|o| (o.status.as_u16(), o.took))
                .collect::<Vec<_>>()
        );
    };
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

/// After Pleo starts refusing the access token (revoked early), a large streamed POST (chunked,
/// no `Content-Length`, > 64 KiB) cannot be replayed, so Pleo's 401 is passed on as it is: one
/// API request, no refresh, no retry. A small POST with a `Content-Length` can be replayed: it
/// gets one refresh and one retry, and Pleo receives its body exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pleo_401_with_unreplayable_body_is_passed_on() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    env.mock.expire_access_tokens();
    let before = env.mock.stats();

    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..10)
        .map(|_| Ok(Bytes::from(vec![b'x'; 10 * 1024])))
        .collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = browser
        .send(
            browser
                .post("/pleo/echo/upload")
                .header("X-CSRF", "1")
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(streamed),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        session_set_cookie(&response).is_none(),
        "Pleo's 401 says nothing about the session"
    );
    let body = json_body(response).await;
    assert_eq!(
        body["message"], "The JWT token has expired",
        "Pleo's own body: {body}"
    );
    assert!(body.get("error").is_none(), "not a gateway error: {body}");
    let stats = env.mock.stats();
    assert_eq!(
        stats.api_requests - before.api_requests,
        1,
        "sent once: {stats:?}"
    );
    assert_eq!(stats.api_unauthorized - before.api_unauthorized, 1);
    assert_eq!(
        stats.token_requests, before.token_requests,
        "no refresh: {stats:?}"
    );
    assert_eq!(
        env.tap.echo_bytes_received(),
        0,
        "the echo handler never ran"
    );

    // The same with a declared length above the replay limit.
    let large = vec![b'y'; 100 * 1024];
    let response = browser
        .send(
            browser
                .post("/pleo/echo/upload")
                .header("X-CSRF", "1")
                .body(large),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let stats = env.mock.stats();
    assert_eq!(stats.api_requests - before.api_requests, 2, "{stats:?}");
    assert_eq!(stats.token_requests, before.token_requests, "{stats:?}");

    // A small body is buffered, so the 401 triggers one refresh and one retry.
    let small = vec![b'z'; 1024];
    let response = browser
        .send(
            browser
                .post("/pleo/echo/upload")
                .header("X-CSRF", "1")
                .body(small.clone()),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_body(response).await;
    assert_eq!(echo["body_bytes"], 1024, "the body arrived once, whole");
    assert_eq!(
        echo["body_sha256"],
        crate::support::sha256_hex(&small),
        "the replayed body is the original"
    );
    let stats = env.mock.stats();
    assert_eq!(
        stats.api_requests - before.api_requests,
        4,
        "401, then the retry"
    );
    assert_eq!(stats.refresh_token_grants, 1, "{stats:?}");
    assert_eq!(
        env.tap.echo_bytes_received(),
        1024,
        "only the retry reached the handler"
    );
}
