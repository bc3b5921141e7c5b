//! Pure parsers for single configuration values. Each returns the message of a problem on
//! failure; the caller attaches the key. Messages never echo a secret.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ipnet::IpNet;
use url::Url;

use super::EncryptionKey;

/// How to make a key, repeated wherever a key is rejected.
const KEY_HINT: &str = "make one with `openssl rand -base64 32`";

/// A humantime duration (`"90s"`, `"8h"`, `"30d"`), greater than zero.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|_| format!("not a duration ({text:?}); use e.g. \"90s\", \"8h\""))?;
    if parsed.is_zero() {
        return Err(format!("must be greater than zero ({text:?})"));
    }
    Ok(parsed)
}

/// `server.shutdown_delay`: a duration that may be zero (no delay: local development, or a
/// platform that removes endpoints before signalling), at most five minutes.
pub(super) fn shutdown_delay(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|_| format!("not a duration ({text:?}); use e.g. \"5s\", or \"0s\" for none"))?;
    if parsed > super::defaults::MAX_SHUTDOWN_DELAY {
        return Err(format!(
            "{text:?} is longer than the allowed 5m; the grace period must cover it and shutdown_timeout"
        ));
    }
    Ok(parsed)
}

/// A duration in the largest unit that divides it exactly (`"30d"`, `"8h"`, `"90s"`), so
/// that what is printed reads like what was configured and parses back to the same value.
pub(super) fn format_duration(value: Duration) -> String {
    const UNITS: &[(u64, &str)] = &[(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    if value.subsec_nanos() != 0 {
        return humantime::format_duration(value).to_string();
    }
    let secs = value.as_secs();
    UNITS
        .iter()
        .find(|(unit, _)| secs != 0 && secs.is_multiple_of(*unit))
        .map(|(unit, suffix)| format!("{}{suffix}", secs / unit))
        .unwrap_or_else(|| format!("{secs}s"))
}

/// A byte count: a plain integer or a number with a unit (`"10MiB"`, `"512 KiB"`, `"1MB"`).
pub(super) fn byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let invalid = || format!("not a size in bytes ({text:?}); use e.g. \"10485760\" or \"10MiB\"");
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(invalid()),
    };
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("too large ({text:?})"))?;
    if bytes == 0 {
        return Err(format!("must be greater than zero ({text:?})"));
    }
    Ok(bytes)
}

/// `true` or `false` (any case).
pub(super) fn boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("must be true or false ({text:?})")),
    }
}

/// A whole number greater than zero (a count of connections, say).
pub(super) fn positive_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err(format!("must be greater than zero ({text:?})")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("not a whole number ({text:?})")),
    }
}

/// `server.workers`: `"auto"` (0: one per core this process may use) or a positive count.
pub(super) fn workers(text: &str) -> Result<usize, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(0);
    }
    positive_count(text).map_err(|e| format!("{e}; or \"auto\" for one per core"))
}

/// A socket address such as `0.0.0.0:8080` or `[::]:8080`.
pub(super) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("not a socket address ({text:?}); use e.g. \"0.0.0.0:8080\" or \"[::]:8080\"")
    })
}

/// A CIDR such as `10.0.0.0/8`; a bare address is a single host (/32 or /128).
pub(super) fn cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("not a CIDR or IP address ({text:?}); use e.g. \"10.0.0.0/8\""))
}

/// An absolute http(s) URL used as a base: host required, no credentials, query or fragment;
/// a trailing `/` is removed from its path so endpoint paths can be appended.
pub(super) fn base_url(text: &str) -> Result<Url, String> {
    let mut url = http_url(text)?;
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(if trimmed.is_empty() { "/" } else { &trimmed });
    Ok(url)
}

/// A browser-facing origin: like [`base_url`], and the path must be empty or `/`.
pub(super) fn origin_url(text: &str) -> Result<Url, String> {
    let url = http_url(text)?;
    if url.path() != "/" {
        return Err(format!(
            "must be an origin without a path ({text:?}); use e.g. \"https://app.example.com\""
        ));
    }
    Ok(url)
}

fn http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|err| {
        format!("not a URL ({text:?}: {err}); use e.g. \"https://app.example.com\"")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be an http:// or https:// URL ({text:?})"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("must have a host ({text:?})"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the text holds credentials.
        return Err("must not contain credentials (user:password@)".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("must not have a query or fragment ({text:?})"));
    }
    Ok(url)
}

