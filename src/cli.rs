//! The command line: `serve` (default), `check-config`, `grants`, `healthcheck`, `demo`,
//! `demo-app`, `mock-pleo`.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

/// Authentication gateway for Pleo.
#[derive(Debug, Parser)]
#[command(name = "pleo-gateway", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Environment variables PLEO_GATEWAY__SECTION__KEY override it.
    #[arg(long, global = true, env = "PLEO_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do; serves when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate the configuration, print it with secrets redacted.
    CheckConfig,
    /// Background grants in the configured store (`[background]`).
    Grants {
        /// What to do with them.
        #[command(subcommand)]
        action: GrantsAction,
    },
    /// Ask the gateway on this host whether it is healthy: GET /healthz on the configured
    /// server.listen port over loopback; exit 0 on 200, 1 otherwise. For container health
    /// checks (the image has no shell or curl).
    Healthcheck {
        /// Ask /readyz instead: ready for traffic, not only alive.
        #[arg(long)]
        ready: bool,
        /// Probe this URL instead of the configured listener (e.g. the mock Pleo or demo app).
        #[arg(long, conflicts_with = "ready")]
        url: Option<url::Url>,
        /// Give up after this long, e.g. "2s".
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Run the gateway with an in-memory store, an embedded mock Pleo and a demo page.
    Demo {
        /// Port of the gateway on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run the demo's internal app on its own (for the compose stack): a public page at `/`
    /// and `/app`, which shows the identity headers the gateway in front of it sent.
    DemoApp {
        /// Port on 127.0.0.1.
        #[arg(long, default_value_t = 3000)]
        port: u16,
    },
    /// Run the mock Pleo (authorisation server + API) on its own.
    MockPleo {
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// Client id to register.
        #[arg(long, default_value = "demo-client")]
        client_id: String,
        /// Client secret; `--public-client` registers none.
        #[arg(long, default_value = "demo-secret")]
        client_secret: String,
        /// Register a public client (PKCE only, no secret).
        #[arg(long)]
        public_client: bool,
        /// Redirect URI(s) to register (exact match).
        #[arg(long, default_value = "http://127.0.0.1:8080/auth/callback")]
        redirect_uri: Vec<String>,
        /// Access token lifetime, e.g. "15m", "30s".
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        access_token_ttl: Duration,
        /// Approve automatically instead of showing the consent page.
        #[arg(long)]
        auto_approve: bool,
    },
}

/// `pleo-gateway grants …`.
#[derive(Debug, Subcommand)]
pub enum GrantsAction {
    /// List every subject with a background grant.
    List,
    /// Remove a subject's background grant (its browser session, if any, is untouched).
    Revoke {
        /// The subject URN, e.g. urn:pleo:company:<uuid>.
        subject: String,
    },
}
