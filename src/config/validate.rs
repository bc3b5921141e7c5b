//! Turns the raw tree into a typed [`Config`], applying defaults and collecting every problem.
//!
//! Defaults are text, parsed by the same functions as user input. A field whose value is
//! invalid becomes `None` once its problem is recorded, and reading carries on, so one run
//! reports every problem; a [`Config`] exists only when there were none.

mod pleo;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::defaults::*;
use super::raw::{RawTree, Reader};
use super::values;
use super::{
    CaBundle, Config, ConfigError, EncryptionKey, ProxyConfig, ServerConfig, SessionConfig,
    SessionStoreKind,
};

/// Validates the whole tree; `Err(Invalid)` lists every problem found.
pub(super) fn validate(tree: &RawTree) -> Result<Config, ConfigError> {
    let mut reader = Reader::new(tree);
    // Every section is read before looking at the results, so every problem is found.
    let server = server(&mut reader);
    let pleo = pleo::pleo(&mut reader);
    let session = session(&mut reader);
    let proxy = proxy(&mut reader);
    let identity = super::identity::identity(&mut reader);
    let background = super::identity::background(&mut reader);
    // Values that parse but must not be used: the published examples, plain http in production.
    super::safety::check(
        &mut reader.problems,
        server.as_ref(),
        pleo.as_ref(),
        session.as_ref(),
    );
    let problems = reader.problems.0;
    match (server, pleo, session, proxy, identity, background) {
        (
            Some(server),
            Some(pleo),
            Some(session),
            Some(proxy),
            Some(identity),
            Some(background),
        ) if problems.is_empty() => Ok(Config {
            server,
            pleo,
            session,
            proxy,
            identity,
            background,
        }),
        // A `None` always comes with a recorded problem.
        _ => Err(ConfigError::Invalid(problems)),
    }
}

impl Reader<'_> {
    /// `section.key` (or, when absent, the `default` text) parsed by `parse`; `None` after
    /// recording a problem when that fails. Defaults go through the same parser as user input.
    pub(super) fn value<T>(
        &mut self,
        section: &str,
        key: &str,
        default: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self
            .text(section, key)
            .unwrap_or_else(|| default.to_owned());
        match parse(&text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.problem(section, key, message);
                None
            }
        }
    }

    fn duration(&mut self, section: &str, key: &str, default: &str) -> Option<Duration> {
        self.value(section, key, default, values::duration)
    }

    /// Every entry of a list parsed by `parse`; failing entries are reported (then `None`).
    fn parsed_list<T>(
        &mut self,
        section: &str,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let mut out = Some(Vec::new());
        for item in self.list(section, key).unwrap_or_default() {
            match parse(&item) {
                Ok(value) => {
                    if let Some(out) = out.as_mut() {
                        out.push(value);
                    }
                }
                Err(message) => {
                    self.problem(section, key, message);
                    out = None;
                }
            }
        }
        out
    }

    /// `section.ca_file`: `None` when unset or empty; `Some(None)` after recording a problem.
    fn ca_file(&mut self, section: &str) -> Option<Option<CaBundle>> {
        let Some(path) = self
            .text(section, "ca_file")
            .filter(|p| !p.trim().is_empty())
        else {
            return Some(None);
        };
        let text = self.read_file(section, "ca_file", &path)?;
        if text.trim().is_empty() {
            self.problem(section, "ca_file", format!("{path:?} is empty"));
            return None;
        }
        match CaBundle::from_pem(path.trim(), &text) {
            Ok(bundle) => Some(Some(bundle)),
            Err(message) => {
                self.problem(section, "ca_file", message);
                None
            }
        }
    }

    /// Records `message` under `section.key` when `check` fails.
    fn check(&mut self, section: &str, key: &str, check: Result<(), String>) {
        if let Err(message) = check {
            self.problem(section, key, message);
        }
    }
}

