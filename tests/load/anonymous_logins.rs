//! Anonymous logins against the in-process gateway with the Redis store: they must leave no
//! server-side state at all.

use std::time::Instant;

use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::support::{Options, StoreKind, TestEnv};

/// 50,000 anonymous `/auth/login` requests with a long `return_to` write nothing to Redis (the
/// documented bound: 0 bytes), and meanwhile a real user logs in and an existing session
/// refreshes. Before, each such request stored ~2.7 KB for ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymous_logins_leave_no_server_state() {
    let env = TestEnv::start(Options::new(StoreKind::Redis)).await;
    let alice = env.browser();
    alice.login().await;
    let keys_before = env.redis_dump().await.len();
    assert_eq!(keys_before, 1, "Alice's session");

    let return_to = format!("/reports?q={}", "x".repeat(2000));
    let url = env
        .gateway_url
        .join(&format!("/auth/login?return_to={return_to}"))
        .unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let started = Instant::now();
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..50_000)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(url).send().await.unwrap().status() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| *s == StatusCode::FOUND));
    println!("50,000 anonymous logins in {took:?}");

    let keys = env.redis_dump().await;
    assert_eq!(
        keys.len(),
        keys_before,
        "anonymous logins stored nothing: {:?}",
        keys.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );

    // A real user can still log in, and the existing session still refreshes.
    env.browser().login().await;
    env.mock.expire_access_tokens();
    let call = alice.send(alice.get("/pleo/v2/employees")).await;
    assert_eq!(call.status(), StatusCode::OK);
    assert_eq!(env.mock.stats().refresh_token_grants, 1);
}
