//! The shared harness, one module per harness:
//!
//! - [`env`]: a mock Pleo and the gateway on real loopback sockets ([`TestEnv`], [`Options`]);
//! - [`browser`]: a browser-like client that keeps the gateway's cookies ([`Browser`]), and
//!   helpers for reading responses;
//! - [`mock_tap`]: what passed through the mock's listener ([`MockTap`]);
//! - [`redis`]: every `redis-server` the tests run themselves ([`RedisServer`]), the shared
//!   test Redis ([`redis_url`]: found or started once per test process), and the Cluster and
//!   Sentinel topologies;
//! - [`process`]: programs the tests need ([`require_program`] fails at once with the install
//!   command), free ports, and a watchdog that ends a process with the test process;
//! - [`wait`]: [`eventually`], the one way to wait for something.
//!
//! Everything is re-exported here, so tests `use crate::support::{…}` without minding the layout.

// Explicit paths: the `load` test binary includes this file too (`#[path]` from tests/load/),
// and these keep its children where they are for both.
#[path = "support/browser.rs"]
pub mod browser;
#[path = "support/env.rs"]
pub mod env;
#[path = "support/mock_tap.rs"]
pub mod mock_tap;
#[path = "support/process.rs"]
pub mod process;
#[path = "support/redis.rs"]
pub mod redis;
#[path = "support/wait.rs"]
pub mod wait;

use base64::{Engine, engine::general_purpose::STANDARD};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use browser::{
    Browser, SESSION_COOKIE, SetCookie, bearer_seen_by_pleo, burst, json_body, location, query_map,
    session_set_cookie, set_cookie_named,
};
pub use env::{Options, StoreKind, TestEnv};
pub use process::require_program;
pub use redis::{RedisServer, shared::redis_url};
pub use wait::{PATIENCE, eventually, wait_until_refresh_due};

/// Scopes the gateway asks for.
pub const SCOPES: [&str; 2] = ["users:read", "export-jobs:read"];
/// The client id registered with the mock.
pub const CLIENT_ID: &str = "integration-client";

/// `n` random bytes, standard base64.
pub fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Declares a store-agnostic scenario once and runs it against both stores: the body becomes
/// `async fn name(store: StoreKind)`, with `memory::name` and `redis::name` tests calling it.
macro_rules! for_each_store {
    ($(
        $(#[$meta:meta])*
        async fn $name:ident($store:ident) $body:block
    )*) => {
        $(
            $(#[$meta])*
            async fn $name($store: $crate::support::StoreKind) $body
        )*

        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::support::StoreKind::Memory).await
                }
            )*
        }

        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::support::StoreKind::Redis).await
                }
            )*
        }
    };
}
