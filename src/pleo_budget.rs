//! The budget of proxied calls to Pleo's API, shared by every replica through the session
//! store: Pleo allows 600 requests a minute and asks integrations to aim for at most 500
//! (`pleo.rate_limit_per_minute`, default 500).
//!
//! Pleo does not say whether its limit counts per client, token or company, so the budget's
//! scope is configurable (`pleo.rate_limit_scope`): one budget per subject (the company or
//! organisation a session speaks for), or one for the whole OAuth client. A tenth of a minute's
//! budget may go out at once; a call beyond that waits up to [`MAX_WAIT`] for its turn, and one
//! that would wait longer is answered 429 with `Retry-After` by the gateway, without reaching
//! Pleo. When Pleo itself answers 429, its answer passes through and the budget is paused for
//! its `Retry-After`, so every replica stops sending until then.
//!
//! The arithmetic is [`crate::session::budget`] (GCRA); each store applies it atomically.
//! The gateway's own calls (the introspection after a login, the installation deletion) and
//! the token endpoint are not counted: they are few, and refusing them would break logins.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::{
    config::{PleoConfig, RateLimitScope},
    error::GatewayError,
    session::{
        Session, Store,
        budget::{BudgetDecision, BudgetRate},
        id::hex,
        now_ms,
    },
};

/// The counter of budget decisions, by `outcome`.
const BUDGET_METRIC: &str = "pleo_gateway_pleo_budget_calls_total";
/// Longest a call waits for its turn before it is refused instead.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long this replica lets calls through unchecked after the store failed a budget check.
const STORE_ERROR_GRACE: Duration = Duration::from_secs(5);
/// How long a 429 from Pleo pauses the budget when it says nothing usable in `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause taken from Pleo's `Retry-After` (the caller still gets Pleo's own value).
/// Pleo's limit is per minute; a longer pause would only come from a confused header.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The budget's shape for `per_minute` calls a minute (`None`: no budget): one call every
/// `60 s / per_minute` (rounded up, so never faster), a burst of a tenth of that (at least 1).
pub fn rate_for(per_minute: u32) -> Option<BudgetRate> {
    let per_minute = u64::from(per_minute);
    (per_minute > 0).then(|| BudgetRate {
        interval_ms: 60_000_u64.div_ceil(per_minute),
        burst: (per_minute / 10).max(1),
        max_wait_ms: MAX_WAIT.as_millis() as u64,
    })
}

/// The shared budget, as the Pleo proxy uses it. One per process.
#[derive(Debug)]
pub struct PleoBudget {
    store: Store,
    rate: Option<BudgetRate>,
    scope: RateLimitScope,
    /// The budget key with `scope = "client"`.
    client_key: String,
    /// Unix ms until which checks are skipped, after the store failed one.
    unchecked_until_ms: AtomicU64,
}

impl PleoBudget {
    /// The budget configured in `config`, kept in `store`.
    pub fn new(config: &PleoConfig, store: Store) -> Self {
        Self {
            store,
            rate: rate_for(config.rate_limit_per_minute),
            scope: config.rate_limit_scope,
            client_key: format!("client:{}", digest(&config.client_id)),
            unchecked_until_ms: AtomicU64::new(0),
        }
    }

    /// The budget `session`'s calls count against. Subjects are hashed: the store needs a
    /// name, not the company.
    fn key(&self, session: &Session) -> String {
        match (self.scope, &session.data.subject) {
            (RateLimitScope::Client, _) => self.client_key.clone(),
            (RateLimitScope::Subject, Some(subject)) => format!("subject:{}", digest(subject)),
            // The subject is not known yet (introspection failed after the login): the
            // session stands in for it, so its calls are still counted.
            (RateLimitScope::Subject, None) => format!("session:{}", session.key.as_str()),
        }
    }

