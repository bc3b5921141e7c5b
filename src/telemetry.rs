//! Logging set-up, and process-wide initialisation the TLS stack needs.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the tracing subscriber. `RUST_LOG` filters (default `info`);
/// `PLEO_GATEWAY_LOG_FORMAT=json` switches to one JSON object per line for log shippers.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json =
        std::env::var("PLEO_GATEWAY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(fmt::layer().json().with_current_span(false))
            .try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
    // Already installed (tests, embedding): keep the existing one.
    let _ = result;
}

/// Selects `ring` as the one rustls crypto provider for every TLS client in the process
/// (reqwest and redis), so none of them falls back to a different provider or panics choosing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
