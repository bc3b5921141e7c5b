//! Proxying: the Pleo API under `proxy.pleo_prefix`, the internal app behind the gateway
//! (`proxy.upstream`), and the header and path hygiene both rely on.

pub mod forwarded;
pub mod headers;
pub mod path;
mod pleo;
mod upstream;
pub mod websocket;

pub use pleo::{map_pleo_error, pleo_api_url, proxy_to_pleo};
pub use upstream::{UpstreamClient, proxy_to_upstream, same_origin_or_csrf_header};
pub use websocket::WebSocketRegistry;
