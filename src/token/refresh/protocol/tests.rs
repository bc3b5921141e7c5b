//! The cross-replica protocol on paused time: what each answer of the token endpoint does to
//! the session, the back-off every replica honours, a lock held elsewhere, and a store that
//! fails between Pleo's rotation and the write. Fakes and harness: `refresh/tests.rs`.

use std::time::Duration;

use secrecy::SecretString;
use tokio::time::{Instant, advance};

use super::super::{
    RefreshError, Want,
    tests::{CALLER_WAIT, Harness, LIFETIME, MARGIN, owned, pair, tokens},
};
use crate::{session::SessionData, telemetry::RefreshOutcome, token::oauth::TokenError};

/// The stored session's data with another pair, as another replica's refresh would write it.
fn with_pair(data: &SessionData, n: u32) -> SessionData {
    let mut data = data.clone();
    data.access_token = SecretString::from(format!("at-{n}"));
    data.refresh_token = Some(SecretString::from(format!("rt-{n}")));
    data.access_expires_at_ms += 3_600_000;
    data
}

fn retry_after(result: &Result<crate::session::Session, RefreshError>) -> Duration {
    match result {
        Err(RefreshError::Unavailable { retry_after, .. }) => *retry_after,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_rotated_pair_is_stored_before_anyone_uses_it_and_the_next_refresh_spends_it() {
    let h = Harness::new();
    let session = h.due_session().await;
    h.endpoint.answer(Ok(pair(1)));
    let refreshed = h.refresher.fresh(session.clone()).await.unwrap();
    // The caller gets the pair only once the store has it, under the version it was written at.
    let stored = h.stored(&session).await.unwrap();
    assert_eq!(tokens(&refreshed), owned("at-1", "rt-1"));
    assert_eq!(tokens(&stored), owned("at-1", "rt-1"));
    assert_eq!(stored.version, refreshed.version);
    assert_eq!(refreshed.version, session.version + 1);
    assert_eq!(
        stored.data.access_expires_at_ms,
        h.clock.now_ms() + 3_600_000
    );
    // An hour later (inside the margin again) the rotated refresh token is the one spent.
    advance(LIFETIME - Duration::from_secs(30)).await;
    h.endpoint.answer(Ok(pair(2)));
    let again = h.refresher.fresh(refreshed).await.unwrap();
    assert_eq!(tokens(&again), owned("at-2", "rt-2"));
    assert_eq!(h.endpoint.spent(), ["rt-0", "rt-1"]);
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_ends_the_session() {
    let h = Harness::new();
    let session = h.due_session().await;
    h.endpoint.answer(Err(TokenError::Rejected {
        error: "invalid_grant".into(),
    }));
    let result = h.refresher.fresh(session.clone()).await;
    assert!(
        matches!(&result, Err(RefreshError::Ended(e)) if e == "invalid_grant"),
        "{result:?}"
    );
    assert!(h.stored(&session).await.is_none(), "session deleted");
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_keeps_a_newer_pair_another_replica_stored_meanwhile() {
    let h = Harness::new();
    let session = h.due_session().await;
    // While our request is out, another replica (not holding our lock) rotates and stores
    // pair 7; Pleo then rejects our now-spent rt-0.
    let (other, key, data) = (h.other.clone(), session.key.clone(), session.data.clone());
    h.endpoint.then(async move {
        let current = other.reload(&key).await.unwrap().unwrap();
        other
            .replace(&key, current.version, &with_pair(&data, 7))
            .await
            .unwrap();
        Err(TokenError::Rejected {
            error: "invalid_grant".into(),
        })
    });
    let kept = h.refresher.fresh(session.clone()).await.unwrap();
    assert_eq!(tokens(&kept), owned("at-7", "rt-7"));
    assert_eq!(
        tokens(&h.stored(&session).await.unwrap()),
        owned("at-7", "rt-7")
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_keep_the_session() {
    let failures = [
        TokenError::Unavailable("HTTP 503".into()),
        TokenError::Unavailable("HTTP 429".into()),
        TokenError::Timeout,
        TokenError::Unavailable("error sending request: connection refused".into()),
        TokenError::InvalidResponse("access_token".into()),
    ];
    for failure in failures {
        let h = Harness::new();
        let session = h.due_session().await;
        let shown = failure.to_string();
        h.endpoint.answer(Err(failure));
        let result = h.refresher.fresh(session.clone()).await;
        assert_eq!(retry_after(&result), Duration::from_secs(1), "{shown}");
        let stored = h.stored(&session).await.expect(&shown);
        assert_eq!(tokens(&stored), owned("at-0", "rt-0"), "{shown}");
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_1_2_4_seconds_up_to_a_minute() {
    let h = Harness::new();
    let session = h.due_session().await;
    let waits = [1, 2, 4, 8, 16, 32, 60, 60].map(Duration::from_secs);
    for (attempt, wait) in waits.into_iter().enumerate() {
        h.endpoint
            .answer(Err(TokenError::Unavailable("HTTP 503".into())));
        let result = h.refresher.fresh(session.clone()).await;
        assert_eq!(retry_after(&result), wait, "attempt {attempt}");
        assert_eq!(h.endpoint.calls(), attempt + 1);
        // Until the wait is over, nobody asks Pleo: callers are told how long is left.
        advance(wait - Duration::from_millis(1)).await;
        let early = h.refresher.fresh(session.clone()).await;
        assert_eq!(retry_after(&early), Duration::from_millis(1));
        // Another replica honours the same back-off.
        let elsewhere = h.second_replica().fresh(session.clone()).await;
        assert_eq!(retry_after(&elsewhere), Duration::from_millis(1));
        assert_eq!(h.endpoint.calls(), attempt + 1);
        advance(Duration::from_millis(1)).await;
    }
    // A success clears the back-off: the next failure waits 1 s again.
    h.endpoint.answer(Ok(pair(1)));
    let refreshed = h.refresher.fresh(session).await.unwrap();
    advance(LIFETIME - Duration::from_secs(30)).await;
    h.endpoint
        .answer(Err(TokenError::Unavailable("HTTP 503".into())));
    let result = h.refresher.fresh(refreshed).await;
    assert_eq!(retry_after(&result), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_lock_held_by_another_replica_is_waited_out_and_its_pair_used() {
    let h = Harness::new();
    let session = h.due_session().await;
    assert!(
        h.other
            .lock_refresh(&session.key, "replica-2", Duration::from_secs(20))
            .await
            .unwrap()
    );
    let (other, key, data) = (h.other.clone(), session.key.clone(), session.data.clone());
    let replica_2 = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let current = other.reload(&key).await.unwrap().unwrap();
        other
            .replace(&key, current.version, &with_pair(&data, 7))
            .await
            .unwrap();
        other.unlock_refresh(&key, "replica-2").await.unwrap();
    });
    let started = Instant::now();
    let fresh = h.refresher.fresh(session).await.unwrap();
    replica_2.await.unwrap();
    assert_eq!(tokens(&fresh), owned("at-7", "rt-7"));
    assert_eq!(h.endpoint.calls(), 0, "the waiting replica sent nothing");
    // Found by polling (20 ms doubling to 250 ms): within one poll of the write.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_millis(2250),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lock_held_by_another_replica_that_stores_nothing_answers_unavailable_in_time() {
    let h = Harness::new();
    let session = h.due_session().await;
    let ttl = Duration::from_secs(60);
    assert!(
        h.other
            .lock_refresh(&session.key, "replica-2", ttl)
            .await
            .unwrap()
    );
    let started = Instant::now();
    let result = h.refresher.fresh(session.clone()).await;
    assert!(
        matches!(result, Err(RefreshError::Unavailable { .. })),
        "{result:?}"
    );
    assert_eq!(started.elapsed(), CALLER_WAIT);
    assert_eq!(h.endpoint.calls(), 0);
    let stored = h.stored(&session).await.unwrap();
    assert_eq!(tokens(&stored), owned("at-0", "rt-0"), "never a logout");
}

#[tokio::test(start_paused = true)]
async fn the_lock_is_held_while_pleo_answers_and_released_after() {
    let h = Harness::new();
    let session = h.due_session().await;
    h.endpoint.then(async {
        tokio::time::sleep(Duration::from_secs(8)).await;
        Ok(pair(1))
    });
    let refresher = std::sync::Arc::clone(&h.refresher);
    let refresh = tokio::spawn({
        let session = session.clone();
        async move { refresher.fresh(session).await }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ttl = Duration::from_secs(20);
    assert!(!h.other.lock_refresh(&session.key, "x", ttl).await.unwrap());
    refresh.await.unwrap().unwrap();
    assert!(h.other.lock_refresh(&session.key, "x", ttl).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_store_failure_after_rotation_is_retried_and_the_pair_kept() {
    let h = Harness::new();
    let session = h.due_session().await;
    h.sessions.fail_next_writes(3);
    h.endpoint.answer(Ok(pair(1)));
    let started = Instant::now();
    let refreshed = h.refresher.fresh(session.clone()).await.unwrap();
    assert_eq!(tokens(&refreshed), owned("at-1", "rt-1"));
    assert_eq!(
        tokens(&h.stored(&session).await.unwrap()),
        owned("at-1", "rt-1")
    );
    // Retried after 100, 200 and 400 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(700));
    assert_eq!(h.endpoint.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_longer_than_callers_wait_still_keeps_the_pair() {
    let h = Harness::new();
    let session = h.due_session().await;
    // 100 ms doubling to 2 s between tries: 20 failures take 33.1 s, past the callers' 15 s.
    h.sessions.fail_next_writes(20);
    h.endpoint.answer(Ok(pair(1)));
    let result = h.refresher.fresh(session.clone()).await;
    assert!(
        matches!(result, Err(RefreshError::Unavailable { .. })),
        "{result:?}"
    );
    // The refresh goes on behind the caller's back, holding the lock, so no replica can spend
    // the dead rt-0 in the gap.
    let ttl = Duration::from_secs(20);
    assert!(!h.other.lock_refresh(&session.key, "x", ttl).await.unwrap());
    assert_eq!(
        tokens(&h.stored(&session).await.unwrap()),
        owned("at-0", "rt-0")
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        tokens(&h.stored(&session).await.unwrap()),
        owned("at-1", "rt-1")
    );
    assert!(h.other.lock_refresh(&session.key, "x", ttl).await.unwrap());
    assert_eq!(h.endpoint.spent(), ["rt-0"]);
}

/// Runs the protocol once for a token due within the margin and returns the outcome it named
/// (what the metrics and the log line say).
async fn outcome_of(h: &Harness, session: &crate::session::Session) -> Option<RefreshOutcome> {
    let mut outcome = None;
    let want = Want::Fresh { margin: MARGIN };
    let _ = h
        .refresher
        .refresh_across_replicas(&session.key, &want, &mut outcome)
        .await;
    outcome
}

#[tokio::test(start_paused = true)]
async fn each_way_out_of_the_protocol_names_its_outcome() {
    use RefreshOutcome::*;
    let h = Harness::new();
    let session = h.due_session().await;
    h.endpoint
        .answer(Err(TokenError::Unavailable("HTTP 503".into())));
    assert_eq!(outcome_of(&h, &session).await, Some(Transient));
    assert_eq!(outcome_of(&h, &session).await, Some(Backoff));
    advance(Duration::from_secs(1)).await;
    h.endpoint.answer(Ok(pair(1)));
    assert_eq!(outcome_of(&h, &session).await, Some(Success));
    assert_eq!(outcome_of(&h, &session).await, Some(NotNeeded));

    // Another replica holds the lock and stores pair 7 meanwhile: waited for.
    let h = Harness::new();
    let session = h.due_session().await;
    assert!(
        h.other
            .lock_refresh(&session.key, "r2", Duration::from_secs(20))
            .await
            .unwrap()
    );
    let (other, key, data) = (h.other.clone(), session.key.clone(), session.data.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let current = other.reload(&key).await.unwrap().unwrap();
        other
            .replace(&key, current.version, &with_pair(&data, 7))
            .await
            .unwrap();
    });
    assert_eq!(outcome_of(&h, &session).await, Some(Waited));

    // ... and one that stores nothing: the wait runs out.
    let h = Harness::new();
    let session = h.due_session().await;
    assert!(
        h.other
            .lock_refresh(&session.key, "r2", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(outcome_of(&h, &session).await, Some(LockTimeout));

    // Pleo rejects a refresh token another replica has already rotated: its pair is used.
    let h = Harness::new();
    let session = h.due_session().await;
    let (other, key, data) = (h.other.clone(), session.key.clone(), session.data.clone());
    h.endpoint.then(async move {
        let current = other.reload(&key).await.unwrap().unwrap();
        other
            .replace(&key, current.version, &with_pair(&data, 7))
            .await
            .unwrap();
        Err(TokenError::Rejected {
            error: "invalid_grant".into(),
        })
    });
    assert_eq!(outcome_of(&h, &session).await, Some(ReuseAvoided));

    // A session without a refresh token ends.
    let h = Harness::new();
    let session = h.due_session().await;
    let mut data = SessionData::clone(&session.data);
    data.refresh_token = None;
    h.other
        .replace(&session.key, session.version, &data)
        .await
        .unwrap();
    assert_eq!(outcome_of(&h, &session).await, Some(NoRefreshToken));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_refresh_token_is_named_rejected() {
    let h = Harness::new();
    let session = h.due_session().await;
    h.endpoint.answer(Err(TokenError::Rejected {
        error: "invalid_grant".into(),
    }));
    assert_eq!(
        outcome_of(&h, &session).await,
        Some(RefreshOutcome::Rejected)
    );
}
