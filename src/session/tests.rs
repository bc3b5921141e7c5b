//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! Idle and absolute timeouts and the per-replica cache, on paused time: hours pass in
//! microseconds, and every boundary is checked to the millisecond.

use std::time::Duration;

use secrecy::SecretString;

use super::{
    Clock, SessionData, SessionHasher, SessionId, Sessions, Store, memory_store::MemoryStore,
    seal::Sealer,
};
use crate::config::EncryptionKey;

const IDLE: Duration = Duration::from_secs(8 * 3600);
const ABSOLUTE: Duration = Duration::from_secs(30 * 24 * 3600);

fn sessions() -> Sessions {
    let keys = [EncryptionKey::generate()];
    Sessions::new(
        Store::Memory(MemoryStore::new()),
        Sealer::new(&keys).unwrap(),
        SessionHasher::new(&keys),
        IDLE,
        ABSOLUTE,
    )
    .with_clock(Clock::tokio())
}

fn data() -> SessionData {
    SessionData {
        access_token: SecretString::from("at"),
        refresh_token: Some(SecretString::from("rt")),
        access_expires_at_ms: u64::MAX,
        access_lifetime_ms: 900_000,
        subject: Some("urn:pleo:company:1".into()),
        scopes: vec!["users:read".into()],
        created_at_ms: 0,
    }
}

async fn advance(by: Duration) {
    tokio::time::advance(by).await;
}

async fn alive(sessions: &Sessions, id: &SessionId) -> bool {
    sessions.load_cached(id).await.unwrap().is_some()
}

#[tokio::test(start_paused = true)]
async fn an_unused_session_ends_after_the_idle_timeout_and_use_slides_it() {
    let sessions = sessions();
    let (id, _) = sessions.create(data()).await.unwrap();
    advance(IDLE - Duration::from_millis(1)).await;
    assert!(alive(&sessions, &id).await, "1 ms before the idle timeout");
    // That use slid the expiry: another almost-full idle period passes.
    advance(IDLE - Duration::from_millis(1)).await;
    assert!(
        alive(&sessions, &id).await,
        "the idle timeout counts from the last use"
    );
    advance(IDLE).await;
    assert!(!alive(&sessions, &id).await, "unused for the idle timeout");
}

#[tokio::test(start_paused = true)]
async fn even_a_busy_session_ends_at_the_absolute_timeout() {
    let sessions = sessions();
    let (id, session) = sessions.create(data()).await.unwrap();
    let step = IDLE / 2;
    let mut used_for = Duration::ZERO;
    while used_for + step < ABSOLUTE {
        advance(step).await;
        used_for += step;
        assert!(alive(&sessions, &id).await, "in use after {used_for:?}");
    }
    let left = ABSOLUTE - used_for;
    advance(left - Duration::from_millis(1)).await;
    assert!(
        alive(&sessions, &id).await,
        "1 ms before the absolute deadline"
    );
    advance(Duration::from_millis(1)).await;
    // Even the copy cached a millisecond ago is not used past the deadline.
    assert!(!alive(&sessions, &id).await, "at the absolute deadline");
    assert!(sessions.reload(&session.key).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_session_read_within_the_last_second_costs_no_store_round_trip() {
    let sessions = sessions();
    let (id, session) = sessions.create(data()).await.unwrap();
    assert!(alive(&sessions, &id).await);
    // Gone from the store behind this replica's back (logged out on another replica).
    sessions.store().delete(session.key.as_str()).await.unwrap();
    advance(Duration::from_millis(900)).await;
    assert!(alive(&sessions, &id).await, "served from the cache");
    advance(Duration::from_millis(200)).await;
    assert!(
        !alive(&sessions, &id).await,
        "after a second, the store is asked again"
    );
}
