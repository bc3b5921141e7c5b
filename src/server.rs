//! The HTTP/1.1 accept loop: connection limit, header-size limit, header read timeout, client
//! address ([`crate::forwarded::peer`]), WebSocket upgrades, and graceful shutdown bounded by
//! `shutdown_timeout`.
//!
//! **Connection limit.** At most `max_connections` client connections are open at once. When
//! the limit is reached the loop stops accepting, so further connections wait in the kernel's
//! accept queue (which costs this process nothing), and it closes the oldest open connection:
//! one that never completed a request head (a slowloris client) is dropped at once, an idle
//! keep-alive one closes at once, one in the middle of a request finishes its response first.
//! A busy connection cannot hold on either: a write to a client that makes no progress for
//! [`SEND_TIMEOUT`] (the client stopped reading) ends it. Holding connections open therefore
//! cannot starve new clients for long, and memory stays bounded by the limit times the
//! per-connection cost (about 28 KiB with a 15 KB head held open; see the
//! README's security model).
//!
//! `axum::serve` exposes none of the limits, so the loop is written out here (as mini-redis'
//! `server::run` does): the caller binds the listener and supplies the shutdown future, which
//! keeps the server testable on `127.0.0.1:0`.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, http::Request, response::Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{Notify, oneshot},
    time::Sleep,
};
use tower::{Service, ServiceExt};

/// Limits of the listener.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Largest request head; larger heads are answered 431 by hyper.
    pub max_header_bytes: usize,
    /// A client must finish sending its request head within this time (slowloris guard).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may run after the shutdown signal.
    pub shutdown_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

impl ServeOptions {
    /// The limits `[server]` configures; the header read timeout keeps its default.
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        Self {
            max_header_bytes: server.max_header_bytes,
            shutdown_timeout: server.shutdown_timeout,
            max_connections: server.max_connections,
            ..Self::default()
        }
    }
}

/// How long a write to a client may make no progress (as nginx's `send_timeout`): a client that
/// stops reading a response would otherwise hold its connection, and the app connection behind
/// it, for ever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a listener serves: the gateway's whole stack (`app::Gateway`) or any axum
/// `Router`.
pub trait Served:
    Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> Served for S where
    S: Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// hyper refuses read buffers below 8 KiB.
const MIN_BUF: usize = 8 * 1024;

