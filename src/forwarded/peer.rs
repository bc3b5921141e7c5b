//! The client address of a request, without an extension per request.
//!
//! axum's `ConnectInfo` extractor reads the peer from a request extension, and inserting one
//! cost every request three allocations (the extension map, its table, the boxed value) and a
//! fourth for the next extension. The accept loop instead runs each connection's task inside a
//! task-local that holds the connection's address, which every request served on it reads
//! for free: [`of`] for a request, the [`Peer`] extractor for a handler. A `ConnectInfo`
//! extension, where a caller set one (a stack driven without the accept loop), still wins.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request},
    http::request::Parts,
};

use crate::error::GatewayError;

tokio::task_local! {
    /// The address of the client whose connection this task serves.
    static PEER: SocketAddr;
}

/// Runs `connection` (a connection's whole task) with `peer` as its requests' client address.
pub fn serving<F: Future>(peer: SocketAddr, connection: F) -> impl Future<Output = F::Output> {
    PEER.scope(peer, connection)
}

/// The client address of `request`: its `ConnectInfo` extension when it has one (a stack
/// driven without the accept loop), else the serving connection's.
pub fn of(request: &Request) -> Option<SocketAddr> {
    of_parts(request.extensions())
}

fn of_parts(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .or_else(|| PEER.try_with(|peer| *peer).ok())
}

/// The client address as a handler's argument, as [`of`] finds it. A request served by none
/// of the gateway's listeners and given no `ConnectInfo` has none: a 500, as axum's own
/// extractor answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        of_parts(&parts.extensions)
            .map(Peer)
            .ok_or_else(|| GatewayError::Internal("the request has no client address".into()))
    }
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
            let (mut parts, _) = plain().into_parts();
            assert_eq!(
                Peer::from_request_parts(&mut parts, &()).await.ok(),
                Some(Peer(connection))
            );
        })
        .await;
        // Nowhere to take one from: the extractor refuses, as axum's `ConnectInfo` does.
        let (mut parts, _) = plain().into_parts();
        assert!(Peer::from_request_parts(&mut parts, &()).await.is_err());
    }
}
