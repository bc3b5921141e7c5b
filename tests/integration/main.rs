//! End-to-end tests: the gateway and a mock Pleo on real loopback sockets, Redis where a test
//! needs it. One binary (`[[test]] name = "integration"`) to keep link time down; each module is
//! one family of scenarios, and `support` is the harness they all share.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod at_rest;
mod background;
mod browser;
mod config_cli;
mod failures;
mod forward_auth;
mod health;
mod hostile;
mod identity;
mod lifecycle;
mod login;
mod observability;
mod proxy;
mod rate_budget;
mod redis_topologies;
mod refresh;
mod replicas;
mod sessions;
mod streaming;
mod tls;
