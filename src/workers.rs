//! The main listener served on one single-threaded runtime per core, each with its own
//! `SO_REUSEPORT` listener and its own connection pools to the app and to Pleo.
//!
//! **Why.** On tokio's work-stealing runtime a request's tasks (the client connection, the
//! pooled app connection, the handler) wander between threads, and every hand-over is a
//! cross-thread wake-up; the profile of the gateway under load showed 11–15% of its CPU in the
//! kernel's wake-up path. With a runtime per core the kernel spreads connections over the
//! listeners (as nginx's workers do with `reuseport`), and a request is accepted, handled,
//! proxied over that core's own pooled connection and answered on one thread. Nothing is given
//! up: the state the workers share (sessions, the refresh coordinator, the store's
//! connections, rate limits) is thread-safe already, and the refresh protocol never depended
//! on which thread runs it.
//!
//! What stays on the main (multi-threaded) runtime: the store's connections, the shutdown
//! sequence, the metrics and internal listeners and the background jobs (proactive refresh).
//!
//! **Limits.** `server.max_connections` is shared out evenly (each worker takes its share, at
//! least one); `proxy.upstream_max_connections` stays one limit for the whole process, since
//! the workers' app clients share its permits.

use std::{future::Future, net::SocketAddr, num::NonZeroUsize};

use tokio::sync::oneshot;

use crate::server::{ServeOptions, Served, serve};

/// How many workers serve the main listener: `configured`, or with 0 the cores this process
/// may use (its CPU affinity and cgroup quota, as `std::thread::available_parallelism` reads
/// them), so a sidecar limited to one CPU runs one worker.
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Binds `count` listeners on `address` with `SO_REUSEPORT`. Each has a backlog of 1024.
///
/// `SO_REUSEPORT` would also let this process join a port another process (of the same user)
/// already listens on with it, silently splitting the traffic, e.g. a second gateway started
/// with the same `server.listen`. So the address is first claimed without it: a port anyone
/// listens on fails here with "address in use", as a plain bind would. That probe also fixes
/// the port when `address` has port 0.
pub fn bind(address: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let address = {
        let probe = tcp_socket(address)?;
        probe.bind(&address.into())?;
        probe
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("the listener has no socket address"))?
    };
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = tcp_socket(address)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(1024)?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

/// A TCP socket for `address`'s family with `SO_REUSEADDR` (a restart may bind while the old
/// process's connections linger in TIME_WAIT).
fn tcp_socket(address: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Serves one worker per listener, each on its own thread and single-threaded runtime, with
/// the router `router(worker index)` builds there (so its clients' connections live on that
/// runtime). Returns when every worker has drained, or with the first worker's error.
pub async fn serve_workers<R, S, C, F>(
    listeners: Vec<std::net::TcpListener>,
    router: R,
    options: ServeOptions,
    closing: C,
) -> anyhow::Result<()>
where
    R: Fn(usize) -> anyhow::Result<S> + Send + Sync + 'static,
    S: Served,
    C: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let workers = listeners.len().max(1);
    let options = ServeOptions {
        max_connections: options.max_connections.div_ceil(workers).max(1),
        ..options
    };
    let router = std::sync::Arc::new(router);
    let mut done = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let (finished, result) = oneshot::channel::<anyhow::Result<()>>();
        let router = std::sync::Arc::clone(&router);
        let closing = closing();
        std::thread::Builder::new()
            .name(format!("pleo-gateway-worker-{index}"))
            .spawn(move || {
                let outcome = run_worker(index, listener, router.as_ref(), options, closing);
                let _ = finished.send(outcome);
            })?;
        done.push(result);
    }
    let mut first_error = None;
    for result in done {
        let outcome = result
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread ended without a result")));
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn run_worker<S>(
    index: usize,
    listener: std::net::TcpListener,
    router: &(dyn Fn(usize) -> anyhow::Result<S> + Send + Sync),
    options: ServeOptions,
    closing: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    S: Served,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let router = router(index)?;
        serve(listener, router, options, closing).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_one_port() {
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(
            ports[0] != 0 && ports.iter().all(|p| *p == ports[0]),
            "{ports:?}"
        );
    }

    #[test]
    fn a_port_someone_listens_on_is_in_use_even_for_us() {
        let ours = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let taken = ours[0].local_addr().unwrap();
        // Another gateway on the same address: refused, not joined to our SO_REUSEPORT group.
        let second = bind(taken, 2).unwrap_err();
        assert_eq!(second.kind(), std::io::ErrorKind::AddrInUse, "{second}");
        // A plain listener (anyone else's) is refused too.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let error = bind(plain.local_addr().unwrap(), 1).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    }

    #[test]
    fn zero_means_the_cores_this_process_may_use() {
        assert_eq!(worker_count(3), 3);
        assert!(worker_count(0) >= 1);
    }

    #[tokio::test]
    async fn every_worker_answers_and_all_drain_on_closing() {
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let address = listeners[0].local_addr().unwrap();
        let (close, closed) = tokio::sync::watch::channel(false);
        let served = tokio::spawn(serve_workers(
            listeners,
            |index| {
                Ok(axum::Router::new().route(
                    "/",
                    axum::routing::get(move || async move { format!("worker {index}") }),
                ))
            },
            ServeOptions::default(),
            move || {
                let mut closed = closed.clone();
                async move {
                    let _ = closed.wait_for(|c| *c).await;
                }
            },
        ));
        // Enough connections that the kernel's hash reaches both listeners.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let body = client
                .get(format!("http://{address}/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            seen.insert(body);
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["worker 0", "worker 1"]
        );
        close.send(true).unwrap();
        served.await.unwrap().unwrap();
    }
}
