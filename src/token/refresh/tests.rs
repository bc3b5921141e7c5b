//! Unit tests of the refresh coordinator on paused time, and the fakes they share.
//!
//! Every test runs under `#[tokio::test(start_paused = true)]`: the coordinator reads
//! [`Clock::tokio`], the token endpoint is a [`Script`] of answers, and the sessions live in a
//! [`MemoryStore`] that several [`Sessions`] ("replicas") share. Waits inside the protocol
//! (lock polling, back-off, store retries, slow answers) cost no real time: Tokio jumps its clock
//! whenever every task is waiting. The protocol's own tests are in `protocol/tests.rs`, the
//! sweeper's in `proactive.rs`.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};

use super::{RefreshCoordinator, RefreshError};
use crate::{
    config::EncryptionKey,
    session::{
        Clock, Session, SessionData, SessionHasher, SessionId, Sessions, Store,
        memory_store::MemoryStore, seal::Sealer,
    },
    token::oauth::{TokenEndpoint, TokenError, TokenFuture, TokenSet},
};

/// `pleo.refresh_before_expiry` in these tests.
pub(super) const MARGIN: Duration = Duration::from_secs(60);
/// `pleo.request_timeout`: the lock lives 20 s, callers wait 15 s.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long callers wait for a refresh: the request timeout + 5 s.
pub(super) const CALLER_WAIT: Duration = Duration::from_secs(15);
/// The access tokens' lifetime (`expires_in`).
pub(super) const LIFETIME: Duration = Duration::from_secs(3600);

/// A scripted token endpoint: answers calls in order with the futures pushed, and records the
/// refresh tokens it was sent. A call with nothing scripted fails as unavailable.
#[derive(Default)]
pub(super) struct Script {
    answers: Mutex<VecDeque<TokenFuture<'static>>>,
    spent: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("spent", &self.spent())
            .finish()
    }
}

impl Script {
    /// Queues the answer to the next unanswered call; it runs only when that call comes.
    pub(super) fn then(
        &self,
        answer: impl Future<Output = Result<TokenSet, TokenError>> + Send + 'static,
    ) {
        self.answers.lock().unwrap().push_back(Box::pin(answer));
    }

    /// Queues an immediate answer.
    pub(super) fn answer(&self, result: Result<TokenSet, TokenError>) {
        self.then(std::future::ready(result));
    }

    /// The refresh tokens sent so far, in order.
    pub(super) fn spent(&self) -> Vec<String> {
        self.spent.lock().unwrap().clone()
    }

    pub(super) fn calls(&self) -> usize {
        self.spent.lock().unwrap().len()
    }
}

impl TokenEndpoint for Script {
    fn refresh<'a>(&'a self, refresh_token: &'a SecretString) -> TokenFuture<'a> {
        self.spent
            .lock()
            .unwrap()
            .push(refresh_token.expose_secret().to_owned());
        let next = self.answers.lock().unwrap().pop_front();
        next.unwrap_or_else(|| {
            Box::pin(std::future::ready(Err(TokenError::Unavailable(
                "unscripted call".into(),
            ))))
        })
    }
}

/// The `n`th pair Pleo issues: `at-n` / `rt-n`, valid for [`LIFETIME`].
pub(super) fn pair(n: u32) -> TokenSet {
    TokenSet {
        access_token: SecretString::from(format!("at-{n}")),
        refresh_token: Some(SecretString::from(format!("rt-{n}"))),
        expires_in: Some(LIFETIME),
        scopes: None,
    }
}

/// A session's access and refresh token, for assertions.
pub(super) fn tokens(session: &Session) -> (String, String) {
    (
        session.data.access_token.expose_secret().to_owned(),
        session
            .data
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
            .unwrap_or_default(),
    )
}

pub(super) fn owned(access: &str, refresh: &str) -> (String, String) {
    (access.to_owned(), refresh.to_owned())
}

/// Two replicas over one memory store, a scripted endpoint and a paused clock.
pub(super) struct Harness {
    pub clock: Clock,
    pub endpoint: Arc<Script>,
    /// Replica 1's sessions, used by `refresher`.
    pub sessions: Sessions,
    /// Another replica's sessions over the same store: to write, lock or look "from outside".
    pub other: Sessions,
    /// Replica 1's coordinator.
    pub refresher: Arc<RefreshCoordinator>,
}

impl Harness {
    /// Call inside a paused-time test.
    pub fn new() -> Self {
        let store = MemoryStore::new();
        let keys = vec![EncryptionKey::generate()];
        let replica = || {
            Sessions::new(
                Store::Memory(store.clone()),
                Sealer::new(&keys).unwrap(),
                SessionHasher::new(&keys),
                Duration::from_secs(24 * 3600),
                Duration::from_secs(7 * 24 * 3600),
            )
        };
        let (sessions, other) = (replica(), replica());
        let clock = Clock::tokio();
        let endpoint = Arc::new(Script::default());
        let refresher = Arc::new(RefreshCoordinator::with_seams(
            Arc::clone(&endpoint) as Arc<dyn TokenEndpoint>,
            sessions.clone(),
            MARGIN,
            REQUEST_TIMEOUT,
            clock,
        ));
        Self {
            clock,
            endpoint,
            sessions,
            other,
            refresher,
        }
    }

