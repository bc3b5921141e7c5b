//! The gateway's configuration: typed, validated up front, secrets kept out of logs.
//!
//! Layering, lowest to highest: built-in defaults → the TOML file (if any) → environment
//! variables `PLEO_GATEWAY__SECTION__KEY` (double underscore between levels). Variables that
//! start with `PLEO_GATEWAY` but not `PLEO_GATEWAY__` (such as `PLEO_GATEWAY_CONFIG`, which
//! names the file) are not configuration keys and are ignored, unless they look like a key
//! with an underscore missing (`PLEO_GATEWAY_SERVER__LISTEN`): see `config/env.rs`.
//!
//! Every value arrives as text (environment variables have no types), so the raw tree is read
//! key by key and validated here, collecting *every* problem before giving up: an operator
//! fixing a deployment should see all mistakes at once, each naming its key. Unknown keys are
//! errors, because a misspelt key silently falling back to a default is how a gateway ends up
//! running with the wrong cookie or the wrong Pleo environment.
//!
//! Some values parse but are refused (published keys, placeholders, plain http in production):
//! see `config/safety.rs`. `config/gateway.toml` is the commented reference for every key.

mod ca_bundle;
mod defaults;
mod env;
mod identity;
mod keys;
mod rate;
mod raw;
mod redact;
mod safety;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

pub use ca_bundle::CaBundle;
pub use identity::{BackgroundConfig, IdentityConfig, SigningKeyMaterial};
pub use rate::{Rate, RateLimitScope};

/// Prefix of the environment variables that set configuration keys (`PLEO_GATEWAY__PLEO__CLIENT_ID`).
pub const ENV_PREFIX: &str = "PLEO_GATEWAY__";

/// The whole, validated gateway configuration. `Debug` never prints a secret.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listeners and the browser-facing origin.
    pub server: ServerConfig,
    /// Pleo's authorisation server and API, and this gateway's OAuth client registration.
    pub pleo: PleoConfig,
    /// Session storage and the session cookie.
    pub session: SessionConfig,
    /// The Pleo API proxy and the internal app behind the gateway.
    pub proxy: ProxyConfig,
    /// The signed identity assertion the app receives.
    pub identity: IdentityConfig,
    /// Opt-in access to a company's most recent grant without a user present.
    pub background: BackgroundConfig,
}

/// `[server]`: where the gateway listens and how browsers reach it.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address of the main listener (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// Browser-facing origin (default `http://127.0.0.1:8080`); its path is always `/`.
    pub public_url: Url,
    /// Accept an `http://` `public_url` with the production Pleo (refused otherwise).
    pub allow_insecure_public_url: bool,
    /// Peers whose `X-Forwarded-*` headers are believed; a bare IP is a /32 or /128.
    pub trusted_proxies: Vec<IpNet>,
    /// Separate listener for `/metrics`; `None` serves it on the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Listener for the app's server side (the Pleo proxy behind an assertion or a service
    /// token); `None` (the default): not served.
    pub internal_listen: Option<SocketAddr>,
    /// After a shutdown signal, how long `/readyz` fails while everything is still served, so
    /// load balancers stop sending traffic before the listener closes (default 5 s; 0: none).
    pub shutdown_delay: Duration,
    /// How long in-flight requests may drain after a shutdown signal (default 30 s).
    pub shutdown_timeout: Duration,
    /// Largest accepted request head in bytes (default 16 KiB, 1 KiB to 1 MiB).
    pub max_header_bytes: usize,
    /// Most client connections open at once; beyond it, idle connections are closed to make
    /// room and new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Worker runtimes serving `listen`, each on its own thread (see `workers.rs`); 0: one per
    /// core this process may use.
    pub workers: usize,
    /// Rate limit per client address on `/auth/login` and `/auth/callback` (`None`: off).
    pub auth_rate_per_client: Option<Rate>,
    /// Rate limit for all clients together on the same endpoints (`None`: off).
    pub auth_rate_global: Option<Rate>,
    /// One log line per request (default on).
    pub access_log: bool,
}

/// Which Pleo deployment to talk to; picks the default `auth_url` and `api_url`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PleoEnvironment {
    /// `https://auth.staging.pleo.io` and `https://external.staging.pleo.io`.
    Staging,
    /// `https://auth.pleo.io` and `https://external.pleo.io`.
    Production,
}

impl PleoEnvironment {
    /// The name used in configuration (`"staging"`, `"production"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }

