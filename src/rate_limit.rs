//! Rate limits on the anonymous login endpoints (`/auth/login`, `/auth/callback`): one bucket
//! per client address and one for everyone, both GCRA (the generic cell rate algorithm: a
//! token bucket kept as one timestamp per key).
//!
//! The client address is the one `server.trusted_proxies` yields (see
//! [`crate::forwarded::resolve`]); IPv6 clients are keyed by their /64, since one host
//! usually holds a whole /64. The per-client table is bounded ([`MAX_TRACKED_CLIENTS`]): when
//! it is full of clients still inside their burst, a new client is limited by the global
//! bucket alone, so the table cannot become the unbounded state this module exists to prevent.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

pub use crate::config::Rate;

/// Most client addresses remembered at once (about 48 bytes each: ≤ 0.5 MiB).
pub const MAX_TRACKED_CLIENTS: usize = 10_000;

/// One GCRA step: given the stored theoretical arrival time `tat` and `now`, either the new
/// `tat` to store (allowed) or how long until a request would be allowed.
fn tolerance(rate: Rate) -> Duration {
    rate.interval * rate.burst
}

fn gcra(rate: Rate, tat: Instant, now: Instant) -> Result<Instant, Duration> {
    let next = tat.max(now) + rate.interval;
    let ahead = next - now;
    if ahead > tolerance(rate) {
        Err(ahead - tolerance(rate))
    } else {
        Ok(next)
    }
}

/// Per-client and global limits on the login endpoints.
#[derive(Debug)]
pub struct LoginRateLimiter {
    per_client: Option<Rate>,
    global: Option<Rate>,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    global: Instant,
    clients: HashMap<IpAddr, Instant>,
}

impl LoginRateLimiter {
    /// A limiter with the given rates (`None`: that limit is off).
    pub fn new(per_client: Option<Rate>, global: Option<Rate>) -> Self {
        Self {
            per_client,
            global,
            state: Mutex::new(Buckets {
                global: Instant::now(),
                clients: HashMap::new(),
            }),
        }
    }

    /// Counts one request from `client`; `Err(wait)` when it must be refused (429). A refused
    /// request uses up nothing.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let key = bucket_key(client);
        // A poisoned lock only means another request panicked mid-update; the timestamps are
        // still usable.
        let mut buckets = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let client_tat = match self.per_client {
            Some(rate) => {
                let tat = buckets.clients.get(&key).copied().unwrap_or(now);
                Some(gcra(rate, tat, now)?)
            }
            None => None,
        };
        if let Some(rate) = self.global {
            buckets.global = gcra(rate, buckets.global, now)?;
        }
        if let Some(tat) = client_tat {
            if buckets.clients.len() >= MAX_TRACKED_CLIENTS && !buckets.clients.contains_key(&key) {
                // A client whose bucket has refilled is the same as one never seen.
                buckets.clients.retain(|_, tat| *tat > now);
            }
            if buckets.clients.len() < MAX_TRACKED_CLIENTS || buckets.clients.contains_key(&key) {
                buckets.clients.insert(key, tat);
            }
        }
        Ok(())
    }

    /// How many client addresses are remembered now.
    pub fn tracked_clients(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clients
            .len()
    }
}

/// IPv4 addresses as they are; IPv6 by their /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_burst_then_the_sustained_rate() {
        let limiter = LoginRateLimiter::new(Rate::per(3, Duration::from_secs(3)), None);
        let client = ip("192.0.2.1");
        for _ in 0..3 {
            limiter.check(client).unwrap();
        }
        let wait = limiter.check(client).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // Another client is not affected.
        limiter.check(ip("192.0.2.2")).unwrap();
        tokio::time::advance(wait).await;
        limiter.check(client).unwrap();
        assert!(limiter.check(client).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_limit_applies_to_everyone_together() {
        let limiter = LoginRateLimiter::new(None, Rate::per(2, Duration::from_secs(1)));
        limiter.check(ip("192.0.2.1")).unwrap();
        limiter.check(ip("192.0.2.2")).unwrap();
        assert!(limiter.check(ip("192.0.2.3")).is_err());
        tokio::time::advance(Duration::from_millis(500)).await;
        limiter.check(ip("192.0.2.3")).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn refused_requests_use_up_nothing() {
        let limiter = LoginRateLimiter::new(
            Rate::per(1, Duration::from_secs(1)),
            Rate::per(1, Duration::from_secs(1)),
        );
        limiter.check(ip("192.0.2.1")).unwrap();
        // Refused per client: the global bucket must not be charged for it.
        for _ in 0..5 {
            assert!(limiter.check(ip("192.0.2.1")).is_err());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        limiter.check(ip("192.0.2.2")).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_share_their_64() {
        let limiter = LoginRateLimiter::new(Rate::per(1, Duration::from_secs(60)), None);
        limiter.check(ip("2001:db8:1:2::1")).unwrap();
        assert!(limiter.check(ip("2001:db8:1:2::ffff")).is_err());
        limiter.check(ip("2001:db8:1:3::1")).unwrap();
        limiter.check(ip("::ffff:192.0.2.9")).unwrap();
        assert!(limiter.check(ip("192.0.2.9")).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_table_stays_bounded() {
        let limiter = LoginRateLimiter::new(Rate::per(1, Duration::from_secs(60)), None);
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 500) {
            limiter.check(IpAddr::from(i.to_be_bytes())).unwrap();
        }
        assert_eq!(limiter.tracked_clients(), MAX_TRACKED_CLIENTS);
        // Once the buckets have refilled, the table makes room again.
        tokio::time::advance(Duration::from_secs(61)).await;
        limiter.check(ip("198.51.100.1")).unwrap();
        assert_eq!(limiter.tracked_clients(), 1);
    }
}
