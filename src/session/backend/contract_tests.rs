//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! One suite, run against both backends: what `Sessions` and the refresh protocol rely on.
//! The Redis run uses `PLEO_GATEWAY_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) under
//! a key prefix of its own.

use std::time::Duration;

use super::{BackoffPolicy, BudgetDecision, BudgetRate, CasOutcome, SessionBackend};
use crate::session::{memory_store::MemoryStore, redis_store::RedisStore};

const IDLE: Duration = Duration::from_secs(60);
const POLICY: BackoffPolicy = BackoffPolicy {
    first: Duration::from_secs(1),
    max: Duration::from_secs(4),
    memory: Duration::from_secs(600),
};

/// Every rule of the contract, against one backend. `now` is a Unix time in ms.
async fn contract(store: &impl SessionBackend) {
    let now = 1_700_000_000_000_u64;
    let deadline = now + 3_600_000;

    // Sessions: create, load, compare-and-set, delete.
    assert_eq!(store.load("s", now).await.unwrap(), None);
    store
        .create("s", b"one", deadline, IDLE, now)
        .await
        .unwrap();
    let loaded = store.load("s", now).await.unwrap().unwrap();
    assert_eq!(
        (
            loaded.version,
            loaded.blob.as_slice(),
            loaded.absolute_deadline_ms
        ),
        (1, &b"one"[..], deadline)
    );
    assert_eq!(
        store
            .compare_and_set("s", 1, b"two", IDLE, now)
            .await
            .unwrap(),
        CasOutcome::Written(2)
    );
    assert_eq!(
        store
            .compare_and_set("s", 1, b"stale", IDLE, now)
            .await
            .unwrap(),
        CasOutcome::Conflict,
        "a writer that read version 1 cannot overwrite version 2"
    );
    let touched = store.load_and_touch("s", IDLE, now).await.unwrap().unwrap();
    assert_eq!((touched.version, touched.blob.as_slice()), (2, &b"two"[..]));
    // Past the absolute deadline the session is gone, however active.
    assert_eq!(
        store.load_and_touch("s", IDLE, deadline).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .compare_and_set("s", 2, b"late", IDLE, deadline)
            .await
            .unwrap(),
        CasOutcome::Missing
    );
    store.create("t", b"x", deadline, IDLE, now).await.unwrap();
    store.delete("t").await.unwrap();
    store.delete("t").await.unwrap();
    assert_eq!(store.load("t", now).await.unwrap(), None);
    assert_eq!(
        store
            .compare_and_set("t", 1, b"y", IDLE, now)
            .await
            .unwrap(),
        CasOutcome::Missing
    );

    // The refresh lock: one owner at a time, extended and released only by its owner.
    let ttl = Duration::from_secs(30);
    assert!(store.try_lock("l", "owner-a", ttl).await.unwrap());
    assert!(!store.try_lock("l", "owner-b", ttl).await.unwrap());
    assert!(store.extend_lock("l", "owner-a", ttl).await.unwrap());
    assert!(!store.extend_lock("l", "owner-b", ttl).await.unwrap());
    store.unlock("l", "owner-b").await.unwrap();
    assert!(
        !store.try_lock("l", "owner-b", ttl).await.unwrap(),
        "not b's to release"
    );
    store.unlock("l", "owner-a").await.unwrap();
    assert!(store.try_lock("l", "owner-b", ttl).await.unwrap());
    store.unlock("l", "owner-b").await.unwrap();

    // Shared back-off: 1 s, 2 s, then capped; cleared after a success.
    assert_eq!(store.refresh_backoff("b", now).await.unwrap(), None);
    let first = store
        .record_refresh_failure("b", POLICY, now)
        .await
        .unwrap();
    assert_eq!(first, Duration::from_secs(1));
    assert_eq!(
        store.refresh_backoff("b", now).await.unwrap(),
        Some(Duration::from_secs(1))
    );
    assert_eq!(store.refresh_backoff("b", now + 1_000).await.unwrap(), None);
    let second = store
        .record_refresh_failure("b", POLICY, now)
        .await
        .unwrap();
    assert_eq!(second, Duration::from_secs(2));
    for _ in 0..4 {
        store
            .record_refresh_failure("b", POLICY, now)
            .await
            .unwrap();
    }
    assert_eq!(
        store.refresh_backoff("b", now).await.unwrap(),
        Some(POLICY.max)
    );
    store.clear_refresh_backoff("b").await.unwrap();
    assert_eq!(store.refresh_backoff("b", now).await.unwrap(), None);

    background_grants(store, now, deadline).await;
    budget_contract(store, now).await;
    store.ping().await.unwrap();
}

