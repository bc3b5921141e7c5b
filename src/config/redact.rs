//! The effective configuration as TOML for `check-config`, with every secret replaced.
//!
//! Written by hand rather than serialised, so that a secret can only appear here if a line
//! below prints it: `client_secret` and `encryption_keys` are never read, and the Redis URL
//! goes through [`redact_redis_url`].

use std::fmt::Write as _;
use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use super::{Config, values};

/// What replaces a secret value.
const REDACTED: &str = "[redacted]";

/// Renders `config` as TOML with secrets redacted (see the module docs).
pub(super) fn redacted_toml(config: &Config) -> String {
    let mut out = String::from("# Effective configuration; secrets are redacted.\n");
    let server = &config.server;
    section(&mut out, "server");
    line(&mut out, "listen", &string(&server.listen.to_string()));
    line(&mut out, "public_url", &string(&url(&server.public_url)));
    line(
        &mut out,
        "allow_insecure_public_url",
        &server.allow_insecure_public_url.to_string(),
    );
    let proxies: Vec<String> = server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    line(&mut out, "trusted_proxies", &list(&proxies));
    let metrics = server
        .metrics_listen
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    line(&mut out, "metrics_listen", &string(&metrics));
    let internal = server
        .internal_listen
        .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
    line(&mut out, "internal_listen", &string(&internal));
    line(&mut out, "shutdown_delay", &duration(server.shutdown_delay));
    line(
        &mut out,
        "shutdown_timeout",
        &duration(server.shutdown_timeout),
    );
    line(
        &mut out,
        "max_header_bytes",
        &server.max_header_bytes.to_string(),
    );
    line(
        &mut out,
        "max_connections",
        &server.max_connections.to_string(),
    );
    line(
        &mut out,
        "workers",
        &if server.workers == 0 {
            string("auto")
        } else {
            server.workers.to_string()
        },
    );
    let rate =
        |rate: Option<crate::config::Rate>| string(&rate.map_or("off".into(), |r| r.to_string()));
    line(
        &mut out,
        "auth_rate_per_client",
        &rate(server.auth_rate_per_client),
    );
    line(&mut out, "auth_rate_global", &rate(server.auth_rate_global));
    line(&mut out, "access_log", &server.access_log.to_string());

    let pleo = &config.pleo;
    section(&mut out, "pleo");
    line(&mut out, "environment", &string(pleo.environment.as_str()));
    line(&mut out, "auth_url", &string(&url(&pleo.auth_url)));
    line(&mut out, "api_url", &string(&url(&pleo.api_url)));
    line(&mut out, "client_id", &string(&pleo.client_id));
    match &pleo.client_secret {
        Some(_) => line(&mut out, "client_secret", &string(REDACTED)),
        None => out.push_str("# client_secret is not set: public client (PKCE only)\n"),
    }
    line(&mut out, "scopes", &list(&pleo.scopes));
    line(
        &mut out,
        "refresh_before_expiry",
        &duration(pleo.refresh_before_expiry),
    );
    line(
        &mut out,
        "proactive_refresh",
        if pleo.proactive_refresh {
            "true"
        } else {
            "false"
        },
    );
    line(&mut out, "request_timeout", &duration(pleo.request_timeout));
    line(&mut out, "connect_timeout", &duration(pleo.connect_timeout));
    line(&mut out, "ca_file", &ca_file(pleo.ca_file.as_ref()));
    line(
        &mut out,
        "max_connections",
        &pleo.max_connections.to_string(),
    );
    line(
        &mut out,
        "rate_limit_per_minute",
        &pleo.rate_limit_per_minute.to_string(),
    );
    line(
        &mut out,
        "rate_limit_scope",
        &string(pleo.rate_limit_scope.as_str()),
    );

    let session = &config.session;
    section(&mut out, "session");
    line(&mut out, "store", &string(session.store.as_str()));
    let redis_url = redact_redis_url(session.redis_url.expose_secret());
    line(&mut out, "redis_url", &string(&redis_url));
    line(&mut out, "key_prefix", &string(&session.key_prefix));
    line(&mut out, "cookie_name", &string(&session.cookie_name));
    line(&mut out, "idle_timeout", &duration(session.idle_timeout));
    line(
        &mut out,
        "absolute_timeout",
        &duration(session.absolute_timeout),
    );
    let count = session.encryption_keys.len();
    let keys = match count {
        0 => "[redacted: 0 keys; one is generated at start-up]".to_owned(),
        1 => "[redacted: 1 key]".to_owned(),
        n => format!("[redacted: {n} keys]"),
    };
    line(&mut out, "encryption_keys", &string(&keys));
    line(
        &mut out,
        "login_state_ttl",
        &duration(session.login_state_ttl),
    );

    let proxy = &config.proxy;
    section(&mut out, "proxy");
    line(&mut out, "pleo_prefix", &string(&proxy.pleo_prefix));
    let upstream = proxy.upstream.as_ref().map(url).unwrap_or_default();
    line(&mut out, "upstream", &string(&upstream));
    line(&mut out, "public_paths", &list(&proxy.public_paths));
    line(
        &mut out,
        "max_body_bytes",
        &proxy.max_body_bytes.to_string(),
    );
    line(
        &mut out,
        "upstream_timeout",
        &duration(proxy.upstream_timeout),
    );
    line(&mut out, "body_timeout", &duration(proxy.body_timeout));
    line(
        &mut out,
        "body_buffer_bytes",
        &proxy.body_buffer_bytes.to_string(),
    );
    line(
        &mut out,
        "upstream_max_connections",
        &proxy.upstream_max_connections.to_string(),
    );
    line(&mut out, "ca_file", &ca_file(proxy.ca_file.as_ref()));

    let identity = &config.identity;
    section(&mut out, "identity");
    match identity.signing_keys.len() {
        0 => out.push_str("# signing_keys is not set: one is generated at start-up\n"),
        1 => line(&mut out, "signing_keys", &string("[redacted: 1 key]")),
        n => line(
            &mut out,
            "signing_keys",
            &string(&format!("[redacted: {n} keys]")),
        ),
    }
    match &identity.audience {
        Some(audience) => line(&mut out, "audience", &string(audience)),
        None => out.push_str("# audience is not set: it is server.public_url\n"),
    }
    line(&mut out, "assertion_ttl", &duration(identity.assertion_ttl));

    let background = &config.background;
    section(&mut out, "background");
    line(
        &mut out,
        "enabled",
        if background.enabled { "true" } else { "false" },
    );
    match background.service_tokens.len() {
        0 => out.push_str("# service_tokens is not set\n"),
        1 => line(&mut out, "service_tokens", &string("[redacted: 1 token]")),
        n => line(
            &mut out,
            "service_tokens",
            &string(&format!("[redacted: {n} tokens]")),
        ),
    }
    line(
        &mut out,
        "grant_idle_timeout",
        &duration(background.grant_idle_timeout),
    );
    out
}