/// The scheme of a Redis URL, if it is one the session store can connect with. The rest of
/// the URL is not echoed, since it may hold a password.
pub(super) fn redis_url(text: &str) -> Result<(), String> {
    const SCHEMES: &[&str] = &[
        "redis",
        "rediss",
        "redis+sentinel",
        "rediss+sentinel",
        "redis+cluster",
        "rediss+cluster",
        "redis+unix",
        "unix",
    ];
    let allowed = SCHEMES.join("://, ") + "://";
    let Some((scheme, rest)) = text.trim().split_once("://") else {
        return Err(format!(
            "not a Redis URL; use e.g. \"redis://127.0.0.1:6379\" (one of {allowed})"
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !SCHEMES.contains(&scheme.as_str()) {
        let shown: String = scheme.chars().take(32).collect();
        return Err(format!(
            "unsupported scheme {shown:?}; use one of {allowed}"
        ));
    }
    let is_socket = matches!(scheme.as_str(), "unix" | "redis+unix");
    if !is_socket && rest.split(['/', '?']).next().is_none_or(str::is_empty) {
        return Err("has no host; use e.g. \"redis://127.0.0.1:6379\"".to_owned());
    }
    if is_socket && !rest.starts_with('/') {
        return Err("needs an absolute socket path, e.g. \"unix:///run/redis.sock\"".to_owned());
    }
    Ok(())
}

/// A 32-byte key in standard or URL-safe base64, padded or not.
pub(super) fn encryption_key(text: &str) -> Result<EncryptionKey, String> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let text = text.trim();
    let decoded = GeneralPurpose::new(&alphabet::STANDARD, config)
        .decode(text)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, config).decode(text))
        .map_err(|_| format!("is not valid base64; {KEY_HINT}"))?;
    let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
        format!(
            "decodes to {} bytes, but a key must be exactly 32 bytes; {KEY_HINT}",
            decoded.len()
        )
    })?;
    Ok(EncryptionKey::from_bytes(bytes))
}

/// A cookie name: an RFC 6265 token (visible ASCII except separators).
pub(super) fn cookie_name(text: &str) -> Result<(), String> {
    const SEPARATORS: &str = "()<>@,;:\\\"/[]?={}";
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !c.is_ascii_graphic() || SEPARATORS.contains(*c))
    {
        return Err(format!(
            "{text:?} is not a valid cookie name: {bad:?} is not allowed (RFC 6265 token characters only)"
        ));
    }
    Ok(())
}

/// The Pleo proxy's path prefix: `/name`, no trailing `/`, clear of the gateway's own routes.
pub(super) fn pleo_prefix(text: &str) -> Result<(), String> {
    const RESERVED: &[&str] = &["/auth", "/healthz", "/readyz", "/metrics"];
    if !text.starts_with('/') || text == "/" || text.ends_with('/') {
        return Err(format!(
            "must start with \"/\", not end with \"/\", and not be \"/\" alone ({text:?}); use e.g. \"/pleo\""
        ));
    }
    if text.contains("//")
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c))
    {
        return Err(format!(
            "may only contain letters, digits, \"-\", \".\", \"_\", \"~\" and single \"/\" ({text:?})"
        ));
    }
    if let Some(route) = RESERVED
        .iter()
        .find(|route| text == **route || text.starts_with(&format!("{route}/")))
    {
        return Err(format!(
            "collides with the gateway's own {route} routes ({text:?})"
        ));
    }
    Ok(())
}

