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
const HOP_BY_HOP: [HeaderName; 9] = [
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
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
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

    proptest! {
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
