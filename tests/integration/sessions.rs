//! What the session store holds: nothing a Redis dump could replay or read.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use crate::support::{
    Options, SESSION_COOKIE, StoreKind, TestEnv, query_map, wait_until_refresh_due,
};

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
}

/// After a login and a refresh, no key or value under the gateway's prefix contains an access
/// token, a refresh token, the session cookie or a pending login's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_holds_no_token_cookie_or_state_in_clear() {
    let ttl = Duration::from_secs(3);
    let env = TestEnv::start(
        Options::new(StoreKind::Redis)
            .access_token_ttl(ttl)
            .refresh_before_expiry(Duration::from_secs(2)),
    )
    .await;
    let browser = env.browser();
    browser.login().await;
    let logged_in = Instant::now();
    let cookie = browser.cookie(SESSION_COOKIE).expect("session cookie");

    wait_until_refresh_due(logged_in, ttl).await;
    let response = browser.send(browser.get("/pleo/echo/after-refresh")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo: serde_json::Value = response.json().await.unwrap();
    let issued = env.tap.issued();
    assert_eq!(issued.len(), 2, "login and one refresh");
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {}", issued[1].access_token),
        "the refreshed token is in use"
    );

    // A login that is started but not finished leaves its state (and PKCE verifier) in the store.
    let other = env.browser();
    let pending_state = query_map(&other.begin_login("").await)["state"].clone();

    let dump = env.redis_dump().await;
    let prefix = env.redis_prefix.clone().unwrap();
    assert!(
        dump.iter()
            .any(|(key, _)| key.starts_with(&format!("{prefix}session:"))),
        "the session is in Redis under the prefix: {:?}",
        dump.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    assert!(
        dump.iter()
            .any(|(key, _)| key.starts_with(&format!("{prefix}login:"))),
        "the pending login is in Redis under the prefix"
    );

    let mut secrets: Vec<(&str, String)> =
        vec![("session cookie", cookie), ("login state", pending_state)];
    for pair in &issued {
        secrets.push(("access token", pair.access_token.clone()));
        secrets.push(("refresh token", pair.refresh_token.clone()));
    }
    for (key, values) in &dump {
        for (what, secret) in &secrets {
            assert!(!key.contains(secret.as_str()), "{what} in key name {key}");
            for value in values {
                assert!(
                    !contains(value, secret),
                    "{what} stored in clear under {key}"
                );
            }
        }
    }
}

/// Sessions are per browser: logging one out leaves another untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_ends_only_that_browsers_session() {
    let env = TestEnv::start(Options::new(StoreKind::Redis)).await;
    let alice = env.browser();
    let bob = env.browser();
    alice.login().await;
    bob.login().await;
    assert_ne!(alice.cookie(SESSION_COOKIE), bob.cookie(SESSION_COOKIE));

    let logout = alice
        .send(alice.post("/auth/logout").header("X-CSRF", "1"))
        .await;
    assert_eq!(logout.status(), StatusCode::OK);
    assert_eq!(
        alice.send(alice.get("/auth/session")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        bob.send(bob.get("/auth/session")).await.status(),
        StatusCode::OK
    );
    let sessions = env
        .redis_dump()
        .await
        .into_iter()
        .filter(|(key, _)| key.contains(":session:"))
        .count();
    assert_eq!(sessions, 1, "only Bob's session is left in Redis");
}
