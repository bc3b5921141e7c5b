//! Giving memory back after a burst.
//!
//! A burst of connections (a few hundred clients, each with a pooled app or Pleo connection)
//! costs about 40 KiB per connection in hyper's buffers and channels. When the burst ends the
//! client connections close, the pooled ones once idle for their pool's idle timeout (the
//! caller passes the longest), and the memory returns to
//! glibc's free lists — but not to the system: freed chunks scattered through the
//! heap keep their pages resident, and the process stayed at its peak for good (about 44 MiB
//! after a c256 benchmark, against 15 MiB at start). glibc's `malloc_trim` hands every wholly
//! free page back. It walks all arenas under their locks, so it runs only once the gateway has
//! gone quiet after serving: never under load, once per burst.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Requests served since start (all listeners).
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Counts a request (the accept loop calls this once per request head).
pub fn note_request() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// How often [`release_after_bursts`] looks; a burst's memory goes back within two of these
/// after its last request, and once more after the pools' idle connections have closed.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Runs for ever: once requests stop (a whole period without one after some were served), and
/// again when the pools' idle connections have timed out, returns free heap pages to the
/// system.
pub async fn release_after_bursts(every: Duration, pools_idle: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = Quiet {
        again_after: u32::try_from(pools_idle.as_millis() / every.as_millis().max(1))
            .unwrap_or(u32::MAX)
            .saturating_add(2),
        ..Quiet::default()
    };
    loop {
        tick.tick().await;
        if quiet.observe(REQUESTS.load(Ordering::Relaxed)) {
            let released = trim();
            tracing::debug!(
                released,
                "traffic stopped; free heap pages returned to the system"
            );
        }
    }
}

/// Decides when to trim from successive readings of the request counter.
#[derive(Debug, Default)]
struct Quiet {
    last_seen: u64,
    /// Readings in a row without a new request, since requests were last served.
    quiet_for: Option<u32>,
    /// The second trim comes this many quiet readings in (after the pools' idle timeouts).
    again_after: u32,
}

impl Quiet {
    /// True at the first reading without new requests after some were served, and at the
    /// `again_after`th such reading in a row.
    fn observe(&mut self, requests: u64) -> bool {
        let moved = requests != self.last_seen;
        self.last_seen = requests;
        if moved {
            self.quiet_for = Some(0);
            return false;
        }
        let Some(quiet_for) = self.quiet_for.as_mut() else {
            return false;
        };
        *quiet_for = quiet_for.saturating_add(1);
        *quiet_for == 1 || *quiet_for == self.again_after
    }
}

/// `malloc_trim(0)`: whether glibc gave memory back. Elsewhere (musl, other systems) nothing.
#[allow(unsafe_code)]
fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas under their
        // locks, which every concurrent malloc and free respect.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_burst_and_never_under_load() {
        let mut quiet = Quiet {
            again_after: 4,
            ..Quiet::default()
        };
        // Idle from the start: nothing to give back.
        assert!(!quiet.observe(0));
        assert!(!quiet.observe(0));
        // Under load the counter moves at every reading.
        assert!(!quiet.observe(100));
        assert!(!quiet.observe(250));
        // The first quiet period after the burst trims, then once more when the pools have
        // let their idle connections go, and then never until the next burst.
        let after: Vec<bool> = (0..8).map(|_| quiet.observe(250)).collect();
        assert_eq!(
            after,
            [true, false, false, true, false, false, false, false]
        );
        // A second burst, then quiet: again.
        assert!(!quiet.observe(260));
        assert!(quiet.observe(260));
    }
}