/// The path of a CA bundle (`""`: none), with how many certificates it held.
fn ca_file(bundle: Option<&crate::config::CaBundle>) -> String {
    match bundle {
        None => string(""),
        Some(bundle) => format!(
            "{}  # {} certificate(s)",
            string(&bundle.path.display().to_string()),
            bundle.certificates.len()
        ),
    }
}

/// A Redis URL with the password (in `user:password@` or a `pass`/`password` query
/// parameter) replaced. Anything before the last `@` counts as credentials, so an unusual
/// password is over-redacted rather than leaked.
pub(super) fn redact_redis_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        // Not a URL at all: it could be anything, including a bare password.
        return REDACTED.to_owned();
    };
    let (userinfo, location) = match rest.rsplit_once('@') {
        Some((userinfo, location)) => (Some(userinfo), location),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => {
                let _ = write!(out, "{user}:{REDACTED}@");
            }
            None => {
                let _ = write!(out, "{REDACTED}@");
            }
        }
    }
    match location.split_once('?') {
        None => out.push_str(location),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _))
                        if matches!(name.to_ascii_lowercase().as_str(), "pass" | "password") =>
                    {
                        format!("{name}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
    }
    out
}

fn section(out: &mut String, name: &str) {
    let _ = write!(out, "\n[{name}]\n");
}

fn line(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(out, "{key} = {value}");
}

/// A URL without the trailing `/` that `Url` always keeps on a bare origin.
fn url(url: &Url) -> String {
    let text = url.as_str();
    if url.path() == "/" {
        text.trim_end_matches('/').to_owned()
    } else {
        text.to_owned()
    }
}

fn duration(value: Duration) -> String {
    string(&values::format_duration(value))
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| string(item)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A TOML basic string.
fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_are_redacted_wherever_they_are() {
        assert_eq!(
            redact_redis_url("redis://:hunter2@h:6379/0"),
            "redis://:[redacted]@h:6379/0"
        );
        assert_eq!(
            redact_redis_url("rediss://app:p@ss/w?rd@h:6380"),
            "rediss://app:[redacted]@h:6380"
        );
        assert_eq!(
            redact_redis_url("redis://hunter2@h"),
            "redis://[redacted]@h"
        );
        assert_eq!(
            redact_redis_url("redis+unix:///run/r.sock?db=1&pass=hunter2"),
            "redis+unix:///run/r.sock?db=1&pass=[redacted]"
        );
        assert_eq!(
            redact_redis_url("redis+sentinel://h1:26379,h2:26379/main"),
            "redis+sentinel://h1:26379,h2:26379/main"
        );
        assert_eq!(redact_redis_url("hunter2"), "[redacted]");
    }

    #[test]
    fn strings_are_toml_escaped() {
        assert_eq!(string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
