//! pleo-gateway: an authentication gateway for internal apps that integrate with Pleo.
//!
//! It runs Pleo's OAuth 2.0 authorisation-code flow with PKCE, keeps the tokens server-side
//! (Redis or memory) behind an opaque session cookie, and proxies Pleo API calls with a fresh
//! bearer token, refreshing exactly once even under concurrency.
// `deny`, not `forbid`: `memory::trim` is the one reviewed exception (glibc's malloc_trim).
#![deny(unsafe_code)]
// Tests may unwrap: a panic there is a failed test, not a crashed gateway.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod auth;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod edge;
pub mod error;
pub mod forwarded;
pub mod grants;
pub mod header_memo;
pub mod healthcheck;
pub mod http_client;
pub mod identity;
pub mod internal;
pub mod memory;
pub mod mock_pleo;
pub mod pleo_api;
pub mod pleo_budget;
pub mod proxy;
pub mod rate_limit;
pub mod readiness;
pub mod request_id;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod workers;
