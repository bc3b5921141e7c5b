//! Several gateway replicas on one Redis, each with its own `AppState` (its own Redis connection,
//! refresh coordinator and session cache), one browser session shared by all of them as behind a
//! load balancer: however many requests on however many replicas want a fresh token at the same
//! moment, Pleo sees exactly one refresh.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use crate::support::{
    Browser, Options, StoreKind, TestEnv, bearer_seen_by_pleo, burst, redis_url,
    wait_until_refresh_due,
};

/// Access tokens live 4 s; the 2 s margin (capped at half the lifetime) makes a refresh due 2 s
/// after each token is issued.
const TOKEN_TTL: Duration = Duration::from_secs(4);
const MARGIN: Duration = Duration::from_secs(2);

/// A Redis-backed gateway plus two more replicas, and one logged-in user with a browser on each
/// replica (the same cookie).
async fn three_replicas(options: Options) -> (TestEnv, Vec<Browser>) {
    let mut env = TestEnv::start(options).await;
    let second = env.add_replica().await;
    let third = env.add_replica().await;
    let first = env.browser();
    first.login().await;
    let browsers = vec![
        env.browser_like(&first, second),
        env.browser_like(&first, third),
        first,
    ];
    for browser in &browsers {
        let info = browser.send(browser.get("/auth/session")).await;
        assert_eq!(
            info.status(),
            StatusCode::OK,
            "every replica sees the session"
        );
    }
    (env, browsers)
}

fn short_lived() -> Options {
    Options::new(StoreKind::Redis)
        .access_token_ttl(TOKEN_TTL)
        .refresh_before_expiry(MARGIN)
}

/// Every status that is not 200, with its position, for assertion messages.
fn failures(statuses: &[StatusCode]) -> Vec<(usize, StatusCode)> {
    statuses
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, status)| *status != StatusCode::OK)
        .collect()
}

/// Three cycles of token expiry; in each, 300 concurrent requests spread over three replicas
/// arrive just after the token entered its refresh margin. All succeed, and each cycle costs
/// Pleo exactly one refresh grant (1, 2, 3) and no reuse of a rotated refresh token — which
/// would revoke the grant. Fails if the store lock is skipped (one refresh per replica) or if a
/// replica sends the refresh token it loaded before waiting (reuse detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_300_concurrent_requests_at_expiry_refresh_once() {
    let test = async {
        let (env, browsers) = three_replicas(short_lived()).await;
        let replicas: Vec<&Browser> = browsers.iter().collect();
        for cycle in 1..=3u64 {
            let current = env.tap.issued().last().cloned().expect("a token pair");
            wait_until_refresh_due(current.issued_at, TOKEN_TTL).await;
            let api_requests_before = env.mock.stats().api_requests;
            let started = Instant::now();
            let statuses = burst(&replicas, 300, "/pleo/v2/employees").await;
            let took = started.elapsed();
            let failed = failures(&statuses);
            assert!(
                failed.is_empty(),
                "cycle {cycle}: {} of 300 requests failed: {failed:?}",
                failed.len()
            );
            let stats = env.mock.stats();
            assert_eq!(
                stats.refresh_token_grants, cycle,
                "cycle {cycle}: one refresh per expiry across three replicas ({stats:?})"
            );
            assert_eq!(stats.reuse_detections, 0, "cycle {cycle}: {stats:?}");
            assert_eq!(stats.refresh_failures, 0, "cycle {cycle}: {stats:?}");
            assert_eq!(
                stats.api_unauthorized, 0,
                "cycle {cycle}: no request went out with a rotated token ({stats:?})"
            );
            assert_eq!(
                stats.api_requests - api_requests_before,
                300,
                "each request reached Pleo once"
            );
            eprintln!("cycle {cycle}: 300 requests on 3 replicas in {took:?}, {stats:?}");
        }
        let latest = env.tap.issued().last().cloned().expect("a token pair");
        for browser in &browsers {
            assert_eq!(
                bearer_seen_by_pleo(browser).await,
                latest.access_token,
                "every replica uses the newest token"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

/// The remaining lifetime (ms) of every refresh lock under `prefix` in the shared test Redis.
async fn refresh_locks(prefix: &str) -> Vec<(String, i64)> {
    let client = redis::Client::open(redis_url().await).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}lock:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut locks = Vec::new();
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        locks.push((key, ttl));
    }
    locks
}

/// The token endpoint takes 2 s to answer. Requests on three replicas arrive while the one
/// refresh is in flight: they wait for it (on the in-process single-flight or by polling the
/// store) instead of sending their own, all succeed, and Pleo sees exactly one refresh. The
/// store lock exists for the whole request and its lifetime exceeds the request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_token_endpoint_still_refreshes_once() {
    const DELAY: Duration = Duration::from_secs(2);
    let test = async {
        let (env, browsers) = three_replicas(short_lived()).await;
        let prefix = env.redis_prefix.clone().expect("a Redis prefix");
        let replicas: Vec<&Browser> = browsers.iter().collect();
        env.mock.set_token_delay(DELAY);
        let login = env.tap.issued()[0].clone();
        wait_until_refresh_due(login.issued_at, TOKEN_TTL).await;

        let started = Instant::now();
        let requests = burst(&replicas, 60, "/pleo/v2/employees");
        let watch_lock = async {
            // While the refresh is in flight, its lock is in Redis with a TTL beyond the delay.
            tokio::time::sleep(DELAY / 2).await;
            refresh_locks(&prefix).await
        };
        let (statuses, locks) = tokio::join!(requests, watch_lock);
        let took = started.elapsed();

        let failed = failures(&statuses);
        assert!(failed.is_empty(), "requests failed: {failed:?}");
        let stats = env.mock.stats();
        assert_eq!(stats.refresh_token_grants, 1, "one refresh: {stats:?}");
        assert_eq!(stats.reuse_detections, 0, "{stats:?}");
        assert_eq!(
            stats.token_requests, 2,
            "the code exchange and one refresh, nothing else: {stats:?}"
        );
        assert_eq!(stats.api_unauthorized, 0, "{stats:?}");
        assert!(
            took >= DELAY,
            "the requests waited for the refresh ({took:?})"
        );
        assert_eq!(
            locks.len(),
            1,
            "one refresh lock while refreshing: {locks:?}"
        );
        assert!(
            locks[0].1 > DELAY.as_millis() as i64,
            "the lock outlives the token request: {locks:?}"
        );
        assert!(
            refresh_locks(&prefix).await.is_empty(),
            "the lock is released after the refresh"
        );
        eprintln!("60 requests over a 2 s refresh on 3 replicas took {took:?}; lock {locks:?}");

        env.mock.set_token_delay(Duration::ZERO);
        let latest = env.tap.issued().last().cloned().expect("a token pair");
        assert_eq!(env.tap.issued().len(), 2);
        for browser in &browsers {
            assert_eq!(bearer_seen_by_pleo(browser).await, latest.access_token);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test finishes within 60 s");
}
