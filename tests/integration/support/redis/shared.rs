//! The Redis most tests share, each under a key prefix of its own (nothing is ever flushed).
//! Which one, decided once per test process on first use:
//!
//! 1. `PLEO_GATEWAY_TEST_REDIS_URL`, when set (`.ci/run` sets it), as it is.
//! 2. Otherwise the Redis at `127.0.0.1:6379` (the README's), if it answers `PING` there.
//!    `PLEO_GATEWAY_TEST_REDIS_DEFAULT=host:port` probes another address instead: pointing it
//!    at a closed port (`127.0.0.1:1`) hides a local Redis, to try step 3 on a machine that has
//!    one.
//! 3. Otherwise a `redis-server` of this test process's own: a [`RedisServer`] (free port, no
//!    RDB, no AOF, a temporary directory) kept in a `static` for the rest of the process. A
//!    `static` is never dropped, so its [`super::Watchdog`] is what ends it: it kills the
//!    server and removes its directory as soon as the test process has exited, however it
//!    ended. Without `redis-server` installed, every test that needs Redis fails at once with
//!    the command that installs it.
//!
//! Tests with the in-memory store never get here and need no Redis at all.

use std::time::Duration;

use tokio::sync::OnceCell;

use super::{RedisServer, answers_ping};

/// The Redis URL the tests use, when set.
pub const URL_VAR: &str = "PLEO_GATEWAY_TEST_REDIS_URL";
/// `host:port` probed for a running Redis when [`URL_VAR`] is unset (default [`DEFAULT`]).
pub const DEFAULT_VAR: &str = "PLEO_GATEWAY_TEST_REDIS_DEFAULT";
/// Where a developer's Redis usually is.
pub const DEFAULT: &str = "127.0.0.1:6379";

/// The shared Redis, found or started by the first test that asks.
static SHARED: OnceCell<Shared> = OnceCell::const_new();

struct Shared {
    url: String,
    /// The server this process started, when there was no other.
    _own: Option<RedisServer>,
}

/// The URL of the shared test Redis (see the module documentation).
pub async fn redis_url() -> String {
    SHARED.get_or_init(find_or_start).await.url.clone()
}

async fn find_or_start() -> Shared {
    if let Ok(url) = std::env::var(URL_VAR) {
        return Shared { url, _own: None };
    }
    let address = std::env::var(DEFAULT_VAR).unwrap_or_else(|_| DEFAULT.to_owned());
    // Generous: a refused connection fails at once, and a busy machine must not make a running
    // Redis look absent.
    if answers_ping(&address, None, Duration::from_secs(3)).await {
        return Shared {
            url: format!("redis://{address}"),
            _own: None,
        };
    }
    let own = RedisServer::start().await;
    eprintln!(
        "{URL_VAR} is unset and no Redis answers PING at {address}: this test process runs its \
         own redis-server at {} until it exits",
        own.url()
    );
    Shared {
        url: own.url(),
        _own: Some(own),
    }
}

/// Removes every key under `prefix` (SCAN + DEL; never FLUSH on a shared Redis). Synchronous, for
/// destructors; gives up quietly when Redis is not answering.
pub fn delete_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
        else {
            return;
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
