//! A pool of HTTP/1.1 connections to one origin, for one worker thread.
//!
//! Each pool talks to a single origin (the app, or the Pleo API) and belongs to one worker
//! runtime (`workers.rs`), so it needs neither a per-host map nor a connection task spawned on
//! another thread: a request takes the most recently used idle connection (or opens one) and
//! its response body puts the connection back once the whole body has been read. A general
//! client (hyper-util's) looks the host up in a hashed map twice, races a checkout against a
//! lazily built connect future and spawns a task per request to wait for the connection to
//! become idle again; that was a tenth of the instructions of a request to the app.
//!
//! The rules are those of any HTTP/1.1 client pool:
//! - a connection is reused only once its previous response has been read to the end (a body
//!   dropped half-way closes its connection), and never after `101 Switching Protocols`;
//! - idle connections close after the pool's idle timeout and at most `max_idle` are kept;
//! - a burst's surplus goes soon after it: beyond [`KEEP_IDLE`] connections, those idle for
//!   [`SURPLUS_IDLE`] close (a sweep runs every [`SURPLUS_IDLE`]). A c256 burst leaves 128
//!   connections per worker and origin, about 37 KiB each; kept for the whole idle timeout
//!   they held the gateway's RSS at 31-32 MiB after `benches/compare.sh`, against 17 MiB
//!   now. Under load a connection is idle for microseconds, so the rule does not close one
//!   that is about to be used again (CPU per request at c256 unchanged);
//! - a request that a reused connection refused before sending a byte (the server closed it
//!   while it sat idle) is sent once more on another connection: the request was never seen.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::{Body, Bytes};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::{
    body::{Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
};
use tokio::time::Instant;
use tower::Service;

use super::Connector;

/// Idle connections a pool keeps for its whole idle timeout; those beyond close once idle for
/// [`SURPLUS_IDLE`].
pub const KEEP_IDLE: usize = 16;

/// How long a connection beyond [`KEEP_IDLE`] may sit idle, and how often the sweep runs.
pub const SURPLUS_IDLE: Duration = Duration::from_secs(1);

/// Why a request through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (refused, timed out, TLS refused).
    #[error("connecting failed")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request or the response head was on its way.
    #[error("the request failed")]
    Request(#[source] hyper::Error),
}

impl PoolError {
    /// Whether no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// HTTP/1.1 connections to one origin; cheap to clone (the clones share the connections).
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connector: Connector,
    /// `scheme://host:port`, what the connector dials.
    origin: Uri,
    /// The `Host` header for requests that carry none: the host, and the port unless it is
    /// the scheme's default.
    host: HeaderValue,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    max_idle: usize,
    /// Whether the sweep of expired idle connections runs.
    sweeping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// A pool for `origin` (`scheme://host[:port]`), keeping at most `max_idle` connections
    /// idle, each for at most `idle_timeout`.
    pub fn new(
        connector: Connector,
        origin: Uri,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> anyhow::Result<Self> {
        let host = origin
            .host()
            .ok_or_else(|| anyhow::anyhow!("{origin} has no host"))?;
        let default_port = if origin.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let host = match origin.port_u16() {
            Some(port) if port != default_port => HeaderValue::try_from(format!("{host}:{port}"))?,
            _ => HeaderValue::try_from(host)?,
        };
        Ok(Self::empty(connector, origin, host, idle_timeout, max_idle))
    }

    /// The same origin and settings with connections of its own (one pool per worker).
    pub fn with_own_connections(&self) -> Self {
        let inner = &self.inner;
        Self::empty(
            inner.connector.clone(),
            inner.origin.clone(),
            inner.host.clone(),
            inner.idle_timeout,
            inner.max_idle,
        )
    }

    /// A pool without connections yet.
    fn empty(
        connector: Connector,
        origin: Uri,
        host: HeaderValue,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                origin,
                host,
                idle: Mutex::new(Vec::new()),
                idle_timeout,
                max_idle,
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` (its URI may be absolute; only the path and query go on the wire) and
    /// waits for the response head.
    pub async fn request(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let path_and_query = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path_and_query);
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, self.inner.host.clone());
        }
        loop {
            let (mut sender, reused) = match self.inner.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // After a switch of protocols the connection belongs to the upgrade.
                    let keep = response.status() != StatusCode::SWITCHING_PROTOCOLS;
                    let pool = keep.then(|| Arc::downgrade(&self.inner));
                    return Ok(response.map(|body| PooledBody {
                        body,
                        sender: pool.map(|pool| (sender, pool)),
                    }));
                }
                Err(mut error) => match error.take_message() {
                    // Never sent, on a connection the server had closed while it was idle:
                    // another connection can take it.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(PoolError::Request(error.into_error())),
                },
            }
        }
    }

    /// A new connection, its task spawned on this worker's runtime.
    async fn connect(&self) -> Result<SendRequest<Body>, PoolError> {
        let mut connector = self.inner.connector.clone();
        let io = connector
            .call(self.inner.origin.clone())
            .await
            .map_err(PoolError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(PoolError::Request)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "pooled connection closed");
            }
        });
        if !self.inner.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(&self.inner)));
        }
        Ok(sender)
    }

    /// Connections idle now (for tests).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.inner.lock_idle().len()
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while the lock was held left the list intact (every change is one push,
        // pop or retain), so a poisoned lock is used as it is.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that can take a request now.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.lock_idle();
        while let Some(candidate) = idle.pop() {
            if candidate.sender.is_ready()
                && now.duration_since(candidate.since) < self.idle_timeout
            {
                return Some(candidate.sender);
            }
            // Closed, expired, or (rarely) not yet done with its last response: let it go.
        }
        None
    }

    fn put_back(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections that are closed already or idle for longer than the idle
    /// timeout, and the least recently used of those beyond [`KEEP_IDLE`] that have been idle
    /// for [`SURPLUS_IDLE`]. Dropping a connection's sender ends its task and its socket.
    fn sweep(&self, now: Instant) {
        let mut idle = self.lock_idle();
        let mut surplus = idle.len().saturating_sub(KEEP_IDLE);
        // Least recently used first: the list is in the order connections came back.
        idle.retain(|candidate| {
            let idle_for = now.duration_since(candidate.since);
            let keep = !candidate.sender.is_closed() && idle_for < self.idle_timeout;
            if !keep || (surplus > 0 && idle_for >= SURPLUS_IDLE) {
                surplus = surplus.saturating_sub(1);
                return false;
            }
            true
        });
    }
}

/// Every [`SURPLUS_IDLE`] (or half the idle timeout, if shorter), sweeps the idle connections
/// ([`Inner::sweep`]); ends with the pool.
async fn sweep(pool: Weak<Inner>) {
    let every = pool
        .upgrade()
        .map_or(SURPLUS_IDLE, |pool| {
            (pool.idle_timeout / 2).min(SURPLUS_IDLE)
        })
        .max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.sweep(Instant::now());
    }
}

/// A response body that returns its connection to the pool once it has been read to the end
/// (or is dropped at its end, as a server does after the last frame of a sized body).
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    sender: Option<(SendRequest<Body>, Weak<Inner>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.sender.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put_back(sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            // A broken body leaves its connection in no state to be reused.
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if hyper::body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests;