    /// Waits for this call's turn, or refuses it (429 with `Retry-After`).
    pub async fn admit(&self, session: &Session) -> Result<(), GatewayError> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let now = now_ms();
        if now < self.unchecked_until_ms.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.store.take_budget(&self.key(session), rate, now).await {
            Ok(BudgetDecision::Go { wait }) => {
                let outcome = if wait.is_zero() { "sent" } else { "waited" };
                metrics::counter!(BUDGET_METRIC, "outcome" => outcome).increment(1);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(())
            }
            Ok(BudgetDecision::Refused { retry_after }) => {
                metrics::counter!(BUDGET_METRIC, "outcome" => "refused").increment(1);
                Err(GatewayError::PleoRateBudget { retry_after })
            }
            Err(error) => {
                // Fail open. The budget protects Pleo's rate limit, and the worst that a call
                // let through can cause is a 429 from Pleo, which reaches the caller as it is;
                // failing closed would turn a store outage into an outage of every Pleo call,
                // even for sessions this replica still has cached. The checks pause for a few
                // seconds so that calls do not each wait out the store's 2 s bound meanwhile.
                let grace = STORE_ERROR_GRACE.as_millis() as u64;
                self.unchecked_until_ms
                    .store(now.saturating_add(grace), Ordering::Relaxed);
                metrics::counter!(BUDGET_METRIC, "outcome" => "unchecked").increment(1);
                tracing::warn!(%error, "the Pleo rate budget could not be checked; calls to Pleo go out unchecked for {}s", STORE_ERROR_GRACE.as_secs());
                Ok(())
            }
        }
    }

    /// Pleo answered 429 to a call of `session`: pauses its budget for Pleo's `Retry-After`
    /// (the answer itself is passed on unchanged by the caller).
    pub async fn pleo_refused(&self, session: &Session, retry_after: Option<&HeaderValue>) {
        let Some(rate) = self.rate else {
            return;
        };
        let pause = pause_for(retry_after, SystemTime::now());
        let now = now_ms();
        tracing::info!(
            pause_secs = pause.as_secs_f64(),
            "Pleo answered 429; pausing the rate budget"
        );
        let until = now.saturating_add(pause.as_millis() as u64);
        if let Err(error) = self
            .store
            .pause_budget(&self.key(session), rate, until, now)
            .await
        {
            // Nothing else to do: the 429 still reaches the caller.
            tracing::warn!(%error, "the Pleo rate budget could not be paused");
        }
    }
}

/// How long Pleo's `Retry-After` (seconds or an HTTP date) asks to wait, within
/// [`MAX_PAUSE`]; [`DEFAULT_PAUSE`] when it is missing or unreadable.
fn pause_for(retry_after: Option<&HeaderValue>, now: SystemTime) -> Duration {
    let Some(text) = retry_after.and_then(|v| v.to_str().ok()).map(str::trim) else {
        return DEFAULT_PAUSE;
    };
    let pause = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => match httpdate::parse_http_date(text) {
            Ok(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
            Err(_) => return DEFAULT_PAUSE,
        },
    };
    pause.clamp(DEFAULT_PAUSE, MAX_PAUSE)
}

/// SHA-256 of `text`, hex, shortened to 128 bits: a budget's name in the store.
fn digest(text: &str) -> String {
    let mut name = hex(&Sha256::digest(text.as_bytes()));
    name.truncate(32);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_one_call_every_120_ms_with_a_burst_of_50() {
        assert_eq!(
            rate_for(500),
            Some(BudgetRate {
                interval_ms: 120,
                burst: 50,
                max_wait_ms: 1_000
            })
        );
        assert_eq!(rate_for(0), None);
        // Never faster than configured: 7 a minute is one every 8,572 ms, not 8,571.
        assert_eq!(
            rate_for(7).map(|r| (r.interval_ms, r.burst)),
            Some((8_572, 1))
        );
        assert_eq!(rate_for(60_000).map(|r| r.interval_ms), Some(1));
    }

    #[test]
    fn pleos_retry_after_sets_the_pause_within_bounds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |text: &str| HeaderValue::from_str(text).unwrap();
        assert_eq!(pause_for(Some(&header("7")), now), Duration::from_secs(7));
        assert_eq!(pause_for(Some(&header("0")), now), DEFAULT_PAUSE);
        assert_eq!(pause_for(Some(&header("86400")), now), MAX_PAUSE);
        assert_eq!(pause_for(None, now), DEFAULT_PAUSE);
        assert_eq!(pause_for(Some(&header("soon")), now), DEFAULT_PAUSE);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(20));
        assert_eq!(
            pause_for(Some(&header(&date)), now),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn budget_names_hide_the_subject() {
        let name = digest("urn:pleo:company:5b1d1c36-8f0e-4c3a-9a55-2f4b6f0e7d21");
        assert_eq!(name.len(), 32);
        assert!(!name.contains("urn"));
    }
}
