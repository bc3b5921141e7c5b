//! `Cookie` header parsing: `session::cookie::{find_cookie, cookie_pairs, without_cookies}` and
//! `CookieSettings::is_gateway_cookie`, stripping the gateway's cookies the way
//! `proxy::upstream` does before a request reaches the app.
//!
//! Input: lines separated by `\n`. The first line is the configured cookie name when it is an
//! RFC 6265 token (what `session.cookie_name` accepts), else `__Host-pleo-session`; a leading
//! `http:` means a plain-HTTP `public_url` (no `__Host-` prefix, no `Secure`). Every other line
//! is one `Cookie` header value, kept only if `HeaderValue` accepts the bytes (as hyper would).
//!
//! Invariants:
//! - `find_cookie`'s value is a substring of one of the header lines and holds no `;`; it is
//!   the value of the first pair `cookie_pairs` yields under that name.
//! - Stripping removes every gateway cookie: the rewritten line is a valid `HeaderValue`, and no
//!   pair in it (as `cookie_pairs` reads it) has a name `is_gateway_cookie` accepts.
//! - Stripping removes nothing else: every other cookie name `find_cookie` finds in the
//!   original line has the same (first) value in the rewritten line.
//! - `None` ("nothing left") only when every non-blank pair of the line was a gateway cookie.
//! - Stripping is idempotent: stripping the rewritten line again returns it unchanged.
//! - `is_gateway_cookie` accepts the session cookie under its effective and configured name and
//!   every pending-login cookie name (`login_name(tag)`, which `login_tag` maps back to `tag`),
//!   and ignores ASCII case (browsers match `__Host-`/`__Secure-` without regard to case).
#![no_main]

use http::{HeaderMap, HeaderValue, header::COOKIE};
use libfuzzer_sys::fuzz_target;
use pleo_gateway::session::cookie::{CookieSettings, cookie_pairs, find_cookie, without_cookies};

const DEFAULT_NAME: &str = "__Host-pleo-session";

/// What `config::values::cookie_name` accepts: visible ASCII except separators.
fn is_token(name: &str) -> bool {
    const SEPARATORS: &str = "()<>@,;:\\\"/[]?={}";
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !SEPARATORS.contains(c))
}

fn single(line: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, HeaderValue::from_str(line).expect("valid line"));
    headers
}

/// The name of each `;`-separated pair, as `without_cookies` judges it (the whole pair when it
/// has no `=`), for non-blank pairs.
fn pair_names(line: &str) -> Vec<&str> {
    line.split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').map_or(pair, |(k, _)| k.trim()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let first = std::str::from_utf8(lines.next().unwrap_or_default()).unwrap_or_default();
    let (plain_http, first) = match first.strip_prefix("http:") {
        Some(rest) => (true, rest),
        None => (false, first),
    };
    let configured = if is_token(first) { first } else { DEFAULT_NAME };
    let settings = CookieSettings::new(configured, plain_http);
    let ours = |name: &str| settings.is_gateway_cookie(name);

    assert!(
        ours(&settings.name) && ours(&settings.configured_name),
        "{settings:?}"
    );

    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    let texts: Vec<&str> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();

    let pairs: Vec<(&str, &str)> = cookie_pairs(&headers).collect();
    for (name, value) in &pairs {
        assert!(
            !name.contains(';') && !name.contains('='),
            "pair name {name:?}"
        );
        assert_eq!(
            ours(name),
            ours(&name.to_ascii_lowercase()),
            "case matters for {name:?}"
        );
        assert_eq!(
            ours(name),
            ours(&name.to_ascii_uppercase()),
            "case matters for {name:?}"
        );
        if let Some(tag) = settings.login_tag(name) {
            assert_eq!(
                settings.login_name(tag),
                *name,
                "login_tag/login_name round trip"
            );
            assert!(ours(name), "login cookie {name:?} not recognised");
        }
        // Any value as a login tag: its cookie is the gateway's.
        let login = settings.login_name(value);
        assert!(ours(&login), "login cookie {login:?} not recognised");
        assert_eq!(settings.login_tag(&login), Some(*value));
    }
    for name in [settings.name.as_str(), settings.configured_name.as_str()]
        .into_iter()
        .chain(pairs.iter().map(|(name, _)| *name))
    {
        let found = find_cookie(&headers, name);
        let first = pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        assert_eq!(found, first, "find_cookie({name:?}) is not the first pair");
        if let Some(found) = found {
            assert!(
                texts.iter().any(|line| line.contains(found)),
                "find_cookie({name:?}) = {found:?} is in no header line {texts:?}"
            );
            assert!(!found.contains(';'), "{found:?} spans two pairs");
        }
    }

    for line in &texts {
        let before = single(line);
        match without_cookies(line, ours) {
            Some(rest) => {
                let value = HeaderValue::from_str(&rest);
                assert!(
                    value.is_ok(),
                    "{line:?} stripped to an invalid header {rest:?}"
                );
                let after = single(&rest);
                for (name, value) in cookie_pairs(&after) {
                    assert!(
                        !ours(name),
                        "gateway cookie {name}={value} survives stripping {line:?} -> {rest:?}"
                    );
                }
                for (name, _) in cookie_pairs(&before) {
                    if !ours(name) {
                        assert_eq!(
                            find_cookie(&before, name),
                            find_cookie(&after, name),
                            "stripping {line:?} -> {rest:?} changed cookie {name:?}"
                        );
                    }
                }
                assert_eq!(
                    without_cookies(&rest, ours).as_deref(),
                    Some(rest.as_str()),
                    "stripping is not idempotent on {rest:?}"
                );
            }
            None => {
                for name in pair_names(line) {
                    assert!(
                        ours(name),
                        "{line:?} stripped to nothing, but {name:?} is not a gateway cookie"
                    );
                }
            }
        }
    }
});
