//! Validation of the `return_to` parameter: only same-origin relative paths leave the gateway as
//! a redirect target, so a login link can never be turned into an open redirect.

/// Longest `return_to` kept; longer values fall back to `/`.
const MAX_LEN: usize = 2048;

/// Returns `candidate` if it is a safe same-origin path (with optional query), else `/`.
///
/// Safe means: starts with exactly one `/` and is not followed by `/` or `\` (which browsers read
/// as scheme-relative `//host`), contains no control characters, whitespace or backslashes
/// anywhere (browsers strip tabs/newlines and treat `\` as `/`), and no `#` fragment. Percent
/// escapes are decoded once to check the same rules, so `/%2F%2Fevil.example` is refused too.
pub fn sanitize_return_to(candidate: Option<&str>) -> String {
    match candidate {
        Some(path) if is_safe(path) && decoded_is_safe(path) && resolves_to_plain_path(path) => {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn is_safe(path: &str) -> bool {
    let bytes = path.as_bytes();
    path.len() <= MAX_LEN
        && bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/') | Some(b'\\'))
        && path
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '\\' && c != '#')
}

fn decoded_is_safe(path: &str) -> bool {
    // Decoding must not change where the path points: no encoded `/` or `\` right after the
    // leading slash, no encoded control characters or backslashes anywhere.
    let decoded = percent_decode(path);
    !decoded.starts_with("//")
        && !decoded.starts_with("/\\")
        && decoded.chars().all(|c| !c.is_control() && c != '\\')
}

/// Browsers resolve dot segments (also spelled `%2e`) before requesting, so
/// `/%2e%2e//evil.example` is requested as the path `//evil.example`: on our origin, but one
/// trailing-slash redirect in the app away from a scheme-relative URL. Resolve the path as a
/// browser does (the `url` crate follows the WHATWG URL standard) and refuse that outcome.
fn resolves_to_plain_path(path: &str) -> bool {
    let Ok(base) = url::Url::parse("https://origin.invalid/") else {
        return false;
    };
    base.join(path)
        .is_ok_and(|url| url.host_str() == Some("origin.invalid") && !url.path().starts_with("//"))
}

/// Decodes `%XX` escapes once (invalid escapes are kept as they are).
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_plain_paths_with_query() {
        for ok in ["/", "/reports", "/a/b?x=1&y=%20z", "/caf%C3%A9"] {
            assert_eq!(sanitize_return_to(Some(ok)), ok, "{ok}");
        }
    }

    #[test]
    fn refuses_everything_that_could_leave_the_origin() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "data:text/html,x",
            "evil.example",
            "/%2F%2Fevil.example",
            "/%5Cevil.example",
            "/\tevil",
            "/a\r\nLocation: x",
            "/a#frag",
            "/.//evil.example",
            "/%2e%2e//evil.example",
            "",
            " /a",
        ] {
            assert_eq!(sanitize_return_to(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(sanitize_return_to(None), "/");
        assert_eq!(
            sanitize_return_to(Some(&format!("/{}", "a".repeat(3000)))),
            "/"
        );
    }

    proptest! {
        #[test]
        fn result_is_always_a_relative_path(s in "\\PC{0,64}") {
            let out = sanitize_return_to(Some(&s));
            let parsed = url::Url::parse("https://gateway.example").unwrap().join(&out).unwrap();
            prop_assert_eq!(parsed.host_str(), Some("gateway.example"));
            prop_assert!(out.starts_with('/'));
            prop_assert!(!out.starts_with("//"));
        }
    }
}