    /// The authorisation server's base URL for this environment.
    pub fn default_auth_url(self) -> &'static str {
        match self {
            Self::Staging => "https://auth.staging.pleo.io",
            Self::Production => "https://auth.pleo.io",
        }
    }

    /// The external API's base URL for this environment.
    pub fn default_api_url(self) -> &'static str {
        match self {
            Self::Staging => "https://external.staging.pleo.io",
            Self::Production => "https://external.pleo.io",
        }
    }
}

/// `[pleo]`: the OAuth client registration and Pleo's endpoints.
#[derive(Clone, Debug)]
pub struct PleoConfig {
    /// Staging or production (default staging).
    pub environment: PleoEnvironment,
    /// Authorisation server base URL, without a trailing slash (except a bare root `/`).
    pub auth_url: Url,
    /// API base URL, without a trailing slash (except a bare root `/`).
    pub api_url: Url,
    /// The OAuth client id Pleo issued.
    pub client_id: String,
    /// The OAuth client secret; `None` means a public client (PKCE only).
    pub client_secret: Option<SecretString>,
    /// Scopes to request, e.g. `users:read`; sent space-separated.
    pub scopes: Vec<String>,
    /// Refresh the access token when it expires within this (default 60 s).
    pub refresh_before_expiry: Duration,
    /// Refresh recently used sessions in the background shortly before their token needs it,
    /// so user requests rarely wait on the token endpoint.
    pub proactive_refresh: bool,
    /// Deadline for a whole outbound call to Pleo, body included (default 15 s).
    pub request_timeout: Duration,
    /// Deadline for establishing a connection to Pleo (default 5 s).
    pub connect_timeout: Duration,
    /// Extra CAs trusted for `auth_url` and `api_url`, besides the built-in roots.
    pub ca_file: Option<CaBundle>,
    /// Most proxied calls to Pleo in flight at once (one connection each), for the process.
    pub max_connections: usize,
    /// Proxied calls to Pleo allowed per minute and budget, shared by every replica (default
    /// 500, Pleo's advice; `0` turns the budget off).
    pub rate_limit_per_minute: u32,
    /// Whose calls share one budget.
    pub rate_limit_scope: RateLimitScope,
}

impl PleoConfig {
    /// `auth_url` with `path` (e.g. `"/oauth/token"`) appended to its own path.
    pub fn auth_endpoint(&self, path: &str) -> Url {
        append_path(&self.auth_url, path)
    }

    /// `api_url` with `path` (e.g. `"/v1/introspect"`) appended to its own path.
    pub fn api_endpoint(&self, path: &str) -> Url {
        append_path(&self.api_url, path)
    }
}

/// Appends `path` to `base`'s path (unlike [`Url::join`], which replaces its last segment).
pub fn append_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url
}

/// Where sessions live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStoreKind {
    /// Redis (standalone, Sentinel or Cluster): shared by all replicas.
    Redis,
    /// In-process memory: a single instance only; sessions die with the process.
    Memory,
}

impl SessionStoreKind {
    /// The name used in configuration (`"redis"`, `"memory"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memory => "memory",
        }
    }
}

/// `[session]`: session storage, the cookie, lifetimes and encryption at rest.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Redis or memory (default redis).
    pub store: SessionStoreKind,
    /// Redis connection URL; may hold a password, hence secret (default `redis://127.0.0.1:6379`).
    pub redis_url: SecretString,
    /// Prefix of every Redis key the gateway writes (default `pleo-gateway:`).
    pub key_prefix: String,
    /// Name of the session cookie (default `__Host-pleo-session`).
    pub cookie_name: String,
    /// A session unused for this long ends (default 8 h).
    pub idle_timeout: Duration,
    /// A session ends this long after login, used or not (default 30 days).
    pub absolute_timeout: Duration,
    /// Keys for tokens at rest: the first encrypts, all decrypt. Empty only with the memory
    /// store, where the caller generates one at start-up.
    pub encryption_keys: Vec<EncryptionKey>,
    /// How long a started login (state + PKCE verifier) stays valid (default 10 min).
    pub login_state_ttl: Duration,
}

/// A 256-bit key for encrypting tokens at rest; zeroised on drop, never printed.
pub struct EncryptionKey(SecretBox<[u8; 32]>);

impl EncryptionKey {
    /// The raw key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    /// A fresh random key from the operating system's CSPRNG (for the memory store and demo).
    pub fn generate() -> Self {
        Self(SecretBox::init_with_mut(|bytes: &mut [u8; 32]| {
            rand::rngs::OsRng.fill_bytes(bytes)
        }))
    }

