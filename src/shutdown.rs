//! The shutdown signal (Ctrl-C or SIGTERM, what Kubernetes and Docker send) and the sequence
//! `serve` follows after it.
//!
//! Kubernetes sends SIGTERM and removes the pod from the Service's endpoints at the same time,
//! and the removal takes a few seconds to reach kube-proxy, ingress controllers and load
//! balancers. A server that closed its listener at once would refuse the connections still
//! routed to it meanwhile. So the gateway first fails `/readyz` and keeps serving everything
//! for `server.shutdown_delay`, then closes the listener and lets in-flight requests finish
//! within `server.shutdown_timeout` (see `server.rs`). A second signal skips the rest of the
//! delay. The image has no shell, so this is what a `preStop: sleep` would otherwise do.

use std::{future::Future, time::Duration};

use tokio::sync::watch;

use crate::readiness::Readiness;

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The gateway's shutdown sequence, started before the listeners open so that a signal
/// arriving at any time is seen.
#[derive(Debug)]
pub struct Shutdown {
    closing: watch::Receiver<bool>,
}

impl Shutdown {
    /// Waits for a signal in the background; then `readiness` turns to draining, and after
    /// `delay` (or a second signal) [`Shutdown::closing`] resolves.
    pub fn start(readiness: Readiness, delay: Duration) -> Self {
        let (close, closing) = watch::channel(false);
        tokio::spawn(async move {
            signal().await;
            readiness.start_draining();
            if !delay.is_zero() {
                tracing::info!(
                    delay = ?delay,
                    "shutdown signal received; /readyz fails from now on, still serving for server.shutdown_delay"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = signal() => tracing::info!("second shutdown signal; not waiting any longer"),
                }
            }
            tracing::info!("closing the listeners; draining connections");
            let _ = close.send(true);
        });
        Self { closing }
    }

    /// Resolves when the listeners should close. Each call gives an independent future, one
    /// per listener.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.clone();
        async move {
            // An error means the sender is gone, which only happens after it sent.
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }
}