/// A public path: starts with `/`; a `*` is only allowed at the end (prefix match).
pub(super) fn public_path(text: &str) -> Result<(), String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with \"/\""));
    }
    if text.trim_end_matches('*').contains('*') || text.ends_with("**") {
        return Err(format!(
            "{text:?}: \"*\" is only allowed once, at the end (prefix match, e.g. \"/static/*\")"
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?} must not contain whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units_and_must_be_positive() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert!(duration("30").is_err());
        assert!(duration("0s").is_err());
    }

    #[test]
    fn a_shutdown_delay_may_be_zero_but_not_longer_than_five_minutes() {
        assert_eq!(shutdown_delay("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(shutdown_delay("0s"), Ok(Duration::ZERO));
        assert_eq!(shutdown_delay("5m"), Ok(Duration::from_secs(300)));
        let too_long = shutdown_delay("6m").unwrap_err();
        assert!(too_long.contains("5m"), "{too_long}");
        assert!(shutdown_delay("5").is_err());
    }

    #[test]
    fn durations_format_in_their_largest_exact_unit() {
        for (secs, text) in [
            (30 * 86_400, "30d"),
            (8 * 3_600, "8h"),
            (600, "10m"),
            (90, "90s"),
            (0, "0s"),
        ] {
            assert_eq!(format_duration(Duration::from_secs(secs)), text);
            if secs > 0 {
                assert_eq!(duration(text), Ok(Duration::from_secs(secs)));
            }
        }
    }

    #[test]
    fn byte_sizes_accept_plain_numbers_and_units() {
        assert_eq!(byte_size("10485760"), Ok(10 << 20));
        assert_eq!(byte_size("10MiB"), Ok(10 << 20));
        assert_eq!(byte_size("16 KiB"), Ok(16 << 10));
        assert_eq!(byte_size("1MB"), Ok(1_000_000));
        assert!(byte_size("0").is_err());
        assert!(byte_size("-1").is_err());
        assert!(byte_size("ten").is_err());
        assert!(byte_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn base_urls_lose_their_trailing_slash() {
        assert_eq!(
            base_url("https://a.example/x/").map(String::from),
            Ok("https://a.example/x".into())
        );
        assert_eq!(
            base_url("https://a.example/").map(String::from),
            Ok("https://a.example/".into())
        );
        assert!(base_url("ftp://a.example").is_err());
        assert!(base_url("https://a.example/?q=1").is_err());
        assert!(base_url("https://u:p@a.example").is_err_and(|m| !m.contains("u:p")));
        assert!(origin_url("https://a.example/app").is_err());
    }

    #[test]
    fn cidrs_accept_bare_addresses() {
        assert_eq!(cidr("10.1.2.3").map(|n| n.prefix_len()), Ok(32));
        assert_eq!(cidr("::1").map(|n| n.prefix_len()), Ok(128));
        assert!(cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn redis_urls_check_the_scheme_without_echoing_the_rest() {
        assert!(redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(redis_url("rediss://:pw@h:6380/0").is_ok());
        assert!(redis_url("redis+sentinel://h1:26379,h2:26379/mymaster").is_ok());
        assert!(redis_url("redis+cluster://h1:7000,h2:7001").is_ok());
        assert!(redis_url("unix:///run/redis.sock").is_ok());
        assert!(redis_url("http://:hunter2@h").is_err_and(|m| !m.contains("hunter2")));
        assert!(redis_url("redis://").is_err());
        assert!(redis_url("hunter2").is_err_and(|m| !m.contains("hunter2")));
    }

    #[test]
    fn encryption_keys_are_32_bytes_of_either_base64() {
        let standard = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
        assert!(encryption_key(standard).is_ok());
        assert!(encryption_key(standard.trim_end_matches('=')).is_ok());
        assert!(encryption_key("-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_8=").is_ok());
        assert!(encryption_key("-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_8").is_ok());
        assert!(encryption_key("c2hvcnQ=").is_err_and(|m| m.contains("openssl rand -base64 32")));
        assert!(encryption_key("not base64!").is_err());
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(cookie_name("__Host-pleo-session").is_ok());
        assert!(cookie_name("pleo session").is_err());
        assert!(cookie_name("a=b").is_err());
        assert!(cookie_name("").is_err());
    }

    #[test]
    fn pleo_prefix_stays_clear_of_gateway_routes() {
        assert!(pleo_prefix("/pleo").is_ok());
        assert!(pleo_prefix("/api/pleo").is_ok());
        assert!(pleo_prefix("/authors").is_ok());
        for bad in [
            "pleo",
            "/",
            "/pleo/",
            "/auth",
            "/auth/pleo",
            "/healthz",
            "/pl{eo}",
            "//pleo",
        ] {
            assert!(pleo_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_paths_allow_only_a_trailing_wildcard() {
        assert!(public_path("/favicon.ico").is_ok());
        assert!(public_path("/static/*").is_ok());
        assert!(public_path("static/*").is_err());
        assert!(public_path("/a/*/b").is_err());
    }
}