    /// Replica 2's coordinator: `other` sessions, the same endpoint and clock.
    pub fn second_replica(&self) -> Arc<RefreshCoordinator> {
        Arc::new(RefreshCoordinator::with_seams(
            Arc::clone(&self.endpoint) as Arc<dyn TokenEndpoint>,
            self.other.clone(),
            MARGIN,
            REQUEST_TIMEOUT,
            self.clock,
        ))
    }

    /// A new session holding `at-0` / `rt-0`, whose access token expires in `expires_in`.
    pub async fn session_expiring_in(&self, expires_in: Duration) -> (SessionId, Session) {
        let now = self.clock.now_ms();
        let data = SessionData {
            access_token: SecretString::from("at-0"),
            refresh_token: Some(SecretString::from("rt-0")),
            access_expires_at_ms: now + u64::try_from(expires_in.as_millis()).unwrap(),
            access_lifetime_ms: u64::try_from(LIFETIME.as_millis()).unwrap(),
            subject: Some("urn:pleo:company:test".into()),
            scopes: vec![],
            created_at_ms: now,
        };
        self.sessions.create(data).await.unwrap()
    }

    /// A session inside the refresh margin (its token expires in 30 s).
    pub async fn due_session(&self) -> Session {
        self.session_expiring_in(Duration::from_secs(30)).await.1
    }

    /// What the store holds for `session` now, read as another replica would.
    pub async fn stored(&self, session: &Session) -> Option<Session> {
        self.other.reload(&session.key).await.unwrap()
    }
}

/// `fresh` from `n` concurrent callers, results in spawn order.
pub(super) async fn fresh_from(
    refresher: &Arc<RefreshCoordinator>,
    session: &Session,
    n: usize,
) -> Vec<Result<Session, RefreshError>> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (refresher, session) = (Arc::clone(refresher), session.clone());
            tokio::spawn(async move { refresher.fresh(session).await })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_is_handed_back_without_asking_the_endpoint() {
    let h = Harness::new();
    let (_, session) = h.session_expiring_in(MARGIN * 2).await;
    let fresh = h.refresher.fresh(session).await.unwrap();
    assert_eq!(tokens(&fresh), owned("at-0", "rt-0"));
    assert_eq!(h.endpoint.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_on_one_replica_cause_one_token_request() {
    let h = Harness::new();
    let session = h.due_session().await;
    h.endpoint.then(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(pair(1))
    });
    let results = fresh_from(&h.refresher, &session, 100).await;
    for result in results {
        assert_eq!(tokens(&result.unwrap()), owned("at-1", "rt-1"));
    }
    assert_eq!(h.endpoint.spent(), ["rt-0"]);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_on_two_replicas_cause_one_token_request() {
    let h = Harness::new();
    let replica_2 = h.second_replica();
    let session = h.due_session().await;
    h.endpoint.then(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(pair(1))
    });
    let (ones, twos) = tokio::join!(
        fresh_from(&h.refresher, &session, 50),
        fresh_from(&replica_2, &session, 50)
    );
    for result in ones.into_iter().chain(twos) {
        assert_eq!(tokens(&result.unwrap()), owned("at-1", "rt-1"));
    }
    assert_eq!(h.endpoint.spent(), ["rt-0"]);
}

#[tokio::test(start_paused = true)]
async fn queued_callers_share_a_transient_failure_instead_of_retrying() {
    let h = Harness::new();
    let session = h.due_session().await;
    h.endpoint.then(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Err(TokenError::Unavailable("HTTP 503".into()))
    });
    let results = fresh_from(&h.refresher, &session, 20).await;
    // Every caller gets that attempt's own answer — not a second look at the store that then
    // finds the back-off it recorded.
    for result in results {
        assert!(
            matches!(&result, Err(RefreshError::Unavailable { reason, retry_after })
                if reason.contains("HTTP 503") && *retry_after == Duration::from_secs(1)),
            "{result:?}"
        );
    }
    assert_eq!(h.endpoint.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_access_token_is_replaced_once_and_a_stale_rejection_costs_nothing() {
    let h = Harness::new();
    // Not due: Pleo answered 401 to a token the gateway believed valid.
    let (_, session) = h.session_expiring_in(LIFETIME).await;
    h.endpoint.then(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(pair(1))
    });
    let rejected = || {
        h.refresher
            .refresh_after_rejection(session.key.clone(), "at-0".into())
    };
    let (a, b) = tokio::join!(rejected(), rejected());
    assert_eq!(tokens(&a.unwrap()), owned("at-1", "rt-1"));
    assert_eq!(tokens(&b.unwrap()), owned("at-1", "rt-1"));
    // A request that still carried at-0 gets the stored at-1, and Pleo is not asked again.
    let late = rejected().await.unwrap();
    assert_eq!(tokens(&late), owned("at-1", "rt-1"));
    assert_eq!(h.endpoint.spent(), ["rt-0"]);
}

#[tokio::test(start_paused = true)]
async fn a_session_logged_out_meanwhile_is_gone() {
    let h = Harness::new();
    let session = h.due_session().await;
    h.other.delete(&session.key).await.unwrap();
    let result = h.refresher.fresh(session).await;
    assert!(matches!(result, Err(RefreshError::Gone)), "{result:?}");
    assert_eq!(h.endpoint.calls(), 0);
}
