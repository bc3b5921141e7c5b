//! `[pleo]`: the OAuth client registration, Pleo's endpoints and the outbound rate budget.

use secrecy::SecretString;

use super::super::defaults::*;
use super::super::raw::Reader;
use super::super::values;
use super::super::{PleoConfig, PleoEnvironment, RateLimitScope};

pub(super) fn pleo(r: &mut Reader) -> Option<PleoConfig> {
    let environment = r.value("pleo", "environment", "staging", |text| {
        match text.trim().to_ascii_lowercase().as_str() {
            "staging" => Ok(PleoEnvironment::Staging),
            "production" => Ok(PleoEnvironment::Production),
            _ => Err(format!(
                "must be \"staging\" or \"production\" (got {text:?})"
            )),
        }
    });
    // With an invalid environment the URL defaults are moot; staging's keep the URLs checked.
    let preset = environment.unwrap_or(PleoEnvironment::Staging);
    let auth_url = r.value(
        "pleo",
        "auth_url",
        preset.default_auth_url(),
        values::base_url,
    );
    let api_url = r.value(
        "pleo",
        "api_url",
        preset.default_api_url(),
        values::base_url,
    );

    let client_id = r.text("pleo", "client_id").unwrap_or_default();
    if client_id.trim().is_empty() {
        r.problem(
            "pleo",
            "client_id",
            "required: the OAuth client id Pleo issued for this integration",
        );
    } else if client_id.chars().any(char::is_control) {
        r.problem("pleo", "client_id", "must not contain control characters");
    }
    let client_secret = r.secret_text("pleo", "client_secret");

    let scopes = r.list("pleo", "scopes").unwrap_or_default();
    if scopes.is_empty() {
        r.problem(
            "pleo",
            "scopes",
            "required: at least one scope, e.g. [\"users:read\", \"export-jobs:read\"]",
        );
    }
    for scope in &scopes {
        if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            r.problem(
                "pleo",
                "scopes",
                format!("{scope:?} is not a scope: it must be non-empty, without whitespace"),
            );
        }
    }

    let refresh_before_expiry = r.value(
        "pleo",
        "refresh_before_expiry",
        DEFAULT_REFRESH_BEFORE_EXPIRY,
        |text| {
            let duration = values::duration(text)?;
            if duration >= MAX_REFRESH_BEFORE_EXPIRY {
                return Err(format!(
                    "must be less than 1h ({text:?}); Pleo's access tokens live about 15 minutes"
                ));
            }
            Ok(duration)
        },
    );
    let proactive_refresh = r.value("pleo", "proactive_refresh", "false", values::boolean);
    let request_timeout = r.duration("pleo", "request_timeout", DEFAULT_REQUEST_TIMEOUT);
    let connect_timeout = r.duration("pleo", "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    let ca_file = r.ca_file("pleo");
    let max_connections = r.value(
        "pleo",
        "max_connections",
        DEFAULT_PLEO_MAX_CONNECTIONS,
        values::positive_count,
    );
    let rate_limit_per_minute = r.value(
        "pleo",
        "rate_limit_per_minute",
        DEFAULT_RATE_LIMIT_PER_MINUTE,
        |text| {
            let count: u32 = text.trim().parse().map_err(|_| {
                format!("not a whole number ({text:?}); use e.g. 500, or 0 for no budget")
            })?;
            if count > MAX_RATE_LIMIT_PER_MINUTE {
                return Err(format!(
                    "{count} is more than {MAX_RATE_LIMIT_PER_MINUTE} (one call a millisecond); \
                     Pleo allows 600 a minute"
                ));
            }
            Ok(count)
        },
    );
    let rate_limit_scope = r.value(
        "pleo",
        "rate_limit_scope",
        DEFAULT_RATE_LIMIT_SCOPE,
        RateLimitScope::parse,
    );
    Some(PleoConfig {
        environment: environment?,
        auth_url: auth_url?,
        api_url: api_url?,
        client_id,
        client_secret: client_secret.map(SecretString::from),
        scopes,
        refresh_before_expiry: refresh_before_expiry?,
        proactive_refresh: proactive_refresh?,
        request_timeout: request_timeout?,
        connect_timeout: connect_timeout?,
        ca_file: ca_file?,
        max_connections: max_connections?,
        rate_limit_per_minute: rate_limit_per_minute?,
        rate_limit_scope: rate_limit_scope?,
    })
}
