//! The pooled hyper clients the gateway sends requests through: to the app
//! ([`crate::upstream`]) and the proxied calls to Pleo ([`crate::pleo_api`]). HTTP/1.1 over
//! plain TCP or TLS, `TCP_NODELAY`, a connect timeout, and the built-in roots plus a configured
//! CA bundle ([`crate::tls`]).

use std::time::Duration;

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::config::CaBundle;

/// The connector: `http://` or `https://` (verified against the Mozilla roots and `bundle`).
pub type Connector = HttpsConnector<HttpConnector>;

/// A pool of HTTP/1.1 connections through a [`Connector`].
pub type Pool = Client<Connector, Body>;

/// A connector giving up on a TCP connection after `connect_timeout`.
pub fn connector(
    connect_timeout: Duration,
    bundle: Option<&CaBundle>,
) -> anyhow::Result<Connector> {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let builder = match bundle {
        None => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
        Some(bundle) => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(bundle)?),
    };
    Ok(builder.https_or_http().enable_http1().wrap_connector(tcp))
}

/// A pool keeping up to `max_idle` idle connections per host, each for at most `idle_timeout`.
pub fn pool(connector: Connector, idle_timeout: Duration, max_idle: usize) -> Pool {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(max_idle)
        .pool_timer(TokioTimer::new())
        .build(connector)
}
