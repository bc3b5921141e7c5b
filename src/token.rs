//! Pleo tokens: talking to Pleo's token endpoint, and refreshing exactly once.

pub mod oauth;
pub mod refresh;

pub use oauth::{PleoOAuth, TokenError, TokenSet};
pub use refresh::{RefreshCoordinator, RefreshError};
