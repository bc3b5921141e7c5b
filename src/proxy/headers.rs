//! Which headers cross the gateway. Pure functions over `HeaderMap`s.
//!
//! Going out to Pleo, a request loses: hop-by-hop headers (RFC 9110 §7.6.1, including any the
//! `Connection` header names), the browser's `Cookie` and any inbound `Authorization` (the
//! gateway sets its own bearer token), the CSRF header, forwarding headers, and the identity
//! headers the gateway itself produces. Coming back, a response loses hop-by-hop headers and
//! `Set-Cookie` (Pleo's cookies are not the app's business).

use axum::http::{HeaderMap, HeaderName, header};

/// Hop-by-hop headers: meaningful for one connection only, never forwarded. Names rather than
/// strings: a lookup by `&str` parses the name again each time, on every request and response.
/// A `static`, so that [`strip_hop_by_hop`] can keep references to the names it found.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers the gateway owns or that identify the browser to the gateway only.
const GATEWAY_ONLY: [HeaderName; 9] = [
    header::COOKIE,
    header::AUTHORIZATION,
    header::HOST,
    HeaderName::from_static("x-csrf"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
];

/// Removes hop-by-hop headers, including those listed in `Connection`.
///
/// Runs twice per proxied request (its request and its response), so it looks before it
/// removes: one pass over the names present (about ten) finds the hop-by-hop ones, and only
/// those are removed. Nine removals by name cost about three times as much, and parsing every
/// `Connection` token into a `HeaderName` allocated for `keep-alive`, which nearly every
/// response carries.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut found: [Option<&'static HeaderName>; HOP_BY_HOP.len()] = Default::default();
    for (slot, hop) in found
        .iter_mut()
        .zip(headers.keys().filter_map(|name| hop_by_hop(name)))
    {
        *slot = Some(hop);
    }
    if found[0].is_none() {
        // Nothing hop-by-hop, not even a `Connection` that could list more.
        return;
    }
    // Every field named by a `Connection` option goes too (RFC 9110 §7.6.1). A lookup by
    // `&str` does not allocate; only an option naming a field that is present becomes a name.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.is_empty()
                && !HOP_BY_HOP
                    .iter()
                    .any(|hop| token.eq_ignore_ascii_case(hop.as_str()))
                && headers.contains_key(*token)
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in found.into_iter().flatten() {
        headers.remove(name);
    }
}

/// The entry of [`HOP_BY_HOP`] that `name` is. A match on the text (a jump on its length, then
/// one comparison) rather than nine comparisons of names: it runs for every header of every
/// proxied request and response.
fn hop_by_hop(name: &HeaderName) -> Option<&'static HeaderName> {
    let index = match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    };
    HOP_BY_HOP.get(index)
}

pub use crate::forwarded::spells;
use crate::forwarded::spells_bytes;

/// Whether a header name is one of the gateway's identity headers (`X-Pleo-*`), in any spelling
/// a server could normalise to the same name (`x_pleo_subject`).
pub fn is_identity_header(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-pleo-";
    name.as_bytes()
        .get(..PREFIX.len())
        .is_some_and(|start| spells_bytes(start, PREFIX))
}

/// The headers of a request as they go to the Pleo API (before the bearer token is added).
pub fn to_pleo(mut headers: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    for name in &GATEWAY_ONLY {
        headers.remove(name);
    }
    let identity: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_identity_header(name.as_str()))
        .cloned()
        .collect();
    for name in identity {
        headers.remove(name);
    }
    headers
}

/// The headers of a Pleo response as they go back to the caller.
pub fn from_pleo(mut headers: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::SET_COOKIE);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as map;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn outgoing_request_loses_credentials_and_hop_by_hop() {
        let out = to_pleo(map(&[
            ("cookie", "sid=1"),
            ("authorization", "Bearer stolen"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-csrf", "1"),
            ("x-pleo-subject", "spoof"),
            ("x_pleo_scopes", "spoof"),
            ("x-forwarded-for", "1.2.3.4"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("x-app-header", "kept"),
        ]));
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(out.contains_key("accept"));
        assert!(out.contains_key("content-type"));
        assert!(out.contains_key("x-app-header"));
    }

    #[test]
    fn response_loses_set_cookie_and_hop_by_hop() {
        let out = from_pleo(map(&[
            ("set-cookie", "pleo=1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ]));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn identity_headers_are_recognised_in_every_spelling() {
        for name in [
            "x-pleo-subject",
            "X-Pleo-Identity",
            "x_pleo_scopes",
            "X_PLEO_",
            "x-pleo_x",
        ] {
            assert!(is_identity_header(name), "{name}");
        }
        for name in [
            "x-pleo",
            "x-pleosubject",
            "xx-pleo-subject",
            "accept",
            "",
            "x-ple\u{20ac}",
        ] {
            assert!(!is_identity_header(name), "{name}");
        }
    }

    #[test]
    fn spellings_match_case_and_underscores_only() {
        assert!(spells("x-request-id", "x-request-id"));
        assert!(spells("X_Request_ID", "x-request-id"));
        assert!(!spells("x-request-i", "x-request-id"));
        assert!(!spells("x-request-idx", "x-request-id"));
        assert!(!spells("x.request.id", "x-request-id"));
    }

    /// The plain reading of RFC 9110 §7.6.1: every fixed hop-by-hop name and every name a
    /// `Connection` option gives, removed one by one.
    fn strip_hop_by_hop_by_the_book(headers: &mut HeaderMap) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed.iter().chain(&HOP_BY_HOP) {
            headers.remove(name);
        }
    }

    #[test]
    fn connection_options_name_fields_to_remove() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Secret,close , upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("close", "odd but named"),
            ("upgrade", "h2c"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn every_hop_by_hop_name_is_found_as_itself() {
        for hop in &HOP_BY_HOP {
            assert_eq!(hop_by_hop(hop), Some(hop));
        }
        assert_eq!(hop_by_hop(&header::ACCEPT), None);
    }

    proptest! {
        #[test]
        fn hop_by_hop_stripping_agrees_with_the_book(
            fields in proptest::collection::vec(
                ("(connection|keep-alive|te|trailer|upgrade|transfer-encoding|proxy-connection|x-a|x-b|close|accept)",
                 "(x-a|X-B|close|keep-alive|te|, |,|upgrade|[a-z ]{0,6})(,(x-a|x-b|Close| accept|)){0,3}"),
                0..8),
        ) {
            let mut h = HeaderMap::new();
            for (name, value) in &fields {
                if let Ok(value) = HeaderValue::from_str(value) {
                    h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
                }
            }
            let mut expected = h.clone();
            strip_hop_by_hop_by_the_book(&mut expected);
            strip_hop_by_hop(&mut h);
            prop_assert_eq!(h, expected);
        }

        #[test]
        fn spelling_agrees_with_normalising_first(name in "[a-zA-Z_\u{e9}\u{20ac}-]{0,16}") {
            let normalised = name.to_ascii_lowercase().replace('_', "-");
            prop_assert_eq!(is_identity_header(&name), normalised.starts_with("x-pleo-"));
            prop_assert_eq!(spells(&name, "x-request-id"), normalised == "x-request-id");
        }

        #[test]
        fn no_credential_survives(name in "(cookie|authorization|x-pleo-[a-z]{1,8}|x_pleo_[a-z]{1,8})", value in "[ -~]{0,20}") {
            let mut h = HeaderMap::new();
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
                h.insert(n, v);
                prop_assert!(to_pleo(h).is_empty());
            }
        }
    }
}
