//! The pooled hyper clients the gateway sends requests through: to the app (`upstream.rs`)
//! and the proxied calls to Pleo (`pleo_api.rs`). HTTP/1.1 over plain TCP or TLS,
//! `TCP_NODELAY`, a connect timeout, and the built-in roots plus a configured CA bundle
//! ([`crate::tls`]); one pool per origin and worker ([`pool`]); and the wait for one of a
//! bounded number of connections.

mod conn;
mod pool;
// Public for the fuzz target `fuzz/fuzz_targets/http_response.rs`.
pub mod wire;

use std::{sync::Arc, time::Duration};

use axum::body::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::CaBundle;

/// The connector: `http://` or `https://` (verified against the Mozilla roots and `bundle`).
pub type Connector = HttpsConnector<HttpConnector>;

pub use conn::BodyError;
pub use pool::{Pool, PoolError, PooledBody};

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

/// A pool of connections to `origin` (`scheme://host[:port]`) keeping up to `max_idle` idle,
/// each for at most `idle_timeout`.
pub fn pool(
    connector: Connector,
    origin: &str,
    idle_timeout: Duration,
    max_idle: usize,
) -> anyhow::Result<Pool> {
    Pool::new(connector, origin.parse()?, idle_timeout, max_idle)
}

/// One of `slots` (a bound on connections in use), waiting at most `wait` for one to be freed;
/// `None` after that. A free slot is taken without arming a timer.
pub async fn slot(slots: &Arc<Semaphore>, wait: Duration) -> Option<OwnedSemaphorePermit> {
    if let Ok(free) = Arc::clone(slots).try_acquire_owned() {
        return Some(free);
    }
    tokio::time::timeout(wait, Arc::clone(slots).acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
}

pin_project_lite::pin_project! {
    /// A response body holding its connection slot until it is done (or dropped).
    pub struct SlotBody {
        #[pin]
        body: PooledBody,
        _slot: OwnedSemaphorePermit,
    }
}

impl SlotBody {
    /// `body`, holding `slot`.
    pub fn new(body: PooledBody, slot: OwnedSemaphorePermit) -> Self {
        Self { body, _slot: slot }
    }
}

impl hyper::body::Body for SlotBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
