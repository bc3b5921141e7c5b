//! A pool of HTTP/1.1 connections to one origin, for one worker thread.
//!
//! Each pool talks to a single origin (the app, or the Pleo API) and belongs to one worker
//! runtime (`workers.rs`), so it needs neither a per-host map nor a task per connection: a
//! request takes the most recently used idle connection (or opens one), its own task writes
//! the request and reads the response ([`super::conn`]), and the response body puts the
//! connection back once the whole body has been read.
//!
//! The rules are those of any HTTP/1.1 client pool:
//! - a connection is reused only once its previous response has been read to the end (a body
//!   dropped half-way closes its connection), after a response that was framed by its length
//!   or chunks and did not ask to close, and never after a request the app answered before it
//!   had all of it;
//! - a WebSocket handshake (a request with `Upgrade`) goes on a connection of its own, which
//!   after `101 Switching Protocols` belongs to the upgrade;
//! - idle connections close after the pool's idle timeout and at most `max_idle` are kept;
//! - a burst's surplus goes soon after it: beyond [`KEEP_IDLE`] connections, those idle for
//!   [`SURPLUS_IDLE`] close (a sweep runs every [`SURPLUS_IDLE`]). A c256 burst leaves 128
//!   connections per worker and origin; kept for the whole idle timeout they held the
//!   gateway's RSS at 31-32 MiB after `benches/compare.sh`, against 17 MiB once they went.
//!   Under load a connection is idle for microseconds, so the rule does not close one that is
//!   about to be used again (CPU per request at c256 unchanged). A connection idle for
//!   [`SURPLUS_IDLE`] that stays gives back its read and write buffers, which one in use keeps
//!   from request to request;
//! - a connection the server closed (or wrote to) while it sat idle is not used; a request
//!   that finds its reused connection closed before any response byte arrived goes out once
//!   more on a new one if that cannot repeat an effect: its method is idempotent (RFC 9110
//!   §9.2.2) and nothing of its body was taken.

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
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower::Service;

