//! WebSocket upgrades to the app: detecting them, checking their `Origin`, splicing the two
//! upgraded connections, and closing a session's sockets when the session ends.
//!
//! The bytes are passed through untouched (no frame parsing), so any subprotocol works and the
//! gateway adds no per-message cost. Closing therefore drops both TCP connections rather than
//! sending a close frame: a frame injected mid-stream could corrupt one the app is writing.
//!
//! The upgrade's `Origin` is checked by [`crate::auth::csrf::origin_allowed`]. A socket
//! outlives the request that opened it, so the session check at upgrade is not enough:
//! [`crate::upstream::WebSocketRegistry`] lets logout and disconnect on this replica close the session's
//! sockets at once, and every socket also re-reads its session every [`SESSION_RECHECK`] so a
//! logout on another replica, an expiry or a grant Pleo ended closes it too.

use std::time::Duration;

use axum::http::{HeaderMap, Method, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::{session::SessionKey, state::AppState};

/// How often an open socket re-reads its session (one store read per socket per period).
pub const SESSION_RECHECK: Duration = Duration::from_secs(30);

/// Whether a request asks to become a WebSocket (RFC 6455 §4.1: GET, `Upgrade: websocket`,
/// `Connection: upgrade`).
pub fn is_websocket_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    method == Method::GET
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

/// Splices the browser's and the app's upgraded connections in a background task, until
/// either side closes or (for `session`) the session ends.
pub(super) fn splice(
    state: &AppState,
    session: Option<SessionKey>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    // Register before the 101 goes out, so a logout from here on is never missed.
    let watch = session.map(|key| (state.websockets.register(&key), key, state.clone()));
    tokio::spawn(async move {
        // Counted against the registry's bound until both sockets are closed.
        let _slot = slot;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        let _open = crate::telemetry::metrics::OpenWebSocket::opened();
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        let Some((closed, key, state)) = watch else {
            let _ = copy.await;
            return;
        };
        tokio::select! {
            result = copy => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "WebSocket connection ended with an error");
                }
            }
            () = session_ended(&state, &key, closed) => {
                tracing::info!(session = key.short(), "session ended; closing its WebSocket");
            }
        }
        // Dropping both halves closes both TCP connections.
    });
}

/// Resolves when the session is closed here (logout) or found gone on a periodic re-read.
/// Store errors never end it: an unreachable Redis is not a logout.
async fn session_ended(state: &AppState, key: &SessionKey, mut closed: watch::Receiver<bool>) {
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    loop {
        tokio::select! {
            // An error means the registry dropped the sender without a signal: close as well.
            () = async { let _ = closed.wait_for(|closed| *closed).await; } => return,
            _ = recheck.tick() => {
                if let Ok(None) = state.sessions.reload(key).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as headers;

    #[test]
    fn upgrades_are_recognised_by_their_tokens() {
        let ws = headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ]);
        assert!(is_websocket_upgrade(&Method::GET, &ws));
        assert!(!is_websocket_upgrade(&Method::POST, &ws));
        assert!(!is_websocket_upgrade(
            &Method::GET,
            &headers(&[("upgrade", "h2c"), ("connection", "upgrade")])
        ));
        assert!(!is_websocket_upgrade(
            &Method::GET,
            &headers(&[("upgrade", "websocket")])
        ));
    }
}
