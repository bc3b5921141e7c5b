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
