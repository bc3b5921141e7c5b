//! The HTTP/1.1 accept loop: header-size limit, header read timeout, client address for
//! `ConnectInfo`, WebSocket upgrades, and graceful shutdown bounded by `shutdown_timeout`.
//!
//! `axum::serve` exposes none of the limits, so the loop is written out here (as mini-redis'
//! `server::run` does): the caller binds the listener and supplies the shutdown future, which
//! keeps the server testable on `127.0.0.1:0`.

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo, http::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Limits of the listener.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Largest request head; larger heads are answered 431 by hyper.
    pub max_header_bytes: usize,
    /// A client must finish sending its request head within this time (slowloris guard).
    pub header_read_timeout: Duration,
    /// How long in-flight requests may run after the shutdown signal.
    pub shutdown_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// hyper refuses read buffers below 8 KiB.
const MIN_BUF: usize = 8 * 1024;

/// Serves `router` until `shutdown` resolves, then stops accepting and lets open connections
/// finish for up to `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
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
    tokio::pin!(shutdown);
    loop {
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
                let service = router.clone().map_request(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
                    request
                });
                let connection = http
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .with_upgrades();
                let alive = alive.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut connection = std::pin::pin!(connection);
                    let result = tokio::select! {
                        result = connection.as_mut() => result,
                        _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(alive);
                });
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