/// Serves `router` (the gateway's whole stack, or any axum `Router`) until `shutdown`
/// resolves, then stops accepting and lets open connections finish for up to
/// `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: impl Served,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(options.max_header_bytes.max(MIN_BUF))
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    // Every connection task holds a clone of `alive`; when all have finished, `all_done` yields
    // None. `stop` tells open connections to finish their current request and close.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let table = Arc::new(ConnectionTable::default());
    tokio::pin!(shutdown);
    'accept: loop {
        // Make room before accepting: the excess waits in the kernel's queue, not in memory.
        while table.open() >= options.max_connections.max(1) {
            if table.close_oldest() {
                tracing::debug!("connection limit reached; closing the oldest connection");
            }
            tokio::select! {
                () = table.freed.notified() => {}
                () = &mut shutdown => break 'accept,
            }
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Set once hyper has parsed a first request head on this connection.
                let served = Arc::new(AtomicBool::new(false));
                let service = router.clone().map_request({
                    let served = Arc::clone(&served);
                    move |request: Request<Incoming>| {
                        served.store(true, Ordering::Relaxed);
                        crate::memory::note_request();
                        // As axum's Router does with any body it is given. The client's
                        // address is the task's (`forwarded::peer`), not an extension per request.
                        request.map(Body::new)
                    }
                });
                let connection = http
                    .serve_connection(
                        TokioIo::new(SendTimeout::new(stream, SEND_TIMEOUT)),
                        TowerToHyperService::new(service),
                    )
                    .with_upgrades();
                let alive = alive.clone();
                let mut stopped = stopped.clone();
                let (id, close) = table.add();
                let table = Arc::clone(&table);
                tokio::spawn(crate::forwarded::peer::serving(remote, async move {
                    let mut connection = std::pin::pin!(connection);
                    let result = tokio::select! {
                        result = connection.as_mut() => result,
                        () = async {
                            tokio::select! {
                                _ = stopped.wait_for(|stop| *stop) => {}
                                _ = close => {}
                            }
                        } => {
                            // hyper's graceful shutdown waits for a half-read first request
                            // head (a slowloris client) until the header timeout. A connection
                            // that never got a request has nothing to finish: drop it now. (The
                            // connection is polled only here, so no request can start between
                            // this check and the drop.) Otherwise let the response in progress
                            // finish; an idle keep-alive connection closes at once.
                            if !served.load(Ordering::Relaxed) {
                                return finish(&table, id, alive);
                            }
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    finish(&table, id, alive);
                }));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    drop(alive);
    if tokio::time::timeout(options.shutdown_timeout, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
    Ok(())
}

/// A client connection whose writes must make progress: a write that stays pending (the client
/// stopped reading and its receive window is full) for longer than `timeout` fails with
/// `TimedOut`, which ends the connection. Reads are untouched (hyper bounds those).
struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed when a write first stays pending; cleared by any write that completes.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes a write's outcome through, failing it once it has been pending for too long.
    fn bound<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bound(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bound(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.bound(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's task is over: it leaves the table, and the shutdown wait counts it done.
fn finish(table: &ConnectionTable, id: u64, alive: tokio::sync::mpsc::Sender<()>) {
    table.remove(id);
    drop(alive);
}

/// The open connections, oldest first, each with the means to ask it to close.
#[derive(Default)]
struct ConnectionTable {
    inner: Mutex<Connections>,
    /// Signalled whenever a connection ends.
    freed: Notify,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    /// `None` once the connection was asked to close.
    open: BTreeMap<u64, Option<oneshot::Sender<()>>>,
}

impl ConnectionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        // Plain bookkeeping: a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Registers a new connection; the receiver fires when it should close.
    fn add(&self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, Some(tx));
        (id, rx)
    }

    fn remove(&self, id: u64) {
        self.lock().open.remove(&id);
        self.freed.notify_one();
    }

    /// Asks the oldest connection not yet asked to close gracefully; false if all were asked.
    fn close_oldest(&self) -> bool {
        let mut inner = self.lock();
        let Some(close) = inner.open.values_mut().find_map(Option::take) else {
            return false;
        };
        let _ = close.send(());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
        // A 1 KiB pipe nobody reads: writes block once it is full.
        let (writer, _reader) = tokio::io::duplex(1024);
        let mut bounded = SendTimeout::new(writer, Duration::from_secs(60));
        bounded.write_all(&[0; 1024]).await.unwrap();
        let started = tokio::time::Instant::now();
        let error = bounded.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        use tokio::io::AsyncReadExt;
        let (writer, mut reader) = tokio::io::duplex(16);
        let mut bounded = SendTimeout::new(writer, Duration::from_secs(60));
        let read = tokio::spawn(async move {
            let mut buf = [0; 16];
            let mut total = 0;
            while total < 320 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                total += reader.read(&mut buf).await.unwrap();
            }
        });
        // 320 bytes through a 16-byte pipe read every 50 s: over 15 minutes, never 60 s stuck.
        bounded.write_all(&[0; 320]).await.unwrap();
        read.await.unwrap();
    }

    #[test]
    fn the_oldest_connection_is_asked_to_close_once() {
        let table = ConnectionTable::default();
        let (first, mut first_close) = table.add();
        let (_, mut second_close) = table.add();
        assert_eq!(table.open(), 2);
        assert!(table.close_oldest());
        assert!(first_close.try_recv().is_ok());
        assert!(second_close.try_recv().is_err());
        assert!(table.close_oldest());
        assert!(second_close.try_recv().is_ok());
        assert!(!table.close_oldest());
        table.remove(first);
        assert_eq!(table.open(), 1);
    }
}
