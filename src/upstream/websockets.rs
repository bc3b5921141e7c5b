//! Open WebSockets to the app per session, so that logging out (or a grant Pleo ended) closes
//! them at once, and how many may be open at all. The splicing itself is `proxy::websocket`.
//!
//! An upgraded socket leaves the HTTP connection table (hyper hands the connection over) and
//! the app-connection slots (the 101 has no body to hold one), so without a bound of its own a
//! client could open sockets until the process runs out of file descriptors.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::session::SessionKey;

/// Most WebSockets spliced to the app at once (each holds two sockets: the client's and the
/// app's).
pub const MAX_WEBSOCKETS: usize = 1024;

/// Open sockets per session, so a logout can close them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WebSocketRegistry {
    sessions: Arc<Mutex<HashMap<SessionKey, watch::Sender<bool>>>>,
    slots: Arc<Semaphore>,
}

impl Default for WebSocketRegistry {
    fn default() -> Self {
        Self {
            sessions: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_WEBSOCKETS)),
        }
    }
}

impl WebSocketRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A slot for one more socket, held for the socket's life; `None` when
    /// [`MAX_WEBSOCKETS`] are open (the upgrade is then refused with 503).
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
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
    pub fn register(&self, key: &SessionKey) -> watch::Receiver<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_bounded() {
        let registry = WebSocketRegistry::new();
        let held: Vec<_> = (0..MAX_WEBSOCKETS).map_while(|_| registry.slot()).collect();
        assert_eq!(held.len(), MAX_WEBSOCKETS);
        assert!(registry.slot().is_none());
        drop(held);
        assert!(registry.slot().is_some());
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
