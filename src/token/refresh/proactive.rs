//! The background refresh of recently used sessions (`pleo.proactive_refresh`, off by default).
//!
//! Every second it looks at the sessions requests on this replica used in the last five minutes
//! (the per-replica session cache remembers them) and refreshes those whose token comes within
//! twice the refresh margin of expiring — so user requests rarely wait on the token endpoint.
//! It goes through the same single-flight and store lock as request-driven refreshes, so it
//! can never spend a refresh token a request is spending. Sessions nobody uses are left alone.

use std::{sync::Arc, time::Duration};

use super::{RefreshCoordinator, Want, needs_refresh_within};

/// How often the background refresh looks for sessions to refresh.
const PROACTIVE_SWEEP: Duration = Duration::from_secs(1);
/// Sessions used within this window count as active for background refresh.
const PROACTIVE_ACTIVE_WINDOW: Duration = Duration::from_secs(300);

impl RefreshCoordinator {
    /// Starts the background refresh of recently used sessions (`pleo.proactive_refresh`): every
    /// second, sessions a request used in the last five minutes whose token comes within twice
    /// the refresh margin of expiring are refreshed, through the same lock and single-flight as
    /// request-driven refreshes. The task ends when the coordinator is dropped.
    pub fn spawn_proactive_refresh(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROACTIVE_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let margin = this.margin * 2;
                let now = this.clock.now_ms();
                for session in this.sessions.recently_used(PROACTIVE_ACTIVE_WINDOW) {
                    if !needs_refresh_within(&session, now, margin) {
                        continue;
                    }
                    if let Err(e) = this
                        .refresh(session.key.clone(), Want::Fresh { margin })
                        .await
                    {
                        tracing::debug!(session = session.key.short(), error = %e, "background refresh did not succeed");
                    }
                }
            }
        });
    }
}

/// The sweeper on paused time (harness: `refresh/tests.rs`). Which sessions count as used is
/// the session cache's business (`session/cache.rs`, real time); a session counts as used here
/// once a request loaded it through [`crate::session::Sessions::load_cached`].
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::sleep;

    use super::super::tests::{Harness, MARGIN, owned, pair, tokens};

    #[tokio::test(start_paused = true)]
    async fn a_used_session_is_refreshed_before_requests_would_find_it_due() {
        let h = Harness::new();
        // 90 s left: outside the margin (60 s), so requests would not refresh yet, but within
        // twice it, where the sweeper does.
        let (id, session) = h.session_expiring_in(MARGIN + MARGIN / 2).await;
        assert!(!h.refresher.needs_refresh(&session, h.clock.now_ms()));
        h.sessions.load_cached(&id).await.unwrap();
        h.endpoint.answer(Ok(pair(1)));
        h.refresher.spawn_proactive_refresh();
        sleep(Duration::from_millis(1500)).await;
        assert_eq!(h.endpoint.spent(), ["rt-0"]);
        let stored = h.stored(&session).await.unwrap();
        assert_eq!(tokens(&stored), owned("at-1", "rt-1"));
        // The new token is an hour from expiry: later sweeps send nothing.
        sleep(Duration::from_secs(30)).await;
        assert_eq!(h.endpoint.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_session_is_refreshed_once_it_comes_within_twice_the_margin() {
        let h = Harness::new();
        let (id, session) = h.session_expiring_in(MARGIN * 3).await;
        h.sessions.load_cached(&id).await.unwrap();
        h.endpoint.answer(Ok(pair(1)));
        h.refresher.spawn_proactive_refresh();
        // 180 s left; twice the margin is 120 s, reached after 60 s and seen by the next sweep.
        sleep(MARGIN - Duration::from_millis(500)).await;
        assert_eq!(h.endpoint.calls(), 0);
        sleep(Duration::from_millis(1000)).await;
        assert_eq!(h.endpoint.calls(), 1);
        let stored = h.stored(&session).await.unwrap();
        assert_eq!(tokens(&stored), owned("at-1", "rt-1"));
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_no_request_used_are_left_alone() {
        let h = Harness::new();
        // Due, but only created (a login), never used by a request.
        let session = h.due_session().await;
        h.refresher.spawn_proactive_refresh();
        sleep(Duration::from_secs(10)).await;
        assert_eq!(h.endpoint.calls(), 0);
        let stored = h.stored(&session).await.unwrap();
        assert_eq!(tokens(&stored), owned("at-0", "rt-0"));
    }
}
