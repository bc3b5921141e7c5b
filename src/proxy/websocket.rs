//! WebSocket upgrades to the app: detecting them, checking their `Origin`, splicing the two
//! upgraded connections, and closing a session's sockets when the session ends.
//!
//! The bytes are passed through untouched (no frame parsing), so any subprotocol works and the
//! gateway adds no per-message cost. Closing therefore drops both TCP connections rather than
//! sending a close frame: a frame injected mid-stream could corrupt one the app is writing.
//!
//! A socket outlives the request that opened it, so the session check at upgrade is not
//! enough: [`WebSocketRegistry`] lets logout and disconnect on this replica close the session's
//! sockets at once, and every socket also re-reads its session every [`SESSION_RECHECK`] so a
//! logout on another replica, an expiry or a grant Pleo ended closes it too.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::http::{HeaderMap, Method, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use url::Url;

use crate::{app::AppState, session::SessionKey};

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

/// Whether the upgrade comes from a page on the gateway's own origin. Browsers always send
/// `Origin` on WebSocket handshakes and the cookie rides along cross-site, so without this any
/// site could open a socket as the user (cross-site WebSocket hijacking).
pub fn origin_allowed(headers: &HeaderMap, public_url: &Url) -> bool {
    let expected = public_url.origin().ascii_serialization();
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| origin.eq_ignore_ascii_case(&expected))
}

/// Open sockets per session, so a logout can close them. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct WebSocketRegistry {
    sessions: Arc<Mutex<HashMap<SessionKey, watch::Sender<bool>>>>,
}

impl WebSocketRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Signals every open socket of the session `key` to close.
    pub fn close_websockets(&self, key: &SessionKey) {
        let sender = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        if let Some(sender) = sender {
            let _ = sender.send(true);
        }
    }

    /// How many sessions have open sockets (for tests and diagnostics).
    pub fn open_sessions(&self) -> usize {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, sender| !sender.is_closed());
        sessions.len()
    }

    /// A receiver that turns `true` when the session is closed.
    fn register(&self, key: &SessionKey) -> watch::Receiver<bool> {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        // Sessions whose sockets have all gone hold no receivers; forget them here rather than
        // from each socket's task, which keeps the lock out of the hot path.
        sessions.retain(|_, sender| !sender.is_closed());
        sessions
            .entry(key.clone())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }
}

/// Splices the browser's and the app's upgraded connections in a background task, until
/// either side closes or (for `session`) the session ends.
pub(super) fn splice(
    state: &AppState,
    session: Option<SessionKey>,
    client: OnUpgrade,
    upstream: OnUpgrade,
) {
    // Register before the 101 goes out, so a logout from here on is never missed.
    let watch = session.map(|key| (state.websockets.register(&key), key, state.clone()));
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
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

    #[test]
    fn only_the_public_origin_may_open_a_socket() {
        let public = Url::parse("https://app.example.com").unwrap();
        let with = |origin: &'static str| headers(&[("origin", origin)]);
        assert!(origin_allowed(&with("https://app.example.com"), &public));
        assert!(!origin_allowed(
            &with("https://app.example.com.evil"),
            &public
        ));
        assert!(!origin_allowed(&with("http://app.example.com"), &public));
        assert!(!origin_allowed(&with("null"), &public));
        assert!(!origin_allowed(&HeaderMap::new(), &public));
        let local = Url::parse("http://127.0.0.1:8080").unwrap();
        assert!(origin_allowed(&with("http://127.0.0.1:8080"), &local));
        assert!(!origin_allowed(&with("http://127.0.0.1:9090"), &local));
    }

    #[tokio::test]
    async fn closing_a_session_signals_only_its_sockets() {
        let registry = WebSocketRegistry::new();
        let hasher =
            crate::session::SessionHasher::new(&[crate::config::EncryptionKey::generate()]);
        let (a, b) = (hasher.current("a"), hasher.current("b"));
        let mut a1 = registry.register(&a);
        let a2 = registry.register(&a);
        let b1 = registry.register(&b);
        assert_eq!(registry.open_sessions(), 2);
        registry.close_websockets(&a);
        assert!(a1.wait_for(|c| *c).await.is_ok());
        assert!(*a2.borrow());
        assert!(!*b1.borrow());
        drop(b1);
        assert_eq!(registry.open_sessions(), 0);
    }
}