fn server(r: &mut Reader) -> Option<ServerConfig> {
    let listen = r.value("server", "listen", DEFAULT_LISTEN, values::socket_addr);
    let public_url = r.value(
        "server",
        "public_url",
        DEFAULT_PUBLIC_URL,
        values::origin_url,
    );
    let allow_insecure_public_url = r.value(
        "server",
        "allow_insecure_public_url",
        "false",
        values::boolean,
    );
    let trusted_proxies = r.parsed_list("server", "trusted_proxies", values::cidr);
    let metrics_listen = r.value("server", "metrics_listen", DEFAULT_METRICS_LISTEN, |text| {
        if text.trim().is_empty() || text.trim().eq_ignore_ascii_case("off") {
            Ok(None)
        } else {
            values::socket_addr(text).map(Some)
        }
    });
    let internal_listen = r.value("server", "internal_listen", "off", |text| {
        if text.trim().is_empty() || text.trim().eq_ignore_ascii_case("off") {
            Ok(None)
        } else {
            values::socket_addr(text).map(Some)
        }
    });
    let shutdown_delay = r.value(
        "server",
        "shutdown_delay",
        DEFAULT_SHUTDOWN_DELAY,
        values::shutdown_delay,
    );
    let shutdown_timeout = r.duration("server", "shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT);
    let max_header_bytes = r.value(
        "server",
        "max_header_bytes",
        DEFAULT_MAX_HEADER_BYTES,
        |text| {
            let bytes = values::byte_size(text)?;
            if !MAX_HEADER_BYTES_RANGE.contains(&bytes) {
                return Err(format!(
                    "{bytes} is out of range; allowed are 1KiB (1024) to 1MiB (1048576)"
                ));
            }
            usize::try_from(bytes).map_err(|_| format!("{bytes} is too large"))
        },
    );
    let max_connections = r.value(
        "server",
        "max_connections",
        DEFAULT_MAX_CONNECTIONS,
        values::positive_count,
    );
    let workers = r.value("server", "workers", DEFAULT_WORKERS, values::workers);
    let auth_rate_per_client = r.value(
        "server",
        "auth_rate_per_client",
        DEFAULT_AUTH_RATE_PER_CLIENT,
        crate::config::Rate::parse,
    );
    let auth_rate_global = r.value(
        "server",
        "auth_rate_global",
        DEFAULT_AUTH_RATE_GLOBAL,
        crate::config::Rate::parse,
    );
    let access_log = r.value("server", "access_log", "true", values::boolean);
    Some(ServerConfig {
        listen: listen?,
        public_url: public_url?,
        allow_insecure_public_url: allow_insecure_public_url?,
        trusted_proxies: trusted_proxies?,
        metrics_listen: metrics_listen?,
        internal_listen: internal_listen?,
        shutdown_delay: shutdown_delay?,
        shutdown_timeout: shutdown_timeout?,
        max_header_bytes: max_header_bytes?,
        max_connections: max_connections?,
        workers: workers?,
        auth_rate_per_client: auth_rate_per_client?,
        auth_rate_global: auth_rate_global?,
        access_log: access_log?,
    })
}

fn session(r: &mut Reader) -> Option<SessionConfig> {
    let store = r.value("session", "store", "redis", |text| {
        match text.trim().to_ascii_lowercase().as_str() {
            "redis" => Ok(SessionStoreKind::Redis),
            "memory" => Ok(SessionStoreKind::Memory),
            _ => Err(format!("must be \"redis\" or \"memory\" (got {text:?})")),
        }
    });

    let redis_url = SecretString::from(
        r.secret_text("session", "redis_url")
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()),
    );
    if store == Some(SessionStoreKind::Redis) {
        r.check(
            "session",
            "redis_url",
            values::redis_url(redis_url.expose_secret()),
        );
    }

    let key_prefix = r
        .text("session", "key_prefix")
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
    if key_prefix.is_empty() {
        r.problem(
            "session",
            "key_prefix",
            "must not be empty; use e.g. \"pleo-gateway:\"",
        );
    } else if key_prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        r.problem(
            "session",
            "key_prefix",
            format!("must not contain whitespace ({key_prefix:?})"),
        );
    }

    let cookie_name = r
        .text("session", "cookie_name")
        .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_owned());
    r.check("session", "cookie_name", values::cookie_name(&cookie_name));

    let idle_timeout = r.duration("session", "idle_timeout", DEFAULT_IDLE_TIMEOUT);
    let absolute_timeout = r.duration("session", "absolute_timeout", DEFAULT_ABSOLUTE_TIMEOUT);
    if let (Some(idle), Some(absolute)) = (idle_timeout, absolute_timeout)
        && idle > absolute
    {
        r.problem(
            "session",
            "idle_timeout",
            format!(
                "{} is longer than session.absolute_timeout ({}); it must not be",
                values::format_duration(idle),
                values::format_duration(absolute)
            ),
        );
    }

    let encryption_keys = encryption_keys(r, store);
    let login_state_ttl = r.duration("session", "login_state_ttl", DEFAULT_LOGIN_STATE_TTL);
    Some(SessionConfig {
        store: store?,
        redis_url,
        key_prefix,
        cookie_name,
        idle_timeout: idle_timeout?,
        absolute_timeout: absolute_timeout?,
        encryption_keys,
        login_state_ttl: login_state_ttl?,
    })
}

