//! Proxying: the Pleo API under `proxy.pleo_prefix`, and the header hygiene it relies on.

pub mod headers;
mod pleo;

pub use pleo::{map_pleo_error, pleo_api_url, proxy_to_pleo};
