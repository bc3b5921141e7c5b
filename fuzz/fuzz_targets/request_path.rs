//! Request-path access decisions: `proxy::path::{normalize_path, is_public, path_access}` on
//! arbitrary path strings, with fixed public patterns (`/static/*`, `/public/*`, `/health`,
//! `/favicon*`).
//!
//! Invariants (the promises of `src/proxy/path.rs`'s module docs and the README's "Public paths"):
//! - `normalize_path`, when `Some`, starts with `/`, has no `//`, no `.`/`..` segment, no
//!   control character, backslash, `?` or `#`, and every `%` starts an upper-case escape of a
//!   byte that is not unreserved (one spelling, decoded once); and it is idempotent.
//! - `path_access` is `None` exactly when `normalize_path` is.
//! - `is_public` is true only for a path without `;` (raw or `%3B`), `%2F` or `%25` that equals
//!   an exact pattern or starts with a `*` pattern's prefix.
//! - A path `path_access` calls public is public to every server: for every path `http`
//!   accepts in a request (what the gateway passes in), each way another server may read it
//!   (no decoding; decoding once or twice; merging `//` first; dropping `;params` before or
//!   after decoding; the WHATWG URL parser), brought to RFC 3986 normal form (unreserved
//!   escapes decoded, dot segments resolved, empty segments dropped), still matches a public
//!   pattern. These are the readings the module's own proptest models, plus WHATWG's.
//! - `has_dot_segment` guards the Pleo API proxy, which appends the rest of the path to
//!   `api_url` with the bearer token attached: for any path `http` accepts in a request line,
//!   under the `/pleo` prefix, if `has_dot_segment` lets it through, then `api_url` + path (as
//!   `pleo_api_url` builds it), parsed by the `url` crate, stays on `api_url`'s host and under
//!   its path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pleo_gateway::proxy::path::{
    PathAccess, has_dot_segment, is_public, normalize_path, path_access,
};

const PATTERNS: &[&str] = &["/static/*", "/public/*", "/health", "/favicon*"];

fn matches_pattern(path: &str) -> bool {
    PATTERNS
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == *pattern,
        })
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `%XX` escapes whose byte satisfies `which`; other bytes and bad escapes stay.
fn decode(s: &str, which: impl Fn(u8) -> bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
            && which(h * 16 + l)
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4 `remove_dot_segments`, then empty segments dropped: an independent
/// reference for "which resource does this path name".
fn reference_resolve(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let last = segments.len() - 1;
    let mut trailing = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = i == last && s.is_empty();
            }
        }
    }
    let kept: Vec<&str> = out.into_iter().filter(|s| !s.is_empty()).collect();
    let mut result = format!("/{}", kept.join("/"));
    if trailing && !kept.is_empty() {
        result.push('/');
    }
    result
}

/// RFC 3986 syntax-based normal form: unreserved escapes decoded, then dots resolved.
fn canonical(path: &str) -> String {
    reference_resolve(&decode(path, unreserved))
}

fn merged(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

fn no_params(s: &str) -> String {
    s.split('/')
        .map(|seg| seg.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

fn whatwg(path: &str) -> Option<String> {
    let base = url::Url::parse("http://gw.example/").ok()?;
    base.join(path).ok().map(|u| u.path().to_owned())
}

/// How other servers might read the raw path (query and fragment already cut).
fn readings(path: &str) -> Vec<(&'static str, String)> {
    let once = decode(path, |_| true);
    let twice = decode(&once, |_| true);
    let mut out = vec![
        ("as sent", path.to_owned()),
        ("decoded once", once.clone()),
        ("decoded twice", twice),
        ("decoded, then // merged", merged(&once)),
        ("decoded, then ;params dropped", no_params(&once)),
        (";params dropped", no_params(path)),
    ];
    if let Some(p) = whatwg(path) {
        out.push(("WHATWG URL parser", p));
    }
    out
}

fn check_normalized(raw: &str, n: &str) {
    assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
    assert!(!n.contains("//"), "{raw:?} -> {n:?} keeps //");
    assert!(
        n.split('/').all(|s| s != "." && s != ".."),
        "{raw:?} -> {n:?} keeps a dot segment"
    );
    assert!(
        !n.chars()
            .any(|c| c.is_control() || matches!(c, '\\' | '?' | '#')),
        "{raw:?} -> {n:?} keeps a forbidden character"
    );
    let bytes = n.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let escape = bytes.get(i + 1..i + 3);
            let ok = escape.is_some_and(|e| {
                e.iter()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
                    && !unreserved(hex(e[0]).unwrap_or(0) * 16 + hex(e[1]).unwrap_or(0))
            });
            assert!(
                ok,
                "{raw:?} -> {n:?}: escape at {i} is not in its one spelling"
            );
        }
    }
    assert_eq!(
        normalize_path(n).as_deref(),
        Some(n),
        "normalize_path is not idempotent on {n:?} (from {raw:?})"
    );
}

/// `proxy_to_pleo` + `pleo_api_url` with `api_url = https://external.pleo.io/api` (a base
/// with a path, so that climbing out of it shows).
fn check_pleo_api_path(raw: &str) {
    let Ok(uri) = http::uri::PathAndQuery::try_from(raw) else {
        return;
    };
    let path = uri.path().strip_prefix("/pleo").unwrap_or("/");
    if has_dot_segment(path) {
        return;
    }
    let path = if path.starts_with('/') { path } else { "/" };
    if let Ok(url) = url::Url::parse(&format!("https://external.pleo.io/api{path}")) {
        assert_eq!(url.host_str(), Some("external.pleo.io"), "{raw:?} -> {url}");
        assert!(
            url.path().starts_with("/api/"),
            "{raw:?} passes has_dot_segment but reaches {url}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    check_pleo_api_path(raw);
    let patterns: Vec<String> = PATTERNS.iter().map(|p| (*p).to_owned()).collect();

    let normalized = normalize_path(raw);
    let access = path_access(raw, &patterns);
    assert_eq!(
        access.is_none(),
        normalized.is_none(),
        "path_access and normalize_path disagree on validity of {raw:?}"
    );
    let Some(normalized) = normalized else {
        return;
    };
    check_normalized(raw, &normalized);

    // `is_public` on its own, for the raw text and the normalised one.
    for candidate in [raw, normalized.as_str()] {
        if is_public(candidate, &patterns) {
            let upper = candidate.to_ascii_uppercase();
            assert!(
                !upper.contains(';')
                    && !upper.contains("%3B")
                    && !upper.contains("%2F")
                    && !upper.contains("%25"),
                "is_public({candidate:?}) despite ; / %3B / %2F / %25"
            );
            assert!(
                matches_pattern(candidate),
                "is_public({candidate:?}) matches no pattern"
            );
        }
    }

    if access == Some(PathAccess::Public) {
        assert!(
            is_public(&normalized, &patterns),
            "{raw:?} is Public but its normal form {normalized:?} is not"
        );
    }

    // What reaches `path_access` in the gateway is `Uri::path()` of a request `http` parsed:
    // no spaces, controls or fragment (a WHATWG parser would trim trailing spaces, so raw
    // strings outside that set are no evidence). On such paths, public means public to every
    // server.
    let Ok(wire) = http::uri::PathAndQuery::try_from(raw) else {
        return;
    };
    let path = wire.path();
    if path_access(path, &patterns) == Some(PathAccess::Public) {
        for (how, reading) in readings(path) {
            let resolved = canonical(&reading);
            assert!(
                matches_pattern(&resolved),
                "{path:?} is Public, but a server reading it {how} ({reading:?}) serves {resolved:?}"
            );
        }
    }
});