/// The keys, inline or from `encryption_keys_file`; at least one is required with Redis.
fn encryption_keys(r: &mut Reader, store: Option<SessionStoreKind>) -> Vec<EncryptionKey> {
    const HINT: &str = "make one with `openssl rand -base64 32`";
    let redis = store == Some(SessionStoreKind::Redis);
    let Some(list) = r.secret_list("session", "encryption_keys") else {
        if redis {
            r.problem(
                "session",
                "encryption_keys",
                format!(
                    "required with store = \"redis\" (tokens are encrypted at rest): \
                     at least one base64 key of 32 bytes; {HINT}"
                ),
            );
        }
        return Vec::new();
    };
    let mut keys = Vec::with_capacity(list.items.len());
    for (index, item) in list.items.iter().enumerate() {
        match values::encryption_key(item) {
            Ok(key) => keys.push(key),
            // Only the position is named: the text is (or was meant to be) a secret.
            Err(message) => r.problems.push(
                list.key.clone(),
                format!("{} {} {message}", list.entry, index + 1),
            ),
        }
    }
    if list.items.is_empty() && redis {
        r.problems.push(list.key, format!("holds no keys; {HINT}"));
    }
    keys
}

fn proxy(r: &mut Reader) -> Option<ProxyConfig> {
    let pleo_prefix = r
        .text("proxy", "pleo_prefix")
        .unwrap_or_else(|| DEFAULT_PLEO_PREFIX.to_owned());
    r.check("proxy", "pleo_prefix", values::pleo_prefix(&pleo_prefix));
    let upstream = r.value("proxy", "upstream", "", |text| {
        if text.trim().is_empty() {
            Ok(None)
        } else {
            values::base_url(text).map(Some)
        }
    });
    let public_paths = r.list("proxy", "public_paths").unwrap_or_default();
    for path in &public_paths {
        r.check("proxy", "public_paths", values::public_path(path));
    }
    let max_body_bytes = r.value(
        "proxy",
        "max_body_bytes",
        DEFAULT_MAX_BODY_BYTES,
        values::byte_size,
    );
    let upstream_timeout = r.duration("proxy", "upstream_timeout", DEFAULT_UPSTREAM_TIMEOUT);
    let body_timeout = r.duration("proxy", "body_timeout", DEFAULT_BODY_TIMEOUT);
    let body_buffer_bytes = r.value(
        "proxy",
        "body_buffer_bytes",
        DEFAULT_BODY_BUFFER_BYTES,
        |text| {
            let bytes = values::byte_size(text)?;
            if bytes > 16 << 20 {
                return Err(format!(
                    "{bytes} is more than 16MiB; larger bodies stream to the app instead"
                ));
            }
            usize::try_from(bytes).map_err(|_| format!("{bytes} is too large"))
        },
    );
    let upstream_max_connections = r.value(
        "proxy",
        "upstream_max_connections",
        DEFAULT_UPSTREAM_MAX_CONNECTIONS,
        values::positive_count,
    );
    let ca_file = r.ca_file("proxy");
    Some(ProxyConfig {
        pleo_prefix,
        upstream: upstream?,
        public_paths,
        max_body_bytes: max_body_bytes?,
        upstream_timeout: upstream_timeout?,
        body_timeout: body_timeout?,
        body_buffer_bytes: body_buffer_bytes?,
        upstream_max_connections: upstream_max_connections?,
        ca_file: ca_file?,
    })
}
