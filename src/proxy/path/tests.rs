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
