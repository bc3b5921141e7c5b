//! The budget of calls to Pleo (`pleo.rate_limit_per_minute`), shared by every replica through
//! the store: what Pleo sees stays within it, the rest is refused by the gateway with 429 and
//! `Retry-After`, Pleo's own 429 passes through and pauses the budget, another subject has a
//! budget of its own, and a store outage lets calls through rather than failing them.

use std::time::Duration;

use pleo_gateway::mock_pleo::DEFAULT_SUBJECT_URN;
use reqwest::{StatusCode, header};
use tokio::time::Instant;

use crate::support::{Browser, Options, RedisServer, StoreKind, TestEnv};

/// Another company than the mock's default one, for a second subject.
const OTHER_SUBJECT: &str = "urn:pleo:company:0f7e2f4a-6c1b-4d8e-9b3a-5a2d7c9e1f30";
/// The gateway's default budget: 500 a minute, one call every 120 ms, a burst of 50, and calls
/// wait up to 1 s for their turn.
const INTERVAL_MS: u64 = 120;
const BURST: u64 = 50;

/// What one call got.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    /// The `error` code of a gateway error body.
    error: Option<String>,
}

async fn call(browser: &Browser) -> Answer {
    let response = browser.send(browser.get("/pleo/v2/employees")).await;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.bytes().await.unwrap_or_default();
    let error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|json| json["error"].as_str().map(str::to_owned));
    Answer {
        status,
        retry_after,
        error,
    }
}

/// A gateway with the rate budget on (`per_minute`, `scope`).
fn budgeted(store: StoreKind, per_minute: &str, scope: &str) -> Options {
    Options::new(store)
        .env("PLEO__RATE_LIMIT_PER_MINUTE", per_minute)
        .env("PLEO__RATE_LIMIT_SCOPE", scope)
}

/// A browser logged in for `subject` on the gateway `env` serves first.
async fn login_as(env: &TestEnv, subject: &str) -> Browser {
    let browser = env.browser();
    let query = format!("urn_pleo_params_oauth_subject={subject}");
    let (response, _) = browser.login_with(&query).await;
    assert_eq!(response.status(), StatusCode::FOUND, "login as {subject}");
    browser
}

/// 700 calls for one subject at once, spread over three replicas on one Redis, with the
/// default budget: Pleo sees no more than the burst plus one call per interval of the time the
/// burst took (and at least the burst); every other call is the gateway's 429 with
/// `Retry-After`. A user of another company, meanwhile, is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_keep_one_subject_within_one_budget() {
    let test = async {
        let mut env = TestEnv::start(budgeted(StoreKind::Redis, "500", "subject")).await;
        let replicas = [env.add_replica().await, env.add_replica().await];
        let first = env.browser();
        first.login().await;
        let browsers = [
            env.browser_like(&first, replicas[0].clone()),
            env.browser_like(&first, replicas[1].clone()),
            first,
        ];
        let other = login_as(&env, OTHER_SUBJECT).await;
        let before = env.mock.stats().api_requests;

        let started = Instant::now();
        let calls = (0..700).map(|i| call(&browsers[i % browsers.len()]));
        let answers = futures_util::future::join_all(calls).await;
        let took = started.elapsed();
        let seen_by_pleo = env.mock.stats().api_requests - before;
        let other_answer = call(&other).await;

        let ok = answers
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .count() as u64;
        let refused: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
            .collect();
        assert_eq!(
            ok + refused.len() as u64,
            700,
            "every call is 200 or 429: {:?}",
            answers
                .iter()
                .filter(|a| !matches!(a.status.as_u16(), 200 | 429))
                .collect::<Vec<_>>()
        );
        assert_eq!(seen_by_pleo, ok, "each admitted call reached Pleo once");
        let allowed = BURST + 1 + took.as_millis() as u64 / INTERVAL_MS;
        assert!(
            seen_by_pleo <= allowed,
            "Pleo saw {seen_by_pleo} calls in {took:?}; the budget allows {allowed}"
        );
        assert!(seen_by_pleo >= BURST, "the burst is usable: {seen_by_pleo}");
        for answer in &refused {
            assert_eq!(
                answer.error.as_deref(),
                Some("pleo_rate_limited"),
                "{answer:?}"
            );
            assert!(answer.retry_after.is_some_and(|s| s >= 1), "{answer:?}");
        }
        assert_eq!(
            other_answer.status,
            StatusCode::OK,
            "another subject has its own budget: {other_answer:?}"
        );
        let metrics = pleo_gateway::telemetry::metrics_handle().render();
        assert!(
            metrics.contains("pleo_gateway_pleo_budget_calls_total{outcome=\"refused\"}"),
            "{metrics}"
        );
        eprintln!(
            "700 calls on 3 replicas in {took:?}: {ok} reached Pleo, {} refused",
            refused.len()
        );
    };
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

/// Pleo answers 429 with `Retry-After: 30`: the caller gets exactly that (Pleo's body, Pleo's
/// header), and the budget is paused, so the next call is refused by the gateway without
/// reaching Pleo, with about as long to wait. With `rate_limit_scope = "client"` the pause
/// holds for every subject; with `"subject"`, another company is unaffected.
#[tokio::test]
async fn pleos_own_429_passes_through_and_pauses_the_budget() {
    for (scope, other_paused) in [("subject", false), ("client", true)] {
        let env = TestEnv::start(budgeted(StoreKind::Memory, "500", scope)).await;
        let first = login_as(&env, DEFAULT_SUBJECT_URN).await;
        let other = login_as(&env, OTHER_SUBJECT).await;

        env.mock.set_api_rate_limited(Some(30));
        let from_pleo = call(&first).await;
        env.mock.set_api_rate_limited(None);
        assert_eq!(from_pleo.status, StatusCode::TOO_MANY_REQUESTS, "{scope}");
        assert_eq!(
            from_pleo.retry_after,
            Some(30),
            "Pleo's own header: {from_pleo:?}"
        );
        assert_eq!(from_pleo.error, None, "Pleo's own body: {from_pleo:?}");

        let before = env.mock.stats().api_requests;
        let held = call(&first).await;
        assert_eq!(
            held.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{scope}: {held:?}"
        );
        assert_eq!(held.error.as_deref(), Some("pleo_rate_limited"), "{held:?}");
        assert!(
            held.retry_after.is_some_and(|s| (28..=30).contains(&s)),
            "{scope}: about Pleo's 30 s: {held:?}"
        );
        assert_eq!(env.mock.stats().api_requests, before, "{scope}: not sent");

        let other_answer = call(&other).await;
        let expected = if other_paused {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::OK
        };
        assert_eq!(other_answer.status, expected, "{scope}: {other_answer:?}");
    }
}

/// The store fails while a user's calls flow (Redis stopped): the budget cannot be checked,
/// and the calls go to Pleo anyway (the session comes from the replica's cache) instead of
/// failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_lets_calls_through_unchecked() {
    let test = async {
        let mut redis = RedisServer::start().await;
        let env =
            TestEnv::start(budgeted(StoreKind::Redis, "500", "subject").redis_url(&redis.url()))
                .await;
        let browser = env.browser();
        browser.login().await;
        assert_eq!(call(&browser).await.status, StatusCode::OK);

        redis.kill();
        let before = env.mock.stats().api_requests;
        let during = call(&browser).await;
        assert_eq!(during.status, StatusCode::OK, "{during:?}");
        assert_eq!(env.mock.stats().api_requests, before + 1);
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test finishes within 60 s");
}
