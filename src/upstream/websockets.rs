//! Open WebSockets to the app per session, so that logging out (or a grant Pleo ended) closes
//! them at once. The splicing itself is `proxy::websocket`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::watch;

use crate::session::SessionKey;

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