    /// A key from raw bytes (tests and callers that derive keys themselves).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::init_with_mut(|inner: &mut [u8; 32]| {
            *inner = bytes
        }))
    }
}

impl Clone for EncryptionKey {
    fn clone(&self) -> Self {
        Self(SecretBox::init_with_mut(|inner: &mut [u8; 32]| {
            inner.copy_from_slice(self.bytes())
        }))
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

/// `[proxy]`: the Pleo API proxy and the internal app.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Path prefix of the Pleo API proxy (default `/pleo`): `/pleo/v2/x` → `{api_url}/v2/x`.
    pub pleo_prefix: String,
    /// The internal app; `None` means the gateway serves only its own routes.
    pub upstream: Option<Url>,
    /// Paths served from `upstream` without a session; a trailing `*` matches any suffix.
    pub public_paths: Vec<String>,
    /// Largest accepted request body in bytes (default 10 MiB).
    pub max_body_bytes: u64,
    /// Deadline for the upstream app to answer (default 60 s).
    pub upstream_timeout: Duration,
    /// A request body must have arrived completely within this time of the request's start.
    pub body_timeout: Duration,
    /// Bodies up to this size are read whole before a connection to the app is taken.
    pub body_buffer_bytes: usize,
    /// Most connections to the app in use at once.
    pub upstream_max_connections: usize,
    /// Extra CAs trusted for an `https://` `upstream`, besides the built-in roots.
    pub ca_file: Option<CaBundle>,
}

impl Config {
    /// Loads defaults → the TOML `file` (if `Some`) → process environment `PLEO_GATEWAY__SECTION__KEY`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        // Lossy conversion: a non-UTF-8 value then fails validation under its own key name
        // instead of being skipped silently.
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(key, value)| {
                let key = key.into_string().ok()?;
                Some((key, value.to_string_lossy().into_owned()))
            })
            .collect();
        Self::load_with_env(file, &env)
    }

    /// Like [`Config::load`], but with an explicit environment instead of the process's.
    pub fn load_with_env(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some((path, text))
            }
            None => None,
        };
        let tree = raw::RawTree::build(
            file.as_ref().map(|(path, text)| (*path, text.as_str())),
            env,
        )?;
        validate::validate(&tree)
    }

    /// The effective configuration as TOML, every secret replaced by `[redacted]`.
    pub fn redacted_toml(&self) -> String {
        redact::redacted_toml(self)
    }

    /// The OAuth `redirect_uri`: `public_url` + `/auth/callback`.
    pub fn redirect_uri(&self) -> Url {
        let mut url = self.server.public_url.clone();
        url.set_path("/auth/callback");
        url.set_query(None);
        url.set_fragment(None);
        url
    }

    /// Things worth an operator's attention in a valid configuration (`check-config` prints
    /// them): choices that work for one replica and break several.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.identity.signing_keys.is_empty() {
            warnings.push(
                "identity.signing_keys is not set: a signing key is generated at start-up. That is fine for one replica; with several, each signs with its own key and publishes only its own, so an app verifying against one replica's JWKS (and the internal listener of another) refuses the others' assertions: configure a shared key".to_owned(),
            );
        }
        if self.background.enabled && self.server.internal_listen.is_none() {
            warnings.push(
                "background.enabled = true but server.internal_listen is off: service tokens are only accepted on the internal listener".to_owned(),
            );
        }
        warnings
    }

    /// The `iss` of identity assertions: `public_url` without its trailing slash.
    pub fn issuer(&self) -> String {
        self.server
            .public_url
            .as_str()
            .trim_end_matches('/')
            .to_owned()
    }

    /// True when `public_url` is plain `http://` (local development): the session cookie then
    /// drops `Secure` and the `__Host-` prefix, which browsers reject without HTTPS.
    pub fn is_plain_http(&self) -> bool {
        self.server.public_url.scheme() == "http"
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML (or the sources could not be merged).
    #[error("{0}")]
    Parse(String),
    /// Keys were unknown or values invalid; every problem is listed.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<ConfigProblem>),
}

/// Displays problems as a header line and then one problem per line.
struct ProblemList<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(f, "invalid configuration ({count} {noun}):")?;
        for problem in self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// One thing wrong with the configuration: which key, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The dotted key, e.g. `session.idle_timeout`.
    pub key: String,
    /// What is wrong and, where possible, how to fix it. Never contains a secret value.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}
