//! The Redis most tests share, each under a key prefix of its own (nothing is ever flushed):
//! `PLEO_GATEWAY_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.

use std::time::Duration;

/// The Redis URL the tests use, when set.
pub const URL_VAR: &str = "PLEO_GATEWAY_TEST_REDIS_URL";

/// The URL of the shared test Redis.
pub async fn redis_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
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