use super::{
    Connector,
    conn::{BodyError, Conn, ConnBody, SendError},
    wire::{encode_request_head, request_framing},
};

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
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// Least recently used first.
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
    max_idle: usize,
    /// Whether the sweep of expired idle connections runs.
    sweeping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
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
    pub async fn request(&self, request: Request<Body>) -> Result<Response<PooledBody>, PoolError> {
        Ok(self.request_keeping_headers(request).await?.0)
    }

    /// [`request`](Self::request), also giving back the request's headers as they went out
    /// (without their framing fields), for a caller that may send the request again: copying
    /// them beforehand cost an allocation per header name hyper does not know.
    pub async fn request_keeping_headers(
        &self,
        request: Request<Body>,
    ) -> Result<(Response<PooledBody>, HeaderMap), PoolError> {
        let (mut parts, body) = request.into_parts();
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, self.inner.host.clone());
        }
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        if parts.headers.contains_key(header::UPGRADE) {
            parts.uri =
                Uri::try_from(path_and_query).map_err(|error| PoolError::Request(error.into()))?;
            // hyper takes the head of a WebSocket handshake: a copy to give back (one per
            // handshake, not per request).
            let headers = parts.headers.clone();
            // Boxed: inline, the handshake's future (hyper's client connection) would make
            // every request's future 1.6 KiB larger, and futures are copied as they nest.
            let response = Box::pin(self.upgrade(Request::from_parts(parts, body))).await?;
            return Ok((response, headers));
        }
        // The framing is the gateway's to choose: any the client sent is replaced.
        parts.headers.remove(header::TRANSFER_ENCODING);
        let declared = parts
            .headers
            .remove(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        let framing = request_framing(
            &parts.method,
            body.is_end_stream(),
            body.size_hint().exact(),
            declared,
        );
        // Written once, into the first connection's buffer; a retry sends the same bytes.
        let mut head: Option<Vec<u8>> = None;
        let mut body = body;
        loop {
            let (mut conn, reused) = match self.inner.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            let head_bytes = head.take().unwrap_or_else(|| {
                let mut out = conn.head_buffer();
                encode_request_head(
                    &parts.method,
                    path_and_query,
                    &parts.headers,
                    framing,
                    &mut out,
                );
                out
            });
            match conn.send(head_bytes, body, framing, &parts.method).await {
                Ok((response, complete)) => {
                    let reusable = response.reusable && complete;
                    let body = ConnBody::new(conn, response.framing, reusable);
                    let mut out = Response::new(PooledBody::own(body, Arc::downgrade(&self.inner)));
                    *out.status_mut() = response.status;
                    *out.version_mut() = response.version;
                    *out.headers_mut() = response.headers;
                    return Ok((out, parts.headers));
                }
                Err(SendError {
                    answered: false,
                    unsent: Some(unsent),
                    ..
                }) if reused && parts.method.is_idempotent() => {
                    // The server closed the connection as the request went out: never seen.
                    let (unsent_head, unsent_body) = unsent;
                    head = Some(unsent_head);
                    body = unsent_body;
                }
                Err(failed) => return Err(PoolError::Request(failed.error.into())),
            }
        }
    }

    /// A WebSocket handshake, on a connection of its own run by hyper (which hands the
    /// connection to the upgrade after a 101).
    async fn upgrade(&self, request: Request<Body>) -> Result<Response<PooledBody>, PoolError> {
        let io = self.dial().await?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|error| PoolError::Request(error.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upgraded connection closed");
            }
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| PoolError::Request(error.into()))?;
        Ok(response.map(PooledBody::upgrade))
    }

    /// A new connection.
    async fn connect(&self) -> Result<Box<Conn>, PoolError> {
        let io = self.dial().await?;
        if !self.inner.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(&self.inner)));
        }
        Ok(Box::new(Conn::new(TokioIo::new(io))))
    }

    async fn dial(&self) -> Result<<Connector as Service<Uri>>::Response, PoolError> {
        let mut connector = self.inner.connector.clone();
        connector
            .call(self.inner.origin.clone())
            .await
            .map_err(PoolError::Connect)
    }

    /// Connections idle now (for tests).
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.inner.lock_idle().len()
    }

    /// Idle connections that hold a read or write buffer (for tests).
    #[cfg(test)]
    pub fn idle_with_buffers(&self) -> usize {
        let idle = self.inner.lock_idle();
        idle.iter().filter(|idle| idle.conn.holds_buffers()).count()
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while the lock was held left the list intact (every change is one push,
        // pop or retain), so a poisoned lock is used as it is.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that can take a request now.
    fn checkout(&self) -> Option<Box<Conn>> {
        let now = Instant::now();
        let mut idle = self.lock_idle();
        while let Some(mut candidate) = idle.pop() {
            if now.duration_since(candidate.since) < self.idle_timeout && candidate.conn.is_fresh()
            {
                return Some(candidate.conn);
            }
            // Closed, expired, or sent something unasked-for: let it go.
        }
        None
    }

    fn put_back(&self, conn: Box<Conn>) {
        let mut idle = self.lock_idle();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections that are closed already or idle for longer than the idle
    /// timeout, and the least recently used of those beyond [`KEEP_IDLE`] that have been idle
    /// for [`SURPLUS_IDLE`]; those that stay, idle that long, give back their buffers.
    fn sweep(&self, now: Instant) {
        let mut idle = self.lock_idle();
        let mut surplus = idle.len().saturating_sub(KEEP_IDLE);
        // Least recently used first: the list is in the order connections came back.
        idle.retain_mut(|candidate| {
            let idle_for = now.duration_since(candidate.since);
            let keep = idle_for < self.idle_timeout && candidate.conn.is_fresh();
            if !keep || (surplus > 0 && idle_for >= SURPLUS_IDLE) {
                surplus = surplus.saturating_sub(1);
                return false;
            }
            if idle_for >= SURPLUS_IDLE {
                candidate.conn.shed_buffers();
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
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Own {
        body: ConnBody,
        pool: Weak<Inner>,
    },
    /// The response to a WebSocket handshake (hyper's connection).
    Upgrade(Incoming),
}

impl PooledBody {
    fn own(body: ConnBody, pool: Weak<Inner>) -> Self {
        Self {
            kind: Kind::Own { body, pool },
        }
    }

    fn upgrade(body: Incoming) -> Self {
        Self {
            kind: Kind::Upgrade(body),
        }
    }

    fn release(&mut self) {
        if let Kind::Own { body, pool } = &mut self.kind
            && let Some(conn) = body.take_reusable()
            && let Some(pool) = pool.upgrade()
        {
            pool.put_back(conn);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.kind {
            Kind::Own { body, .. } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    self.release();
                }
                polled
            }
            Kind::Upgrade(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Upgrade),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Own { body, .. } => body.is_end_stream(),
            Kind::Upgrade(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Own { body, .. } => body.size_hint(),
            Kind::Upgrade(body) => body.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests;
