//! Request paths as the gateway reads them for access decisions: normalisation, and matching
//! against `proxy.public_paths`.
//!
//! The decision "may this path skip the session?" is made on a normalised path, but the app
//! receives the path exactly as the browser sent it. That gap is where auth bypasses live: if
//! the gateway and the app read one path differently, `/static/..;/admin` can look public to one
//! and be `/admin` to the other. Servers disagree in practice — nginx merges `//` before
//! resolving `..`, Tomcat and Jetty drop `;params` first, some file servers decode `%2F` or decode
//! twice, many routers do none of it. So the rules are:
//!
//! 1. [`normalize_path`] decodes percent-escapes of unreserved characters (`%2e` → `.`) and of
//!    UTF-8 text, once; escapes of everything else stay escaped (upper-cased), so `%2F` is never
//!    a separator and `%252e` stays `%252e` (never decoded twice). Paths with malformed escapes,
//!    control characters, NUL or a backslash (raw or encoded), or invalid UTF-8 (an overlong
//!    `.`) are invalid: the caller answers 400. Then `.`/`..` are resolved (RFC 3986 §5.2.4)
//!    and duplicate slashes merged. Query and fragment are ignored.
//! 2. [`is_public`] matches a normalised path against the patterns, and refuses outright any
//!    path that still carries `;`, an encoded `/` or an encoded `%`: a server could read those
//!    as structure.
//! 3. [`path_access`] calls a path public only if normalising did not change its structure
//!    (no dot segments, no `//`). Such a path means the same thing to every server; any other
//!    needs a session. Browsers resolve dot segments before sending, so real asset requests are
//!    always in this form and lose nothing.
//!
//! Pattern semantics: an entry without `*` matches that exact path only (`/favicon.ico`). A
//! trailing `*` matches any rest of the path, across `/`: `/static/*` matches `/static/` and
//! everything below it, but not `/static` itself and not `/static-evil`; `/favicon*` is a
//! plain string prefix and matches `/favicon-32.png`. Matching is case-sensitive.

use std::borrow::Cow;

/// Whether a request needs a session, from its path alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathAccess {
    /// Matches `proxy.public_paths` unambiguously: forwarded without a session.
    Public,
    /// Everything else: a session is required.
    Protected,
}

/// Decides whether `raw` (a request path, optionally with query) may skip the session.
/// `None` when the path is invalid (answer 400). It runs on every request to the app, so a
/// path that needs no decoding and is already in normal form costs no allocation.
pub fn path_access(raw: &str, patterns: &[String]) -> Option<PathAccess> {
    let decoded = decode(raw)?;
    // Only a path whose structure normalisation leaves alone is read the same way by every
    // server; anything it would rewrite is ambiguous and stays behind the session.
    let public = is_normal(&decoded) && is_public(&decoded, patterns);
    Some(if public {
        PathAccess::Public
    } else {
        PathAccess::Protected
    })
}

/// The normalised form of a request path: see the module documentation. `None` when invalid.
pub fn normalize_path(raw: &str) -> Option<String> {
    let decoded = decode(raw)?;
    Some(if is_normal(&decoded) {
        decoded.into_owned()
    } else {
        resolve(&decoded)
    })
}

/// Whether a normalised path matches one of `patterns` (exact, or prefix for a trailing `*`).
/// Paths still holding `;` (raw or `%3B`), `%2F` or `%25` are never public, whatever the
/// patterns say.
pub fn is_public(normalized: &str, patterns: &[String]) -> bool {
    let escaped = |code: &[u8]| {
        normalized
            .as_bytes()
            .windows(code.len())
            .any(|w| w.eq_ignore_ascii_case(code))
    };
    // `%3B` too: servers that decode before splitting `;params` read it as the raw one.
    if normalized.contains(';') || escaped(b"%3B") || escaped(b"%2F") || escaped(b"%25") {
        return false;
    }
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => normalized.starts_with(prefix),
            None => normalized == pattern,
        })
}

/// Whether a path has a `.` or `..` segment, also spelled with `%2E`, or a backslash (which URL
/// parsers treat as `/`). Such a path could climb out of the prefix it is appended to.
pub fn has_dot_segment(path: &str) -> bool {
    path.contains('\\')
        || path.split('/').any(|segment| {
            let folded = segment.to_ascii_lowercase().replace("%2e", ".");
            folded == "." || folded == ".."
        })
}

