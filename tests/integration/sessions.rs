//! Sessions in the shared store: one per browser. (What the store holds at rest, and for how
//! long, is in `at_rest`.)

use reqwest::StatusCode;

use crate::support::{Options, SESSION_COOKIE, StoreKind, TestEnv};

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
