//! The shared rate budgets in Redis: `{prefix}budget:{key}` holds the budget's theoretical
//! arrival time (unix ms) and expires when it passes, so an idle budget costs nothing. The
//! arithmetic is [`crate::session::budget`]'s, done inside one script per operation so that
//! every replica's calls are counted atomically. "Now" comes from the calling replica, as in
//! every script here: replicas whose clocks disagree by `s` (NTP keeps it to milliseconds) can
//! be that much early or late against the shared budget, no more.

use std::time::Duration;

use super::RedisStore;
use crate::session::backend::{BudgetDecision, BudgetRate, StoreError};
use crate::session::budget;

/// One call: ARGV now, interval, tolerance (burst × interval), max wait, all ms. Returns
/// `{1, wait}` with the slot taken, or `{0, retry_after}` with nothing changed. Numbers are
/// written with `%d`: whole milliseconds, never in exponent notation.
pub(super) const BUDGET_TAKE: &str = r"
local now = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[2])
local wait = new_tat - now - tonumber(ARGV[3])
if wait < 0 then wait = 0 end
local max_wait = tonumber(ARGV[4])
if wait > max_wait then return {0, wait - max_wait} end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', new_tat - now))
return {1, wait}
";

/// A pause: ARGV now, the paused TAT. Keeps the later of it and the stored one.
pub(super) const BUDGET_PAUSE: &str = r"
local now = tonumber(ARGV[1])
local target = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if target > tat and target > now then
  redis.call('SET', KEYS[1], string.format('%d', target), 'PX', string.format('%d', target - now))
end
return 1
";

impl RedisStore {
    fn budget_key(&self, key: &str) -> String {
        format!("{}budget:{}", self.prefix, key)
    }

    pub(super) async fn take_budget_in_redis(
        &self,
        key: &str,
        rate: BudgetRate,
        now_ms: u64,
    ) -> Result<BudgetDecision, StoreError> {
        let mut conn = self.conn.clone();
        let (admitted, millis): (i64, u64) = self
            .scripts
            .budget_take
            .key(self.budget_key(key))
            .arg(now_ms)
            .arg(rate.interval_ms)
            .arg(rate.tolerance_ms())
            .arg(rate.max_wait_ms)
            .invoke_async(&mut conn)
            .await?;
        let millis = Duration::from_millis(millis);
        Ok(match admitted {
            1 => BudgetDecision::Go { wait: millis },
            _ => BudgetDecision::Refused {
                retry_after: millis,
            },
        })
    }

    pub(super) async fn pause_budget_in_redis(
        &self,
        key: &str,
        rate: BudgetRate,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .budget_pause
            .key(self.budget_key(key))
            .arg(now_ms)
            .arg(budget::paused_tat(until_ms, rate))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