/// Step 1: cut query and fragment, validate, decode unreserved and UTF-8 escapes once. A path
/// of plain ASCII without escapes is its own decoding and is borrowed.
fn decode(raw: &str) -> Option<Cow<'_, str>> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return None;
    }
    if path
        .bytes()
        .all(|b| b.is_ascii() && b != b'%' && !is_forbidden(b))
    {
        return Some(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte != b'%' {
            if is_forbidden(byte) {
                return None;
            }
            out.push(byte);
            i += 1;
            continue;
        }
        let value = hex_pair(bytes.get(i + 1..i + 3)?)?;
        if is_forbidden(value) {
            return None;
        }
        if is_unreserved(value) || value >= 0x80 {
            out.push(value);
        } else {
            // Reserved and other ASCII stay escaped, in one spelling.
            out.push(b'%');
            out.extend_from_slice(format!("{value:02X}").as_bytes());
        }
        i += 3;
    }
    let text = String::from_utf8(out).ok()?;
    // C1 controls (U+0080–U+009F) and the like arrive as valid UTF-8; refuse them too.
    (!text.chars().any(char::is_control)).then_some(Cow::Owned(text))
}

/// Whether [`resolve`] would leave `decoded` as it is: no `.` or `..` segment, and no empty
/// segment but the last (a trailing slash, or the root).
fn is_normal(decoded: &str) -> bool {
    let rest = decoded.strip_prefix('/').unwrap_or(decoded);
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// Step 2: resolve `.`/`..` as RFC 3986 §5.2.4 does (empty segments count), then merge the
/// empty segments that remain, keeping a trailing slash.
fn resolve(decoded: &str) -> String {
    let rest = decoded.strip_prefix('/').unwrap_or(decoded);
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (index, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => trailing_slash = index == last,
            ".." => {
                out.pop();
                trailing_slash = index == last;
            }
            other => {
                out.push(other);
                trailing_slash = index == last && other.is_empty();
            }
        }
    }
    let kept: Vec<&str> = out.into_iter().filter(|s| !s.is_empty()).collect();
    let mut path = String::with_capacity(decoded.len());
    path.push('/');
    path.push_str(&kept.join("/"));
    if trailing_slash && !kept.is_empty() {
        path.push('/');
    }
    path
}

/// Bytes no path may carry, raw or encoded: controls, DEL and the backslash (which Windows
/// servers and some frameworks read as `/`).
fn is_forbidden(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7f || byte == b'\\'
}

