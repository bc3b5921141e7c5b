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

use std::sync::{
    Arc,
    atomic::{AtomicU8, Ordering},
};

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

    #[test]
    fn draining_before_start_up_finished_stays_draining() {
        let readiness = Readiness::new();
        readiness.start_draining();
        assert_eq!(readiness.observe(StoreHealth::Reachable), Phase::Draining);
    }
}
