//! Load and abuse scenarios: tens of thousands of anonymous logins and thousands of slowloris
//! connections. A test binary of their own, because cargo runs test binaries one after another:
//! the load they make must not overlap the timing-sensitive scenarios of `integration` (a
//! refresh burst that must finish inside a two-second margin, say) and make those flaky.
//! They share the integration tests' harness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "../integration/support.rs"]
#[allow(dead_code, unused_imports, unused_macros)]
mod support;

mod anonymous_logins;
mod connections;