/// RFC 3986 unreserved: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    match pair {
        [high, low] => Some(u8::try_from(digit(*high)? * 16 + digit(*low)?).ok()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn patterns() -> Vec<String> {
        vec!["/favicon.ico".into(), "/static/*".into(), "/logo*".into()]
    }

    fn access(raw: &str) -> Option<PathAccess> {
        path_access(raw, &patterns())
    }

    #[test]
    fn an_encoded_semicolon_is_never_public() {
        for raw in [
            "/static/..%3B/admin",
            "/static/..%3b/admin",
            "/static/%2e%2e%3B/admin",
        ] {
            assert_eq!(access(raw), Some(PathAccess::Protected), "{raw}");
        }
        assert_eq!(access("/static/app.css"), Some(PathAccess::Public));
    }

    #[test]
    fn dot_segments_are_found_in_every_spelling() {
        for path in [
            "/../v2/x",
            "/%2E%2E/x",
            "/a/%2e/b",
            "/a/..",
            "/.",
            "/..\\x",
            "/a\\b",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/v1/expenses",
            "/a..b/c",
            "/.well-known/x",
            "/%2e%2e%2e/x",
            "/",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn normalises_dots_slashes_and_unreserved_escapes() {
        for (raw, expected) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/../../b", "/b"),
            ("/..", "/"),
            ("//a///b//", "/a/b/"),
            ("/a//../b", "/a/b"),
            ("/%61%2e%2E/x", "/a../x"),
            ("/a/%2e%2e/b", "/b"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%252e%252e/b", "/a%252e%252e/b"),
            ("/caf%C3%A9", "/café"),
            ("/a?x=/../b#f", "/a"),
            ("/a%20b", "/a%20b"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Some(expected), "{raw}");
        }
    }

    #[test]
    fn refuses_what_no_server_should_see() {
        for raw in [
            "",
            "a/b",
            "*",
            "/a\\b",
            "/a%5cb",
            "/a%5Cb",
            "/a%00b",
            "/a%0d%0ab",
            "/a%7fb",
            "/a%c2%85b",
            "/a%c0%ae%c0%ae/b",
            "/a%e9",
            "/a%",
            "/a%2",
            "/a%zz",
            "/a\tb",
        ] {
            assert_eq!(normalize_path(raw), None, "{raw:?}");
            assert_eq!(access(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        let p = patterns();
        assert!(is_public("/favicon.ico", &p));
        assert!(!is_public("/favicon.ico/", &p));
        assert!(!is_public("/favicon.icox", &p));
        assert!(is_public("/static/", &p));
        assert!(is_public("/static/a/b.css", &p));
        assert!(!is_public("/static", &p));
        assert!(!is_public("/static-evil", &p));
        assert!(!is_public("/Static/a.css", &p));
        assert!(is_public("/logo-32.png", &p));
        assert!(!is_public("/anything", &[]));
    }

    #[test]
    fn no_trick_makes_a_protected_path_public() {
        for raw in [
            "/static/../secret",
            "/static/%2e%2e/secret",
            "/static/.%2E/secret",
            "/static%2f..%2fsecret",
            "/static/..%2f..%2fsecret",
            "/static/%252e%252e/secret",
            "/static/%25252e%25252e/secret",
            "//static/x",
            "/static//../secret",
            "/secret//../static/x",
            "/static/./x",
            "/static/..;/secret",
            "/static;x/a.css",
            "/favicon.ico;/secret",
            "/secret?/static/x",
            "/secret#/static/x",
            "/static%2Fx",
        ] {
            assert_eq!(access(raw), Some(PathAccess::Protected), "{raw}");
        }
    }

    #[test]
    fn plain_public_paths_stay_public() {
        for raw in [
            "/favicon.ico",
            "/favicon.ico?v=3",
            "/static/app.css",
            "/static/%61pp.css",
            "/static/fonts/Inter%20Bold.woff2",
            "/static/caf%C3%A9.png",
            "/logo.svg",
        ] {
            assert_eq!(access(raw), Some(PathAccess::Public), "{raw}");
        }
    }

    /// How other servers might read a path: no decoding; decode everything once; decode
    /// twice; merge `//` first; drop `;params` first.
    fn interpretations(raw: &str) -> Vec<String> {
        fn decode_all(s: &str) -> String {
            let bytes = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%'
                    && let Some(v) = bytes.get(i + 1..i + 3).and_then(hex_pair)
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        fn merged(s: &str) -> String {
            let mut out = String::new();
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
        let path = raw.split(['?', '#']).next().unwrap_or_default();
        let once = decode_all(path);
        let twice = decode_all(&once);
        [
            path.to_owned(),
            once.clone(),
            twice,
            merged(&once),
            no_params(&once),
            no_params(path),
        ]
        .iter()
        .map(|p| resolve(p))
        .collect()
    }

    proptest! {
        #[test]
        fn a_public_path_is_public_to_every_server(
            segments in prop::collection::vec(
                prop::sample::select(vec![
                    "static", "secret", "x.css", "..", ".", "", "%2e%2e", "%2E", ".%2e",
                    "%2f", "..%2f", "%252e%252e", "%25", "..;", ";x", "a;b", "%3b", "%2F..%2F",
                ]),
                0..8,
            ),
            query in prop::sample::select(vec!["", "?a=/../b", "#/../x"]),
        ) {
            let raw = format!("/{}{}", segments.join("/"), query);
            if access(&raw) == Some(PathAccess::Public) {
                for reading in interpretations(&raw) {
                    prop_assert!(
                        is_public(&reading, &patterns()) || reading.starts_with("/static/"),
                        "{raw} public, but a server could read it as {reading}"
                    );
                }
            }
        }

        #[test]
        fn normalised_paths_are_clean_and_stable(raw in "/[a-z./%2eEfF5c;]{0,24}") {
            if let Some(normalized) = normalize_path(&raw) {
                prop_assert!(normalized.starts_with('/'));
                prop_assert!(!normalized.contains("//"), "{normalized}");
                for segment in normalized.split('/') {
                    prop_assert!(segment != "." && segment != "..", "{normalized}");
                }
                prop_assert_eq!(normalize_path(&normalized), Some(normalized.clone()));
            }
        }

        #[test]
        fn the_shortcuts_agree_with_the_full_algorithm(raw in "/[a-z./%2eE;~\\\x01\u{e9}]{0,24}") {
            // A path in normal form is exactly one that resolving leaves unchanged.
            prop_assert_eq!(is_normal(&raw), resolve(&raw) == raw, "{}", raw);
            // A borrowed decoding happens only without escapes, and is the path itself.
            if let Some(Cow::Borrowed(path)) = decode(&raw) {
                prop_assert!(!raw.contains('%'));
                prop_assert_eq!(path, raw.as_str());
            }
            if let Some(decoded) = decode(&raw) {
                prop_assert_eq!(is_normal(&decoded), resolve(&decoded) == decoded);
            }
        }
    }
}
