//! "Now" in unix milliseconds, from the system clock or, in tests, from Tokio's pausable clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds, from the system clock. Same as `Clock::System.now_ms()`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where time-based decisions read "now" in unix milliseconds: the system clock in production,
/// or Tokio's clock so that tests can drive them with paused time.
///
/// Token expiry and refresh back-off are unix-ms instants (they are stored, and compared by
/// every replica), so they cannot simply follow `tokio::time::Instant`, which paused-time tests
/// control. `Tokio` bridges the two: the unix time when it was made plus the Tokio time elapsed
/// since. Under `#[tokio::test(start_paused = true)]` it moves only with `tokio::time::advance`
/// or auto-advanced sleeps, and always in step with `tokio::time::sleep` and `timeout`.
///
/// Production uses `System`, not `Tokio`: session expiry is written by code that reads the
/// system clock ([`now_ms`]) and back-off deadlines are shared with other replicas, and a
/// monotonic clock anchored at start-up would drift from them by whatever NTP corrects over the
/// life of the process. Durations measured within one process (how long to poll a lock, how
/// long to retry a write) need no `Clock`: they use `tokio::time::Instant`, which paused time
/// controls too.
///
/// An enum rather than a trait: two behaviours, `Copy`, nothing generic to thread through.
/// `Sessions` (idle and absolute timeouts) and the refresh coordinator take a `Clock`; the
/// other callers of [`now_ms`] can move to it when they want paused-time tests.
#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system clock ([`now_ms`]).
    #[default]
    System,
    /// `unix_ms_at_start` plus the Tokio time elapsed since `start`; see [`Clock::tokio`].
    Tokio {
        /// Unix ms when the clock was made.
        unix_ms_at_start: u64,
        /// Tokio's instant when the clock was made.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows Tokio's (pausable) time from the current unix time on. Call it
    /// inside the runtime whose clock it should follow (e.g. in a paused-time test).
    pub fn tokio() -> Self {
        Self::Tokio {
            unix_ms_at_start: now_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        match self {
            Self::System => now_ms(),
            Self::Tokio {
                unix_ms_at_start,
                start,
            } => unix_ms_at_start
                .saturating_add(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }
}
