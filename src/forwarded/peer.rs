//! The client address of a request, without an extension per request.
//!
//! axum's handlers take the peer from a `ConnectInfo` request extension, and inserting one
//! cost every request three allocations (the extension map, its table, the boxed value) and a
//! fourth for the next extension. The accept loop now runs each connection's task inside a
//! task-local that holds the connection's address, which every request served on it reads
//! for free. The gateway's stack takes it from there ([`of`]); the router's handlers still get
//! the extension, added by [`crate::dispatch`] only for the requests it routes.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};

tokio::task_local! {
    /// The address of the client whose connection this task serves.
    static PEER: SocketAddr;
}

/// Runs `connection` (a connection's whole task) with `peer` as its requests' client address.
pub(super) fn serving<F: Future>(
    peer: SocketAddr,
    connection: F,
) -> impl Future<Output = F::Output> {
    PEER.scope(peer, connection)
}

/// The client address of `request`: its `ConnectInfo` extension when it has one (a stack
/// driven without the accept loop, as tests do), else the serving connection's.
pub fn of(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .or_else(|| PEER.try_with(|peer| *peer).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connections_address_unless_the_request_names_one() {
        let connection: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let named: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        let plain = || Request::new(axum::body::Body::empty());
        // Outside a connection's task, only an extension names a peer.
        assert_eq!(of(&plain()), None);
        serving(connection, async {
            assert_eq!(of(&plain()), Some(connection));
            let mut request = plain();
            request.extensions_mut().insert(ConnectInfo(named));
            assert_eq!(of(&request), Some(named));
        })
        .await;
    }
}
