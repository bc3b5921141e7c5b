//! The arithmetic of a shared rate budget, as both session stores apply it: GCRA (the generic
//! cell rate algorithm), a token bucket kept as one number per budget, the "theoretical
//! arrival time" (TAT) of the next call at the sustained rate.
//!
//! A call is admitted when, after it, the TAT is no more than `burst` intervals ahead of now.
//! A call that would be at most `max_wait` late takes its slot at once (so later calls queue
//! behind it) and waits that long before going out; a later one is refused with how long until
//! a call would be admitted again, and uses up nothing. The Redis store runs the same steps in
//! one Lua script (`redis_store::BUDGET_TAKE`); `backend/contract_tests.rs` holds both stores to
//! the same answers. All times are Unix milliseconds, whole numbers: the Lua side keeps them
//! exactly (below 2^53) and prints them without an exponent.

use std::time::Duration;

/// The shape of a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetRate {
    /// Milliseconds between calls at the sustained rate.
    pub interval_ms: u64,
    /// Calls allowed back to back.
    pub burst: u64,
    /// Longest a call waits for its turn before it is refused instead.
    pub max_wait_ms: u64,
}

impl BudgetRate {
    /// How far ahead of now the TAT may run: `burst` intervals.
    pub fn tolerance_ms(self) -> u64 {
        self.interval_ms.saturating_mul(self.burst)
    }
}

/// What a budget says about one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetDecision {
    /// The call has its slot: go after waiting this long (zero within the burst).
    Go {
        /// How long to wait first.
        wait: Duration,
    },
    /// No slot within `max_wait_ms`: refuse the call.
    Refused {
        /// When a call would be admitted again.
        retry_after: Duration,
    },
}

/// One call against a budget whose stored TAT is `tat` (`None`: unused or expired). Returns
/// the decision and, when admitted, the TAT to store (with a time to live of `new - now`).
pub fn take(tat: Option<u64>, now_ms: u64, rate: BudgetRate) -> (BudgetDecision, Option<u64>) {
    let tat = tat.unwrap_or(now_ms).max(now_ms);
    let new_tat = tat.saturating_add(rate.interval_ms);
    let wait = (new_tat - now_ms).saturating_sub(rate.tolerance_ms());
    if wait > rate.max_wait_ms {
        let retry_after = Duration::from_millis(wait - rate.max_wait_ms);
        return (BudgetDecision::Refused { retry_after }, None);
    }
    let wait = Duration::from_millis(wait);
    (BudgetDecision::Go { wait }, Some(new_tat))
}

/// The TAT at which the next call is admitted at `until_ms` with no wait (and the one after it
/// an interval later, with no burst): where a pause (Pleo's own 429) puts the budget. A store
/// keeps the later of this and the TAT it has.
pub fn paused_tat(until_ms: u64, rate: BudgetRate) -> u64 {
    until_ms
        .saturating_add(rate.tolerance_ms())
        .saturating_sub(rate.interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's default: 500 a minute (one every 120 ms), a burst of 50, 1 s of waiting.
    const DEFAULT: BudgetRate = BudgetRate {
        interval_ms: 120,
        burst: 50,
        max_wait_ms: 1_000,
    };
    const T0: u64 = 1_700_000_000_000;

    /// Runs `calls` (arrival times) through one budget; returns each call's decision.
    fn run(calls: impl IntoIterator<Item = u64>, rate: BudgetRate) -> Vec<(u64, BudgetDecision)> {
        let mut tat = None;
        calls
            .into_iter()
            .map(|now| {
                let (decision, new_tat) = take(tat, now, rate);
                if new_tat.is_some() {
                    tat = new_tat;
                }
                (now, decision)
            })
            .collect()
    }

    fn gone_at(decisions: &[(u64, BudgetDecision)]) -> Vec<u64> {
        decisions
            .iter()
            .filter_map(|(now, decision)| match decision {
                BudgetDecision::Go { wait } => Some(now + wait.as_millis() as u64),
                BudgetDecision::Refused { .. } => None,
            })
            .collect()
    }

    #[test]
    fn seven_hundred_calls_at_once_get_the_burst_and_a_second_of_queue() {
        let decisions = run(std::iter::repeat_n(T0, 700), DEFAULT);
        let waits: Vec<u64> = decisions
            .iter()
            .filter_map(|(_, d)| match d {
                BudgetDecision::Go { wait } => Some(wait.as_millis() as u64),
                BudgetDecision::Refused { .. } => None,
            })
            .collect();
        // 50 at once, then one every 120 ms for as long as the wait stays within 1 s.
        assert_eq!(waits.len(), 58);
        assert!(waits[..50].iter().all(|w| *w == 0));
        assert_eq!(&waits[50..], &[120, 240, 360, 480, 600, 720, 840, 960]);
        let BudgetDecision::Refused { retry_after } = decisions[58].1 else {
            panic!("call 59 is refused");
        };
        assert_eq!(retry_after, Duration::from_millis(80));
    }

    /// Hammered for two minutes (a call every 10 ms), the default budget lets out at most its
    /// burst plus 500 a minute in any 60 s window: under Pleo's 600.
    #[test]
    fn the_default_budget_stays_under_pleos_limit_in_every_minute() {
        let decisions = run((0..12_000).map(|i| T0 + i * 10), DEFAULT);
        let sent = gone_at(&decisions);
        let mut most = 0;
        for (i, start) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|t| **t < start + 60_000)
                .count();
            most = most.max(in_window);
        }
        assert!(most <= 50 + 500 + 1, "{most} calls in one minute");
        assert!(most >= 500, "the budget is usable: {most}");
        // Sent calls keep the interval once the burst is spent.
        let last_minute: Vec<&u64> = sent.iter().filter(|t| **t >= T0 + 60_000).collect();
        assert!(last_minute.windows(2).all(|w| w[1] - w[0] >= 120));
    }

    #[test]
    fn a_refused_call_uses_up_nothing_and_time_refills_the_budget() {
        let rate = BudgetRate {
            interval_ms: 1_000,
            burst: 2,
            max_wait_ms: 0,
        };
        let decisions = run([T0, T0, T0, T0, T0 + 1_000, T0 + 10_000], rate);
        let go: Vec<bool> = decisions
            .iter()
            .map(|(_, d)| matches!(d, BudgetDecision::Go { .. }))
            .collect();
        assert_eq!(go, [true, true, false, false, true, true]);
    }

    #[test]
    fn a_pause_admits_the_next_call_at_its_end_without_a_burst() {
        let until = T0 + 30_000;
        let tat = Some(paused_tat(until, DEFAULT));
        assert!(matches!(
            take(tat, T0, DEFAULT).0,
            BudgetDecision::Refused { retry_after } if retry_after == Duration::from_millis(29_000)
        ));
        let (first, tat) = take(tat, until, DEFAULT);
        assert_eq!(
            first,
            BudgetDecision::Go {
                wait: Duration::ZERO
            }
        );
        let (second, _) = take(tat, until, DEFAULT);
        assert_eq!(
            second,
            BudgetDecision::Go {
                wait: Duration::from_millis(120)
            }
        );
    }
}
