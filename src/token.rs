//! Pleo tokens: talking to Pleo's token endpoint, refreshing exactly once, and sealing at rest.

pub mod cipher;
pub mod oauth;
pub mod refresh;

pub use cipher::TokenCipher;
pub use oauth::{PleoOAuth, TokenError, TokenSet};
pub use refresh::{RefreshCoordinator, RefreshError};