/// Kept records (background grants) and the subject slots that point at them.
async fn background_grants(store: &impl SessionBackend, now: u64, deadline: u64) {
    const KEEP: Duration = Duration::from_secs(7200);
    let keep_ms = 7_200_000;
    let idle_ms = u64::try_from(IDLE.as_millis()).unwrap();

    // A kept record outlives its browser session's idle timeout: the cookie no longer finds
    // it, the background caller does, and its writes (refreshes) keep it longer.
    assert!(
        !store.keep("g", KEEP, now).await.unwrap(),
        "nothing to keep"
    );
    store
        .create("g", b"grant", deadline, IDLE, now)
        .await
        .unwrap();
    assert!(store.keep("g", KEEP, now).await.unwrap());
    let idle_later = now + idle_ms + 1;
    assert_eq!(
        store.load_and_touch("g", IDLE, idle_later).await.unwrap(),
        None
    );
    assert!(store.load("g", idle_later).await.unwrap().is_some());
    assert_eq!(
        store
            .compare_and_set("g", 1, b"refreshed", IDLE, idle_later)
            .await
            .unwrap(),
        CasOutcome::Written(2)
    );
    let kept_until = idle_later + keep_ms;
    assert!(
        store.load("g", kept_until - 1).await.unwrap().is_some(),
        "the write kept it past the browser's absolute deadline"
    );
    assert_eq!(store.load("g", kept_until).await.unwrap(), None);

    // While the browser session is live, a kept record is an ordinary session to it.
    store.create("h", b"h", deadline, IDLE, now).await.unwrap();
    assert!(store.keep("h", KEEP, now).await.unwrap());
    assert!(
        store
            .load_and_touch("h", IDLE, now)
            .await
            .unwrap()
            .is_some()
    );
    // Logout ends the browser session of a kept record and keeps the record.
    assert!(store.end_browser_session("h", now).await.unwrap());
    assert_eq!(store.load_and_touch("h", IDLE, now).await.unwrap(), None);
    assert!(store.load("h", now).await.unwrap().is_some());
    // Released with its browser session over, it is gone.
    store.release("h", now).await.unwrap();
    assert_eq!(store.load("h", now).await.unwrap(), None);

    // Released with a live browser session, it is that session's again; logout deletes it.
    store.create("j", b"j", deadline, IDLE, now).await.unwrap();
    assert!(store.keep("j", KEEP, now).await.unwrap());
    store.release("j", now).await.unwrap();
    assert!(
        store
            .load_and_touch("j", IDLE, now)
            .await
            .unwrap()
            .is_some()
    );
    assert!(!store.end_browser_session("j", now).await.unwrap());
    assert_eq!(store.load("j", now).await.unwrap(), None);

    // Slots: one per subject, moved by set, cleared only when still pointing where expected.
    let (a, b) = ("urn:pleo:company:a", "urn:pleo:company:b");
    assert_eq!(store.grant_slot(a).await.unwrap(), None);
    assert_eq!(store.set_grant_slot(a, "g").await.unwrap(), None);
    assert_eq!(
        store.set_grant_slot(a, "h").await.unwrap().as_deref(),
        Some("g")
    );
    assert_eq!(store.grant_slot(a).await.unwrap().as_deref(), Some("h"));
    assert!(
        !store.clear_grant_slot(a, Some("g")).await.unwrap(),
        "moved on"
    );
    assert!(store.clear_grant_slot(a, Some("h")).await.unwrap());
    assert_eq!(store.grant_slot(a).await.unwrap(), None);
    store.set_grant_slot(b, "j").await.unwrap();
    store.set_grant_slot(a, "g").await.unwrap();
    assert_eq!(
        store.grant_slots().await.unwrap(),
        [
            (a.to_owned(), "g".to_owned()),
            (b.to_owned(), "j".to_owned())
        ]
    );
    assert!(store.clear_grant_slot(a, None).await.unwrap());
    assert!(store.clear_grant_slot(b, None).await.unwrap());
    assert!(!store.clear_grant_slot(b, None).await.unwrap());
    assert!(store.grant_slots().await.unwrap().is_empty());
}

/// The shared rate budget: a burst, then a bounded wait, then refusals that use up nothing;
/// budgets are independent; time refills them; a pause holds every call until it ends and is
/// never shortened.
async fn budget_contract(store: &impl SessionBackend, now: u64) {
    let rate = BudgetRate {
        interval_ms: 1_000,
        burst: 2,
        max_wait_ms: 1_500,
    };
    let go = |ms| BudgetDecision::Go {
        wait: Duration::from_millis(ms),
    };
    let refused = |ms| BudgetDecision::Refused {
        retry_after: Duration::from_millis(ms),
    };
    let take = |key: &'static str, at: u64| store.take_budget(key, rate, at);
    assert_eq!(take("r", now).await.unwrap(), go(0));
    assert_eq!(take("r", now).await.unwrap(), go(0));
    assert_eq!(take("r", now).await.unwrap(), go(1_000), "queued");
    assert_eq!(
        take("r", now).await.unwrap(),
        refused(500),
        "2 s is too long"
    );
    assert_eq!(
        take("r", now).await.unwrap(),
        refused(500),
        "nothing used up"
    );
    assert_eq!(take("other", now).await.unwrap(), go(0), "independent");
    assert_eq!(take("r", now + 3_000).await.unwrap(), go(0), "refilled");

    store
        .pause_budget("r", rate, now + 60_000, now + 3_000)
        .await
        .unwrap();
    assert_eq!(take("r", now + 3_000).await.unwrap(), refused(55_500));
    store
        .pause_budget("r", rate, now + 10_000, now + 3_000)
        .await
        .unwrap();
    assert_eq!(
        take("r", now + 3_000).await.unwrap(),
        refused(55_500),
        "a shorter pause does not shorten a running one"
    );
    assert_eq!(take("r", now + 60_000).await.unwrap(), go(0), "pause over");
    assert_eq!(
        take("r", now + 60_000).await.unwrap(),
        go(1_000),
        "no burst"
    );
}

#[tokio::test]
async fn the_memory_backend_keeps_the_contract() {
    contract(&MemoryStore::new()).await;
}

#[tokio::test]
async fn the_redis_backend_keeps_the_contract() {
    let url = std::env::var("PLEO_GATEWAY_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "pleo-gateway-contract:{}:",
        crate::session::id::random_token()
    );
    let store = RedisStore::connect(&url, &prefix).await.unwrap();
    store
        .ping()
        .await
        .unwrap_or_else(|e| panic!("the contract test needs Redis at {url}: {e}"));
    contract(&store).await;
    for key in ["s", "t", "g", "h", "j"] {
        store.delete(key).await.unwrap();
    }
    store.clear_refresh_backoff("b").await.unwrap();
}
