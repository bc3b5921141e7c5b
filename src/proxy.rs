//! Proxying: the Pleo API under `proxy.pleo_prefix`, the internal app behind the gateway
//! (`proxy.upstream`), and the header and path hygiene both rely on.

pub mod headers;
pub mod path;
mod pleo;
mod upstream;
pub mod websocket;

pub use pleo::{OnRefreshError, forward_to_pleo, proxy_to_pleo};
pub use upstream::proxy_to_upstream;
