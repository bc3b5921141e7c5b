//! What `/readyz` says, and why.
//!
//! Readiness answers one question for a load balancer: should this replica get new traffic?
//! The answer is no only in two phases of the process's life:
//!
//! - **starting**: until the session store has answered once. A replica whose Redis URL,
//!   password or network policy is wrong never becomes ready, so a bad rollout stops at its
//!   first pod while the old replicas keep serving.
//! - **draining**: from the shutdown signal on (see `shutdown.rs`): endpoints are removed while
//!   the gateway still serves, before its listener closes.
//!
//! A store outage *after* start-up does not make the replica unready. Every replica shares the
//! same Redis, so taking them all out of the load balancer would send the traffic nowhere
//! better: it would turn a partial outage — store-backed requests get a 503 with `Retry-After`,
//! while logins still start, public paths and the app's unauthenticated routes still work and
//! the one-second session cache still answers — into a total one, with the load balancer's own
//! error page instead of the gateway's, and endpoints coming back only a probe period after
//! Redis does. The store's health is in the `/readyz` body and in the logs (one line per change).

use std::{
    fmt::Display,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

/// How long one store check may take: the store's own command bound, so a probe's
/// `timeoutSeconds` of 3 always gets an answer.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the process is in its life, as far as readiness goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The session store has not answered yet.
    Starting,
    /// Taking traffic.
    Serving,
    /// A shutdown signal arrived: still serving, but no new traffic should come.
    Draining,
}

impl Phase {
    /// The name in the `/readyz` body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Serving => "serving",
            Self::Draining => "draining",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Starting,
            1 => Self::Serving,
            _ => Self::Draining,
        }
    }
}

/// What a store check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    /// It answered.
    Reachable,
    /// It answered with an error, or the connection failed.
    Unreachable,
    /// It did not answer in time.
    Timeout,
}

impl StoreHealth {
    /// The name in the `/readyz` body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reachable => "reachable",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
        }
    }
}

/// The readiness state shared by the `/readyz` handler and the shutdown sequence. Cheap to
/// clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    phase: Arc<AtomicU8>,
    /// The last [`StoreHealth`] seen, as 1 + its index; 0 before the first check.
    store: Arc<AtomicU8>,
}

impl Readiness {
    /// A process that has just started.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// From now on `/readyz` fails; nothing else changes.
    pub fn start_draining(&self) {
        self.phase.store(2, Ordering::Release);
    }

    /// Awaits one store check (`ping`: the session store's), within [`STORE_CHECK_TIMEOUT`],
    /// and takes in the answer. The store is passed as its ping so this module stays below the
    /// storage layer.
    pub async fn check<E: Display>(
        &self,
        ping: impl Future<Output = Result<(), E>>,
    ) -> (Phase, StoreHealth) {
        let health = match tokio::time::timeout(STORE_CHECK_TIMEOUT, ping).await {
            Ok(Ok(())) => StoreHealth::Reachable,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "readiness: session store check failed");
                StoreHealth::Unreachable
            }
            Err(_) => StoreHealth::Timeout,
        };
        (self.observe(health), health)
    }

    /// Ends start-up as soon as the store answers, whether or not anything probes `/readyz`
    /// meanwhile: asks it now, then with growing pauses (up to 5 s) until it answers or a
    /// shutdown begins. Needs a Tokio runtime.
    pub fn spawn_start_up_check<F, E>(&self, ping: impl Fn() -> F + Send + 'static)
    where
        F: Future<Output = Result<(), E>> + Send,
        E: Display,
    {
        let readiness = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(250);
            while readiness.phase() == Phase::Starting {
                if readiness.check(ping()).await.1 == StoreHealth::Reachable {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Takes in a store check and returns the phase after it: the first reachable answer ends
    /// start-up. A change of store health is logged once, not on every probe.
    pub fn observe(&self, health: StoreHealth) -> Phase {
        if health == StoreHealth::Reachable {
            // Starting → Serving; never out of Draining.
            let _ = self
                .phase
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
        }
        let code = match health {
            StoreHealth::Reachable => 1,
            StoreHealth::Unreachable => 2,
            StoreHealth::Timeout => 3,
        };
        let before = self.store.swap(code, Ordering::AcqRel);
        let phase = self.phase();
        if before != code {
            match (health, before) {
                (StoreHealth::Reachable, 0) => {}
                (StoreHealth::Reachable, _) => {
                    tracing::info!("readiness: the session store answers again");
                }
                _ => tracing::warn!(
                    store_status = health.as_str(),
                    phase = phase.as_str(),
                    "readiness: the session store does not answer; requests that need it get 503 with Retry-After"
                ),
            }
        }
        phase
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_the_store_answered_once_and_until_draining() {
        let readiness = Readiness::new();
        assert_eq!(readiness.phase(), Phase::Starting);
        assert_eq!(readiness.observe(StoreHealth::Unreachable), Phase::Starting);
        assert_eq!(readiness.observe(StoreHealth::Timeout), Phase::Starting);
        assert_eq!(readiness.observe(StoreHealth::Reachable), Phase::Serving);
        // A later outage keeps the replica in the load balancer.
        assert_eq!(readiness.observe(StoreHealth::Unreachable), Phase::Serving);
        assert_eq!(readiness.observe(StoreHealth::Reachable), Phase::Serving);
        readiness.clone().start_draining();
        assert_eq!(readiness.phase(), Phase::Draining);
        // The store answering never undoes draining.
        assert_eq!(readiness.observe(StoreHealth::Reachable), Phase::Draining);
    }

    /// Start-up ends when the store first answers, without any `/readyz` probe.
    #[tokio::test(start_paused = true)]
    async fn the_start_up_check_retries_until_the_store_answers() {
        let readiness = Readiness::new();
        let calls = Arc::new(AtomicU8::new(0));
        readiness.spawn_start_up_check({
            let calls = Arc::clone(&calls);
            move || {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move { if call < 2 { Err("refused") } else { Ok(()) } }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(readiness.phase(), Phase::Starting);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(readiness.phase(), Phase::Serving);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "no checks after start-up");
    }

    #[test]
    fn draining_before_start_up_finished_stays_draining() {
        let readiness = Readiness::new();
        readiness.start_draining();
        assert_eq!(readiness.observe(StoreHealth::Reachable), Phase::Draining);
    }
}
