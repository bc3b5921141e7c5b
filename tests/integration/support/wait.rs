//! The one way the tests wait for something: [`eventually`], a bounded poll. Fixed sleeps are
//! only for timing a scenario (a token's age, an outage's length), never for readiness.

use std::{fmt::Display, time::Duration};

use tokio::time::Instant;

/// Upper bound on any wait in a test: generous, only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The first pause between two checks; it doubles up to [`LONGEST_PAUSE`], so something that is
/// ready at once costs a few milliseconds and something slow costs few checks.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// What one check of [`eventually`] found: done (with what it produced), or not yet (with what
/// it saw instead, for the message when patience runs out).
pub trait Check {
    /// What [`eventually`] returns once the check passes.
    type Done;
    /// `Ok` when done; `Err` with a description of what was seen (may be empty) otherwise.
    fn outcome(self) -> Result<Self::Done, String>;
}

impl Check for bool {
    type Done = ();
    fn outcome(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T> Check for Option<T> {
    type Done = T;
    fn outcome(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Check for Result<T, E> {
    type Done = T;
    fn outcome(self) -> Result<T, String> {
        self.map_err(|seen| seen.to_string())
    }
}

/// Runs `check` until it passes and returns what it produced; panics with `what` (and the last
/// thing the check saw, when it says) once `patience` has run out. The check runs at least once,
/// and may itself panic when waiting longer is pointless (a process that exited, say).
///
/// A check is an async closure returning `bool`, `Option<T>` (`Some` = done) or `Result<T, E>`
/// (`Err` = not yet, with what was seen).
pub async fn eventually<C: Check>(
    what: &str,
    patience: Duration,
    mut check: impl AsyncFnMut() -> C,
) -> C::Done {
    let deadline = Instant::now() + patience;
    let mut pause = FIRST_PAUSE;
    loop {
        let seen = match check().await.outcome() {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            let seen = if seen.is_empty() {
                String::new()
            } else {
                format!("; last seen: {seen}")
            };
            panic!("timed out after {patience:?} waiting for {what}{seen}");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Sleeps until the gateway's refresh margin has been reached for a token issued at `issued`:
/// with the margin capped at half the lifetime, that is `lifetime / 2` plus a safety step.
pub async fn wait_until_refresh_due(issued: Instant, lifetime: Duration) {
    tokio::time::sleep_until(issued + lifetime / 2 + Duration::from_millis(300)).await;
}
