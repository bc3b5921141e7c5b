//! The request id and trace context a request arrives with: kept only from a trusted proxy.
//!
//! A client-chosen id would end up in the app's logs and file names, and a client-chosen trace
//! would join the gateway's spans to a stranger's trace; so both are believed on the same terms
//! as the forwarding headers ([`crate::forwarded`]): from one of `server.trusted_proxies`, or
//! not at all.

use axum::http::{HeaderMap, HeaderName};

/// The request id header, on requests, responses and the calls to the app.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Drops an inbound `X-Request-Id` unless the peer is a trusted proxy and the id is a plain
/// token (see [`is_plain_request_id`]); the gateway then assigns its own (`edge.rs`). A
/// client-chosen id would end up in the app's logs and file names. The W3C trace context
/// (`traceparent`, `tracestate`) is believed on the same terms: from a trusted proxy the
/// gateway's trace continues it, from anyone else it is dropped and a new trace starts.
pub fn drop_untrusted_ids(headers: &mut HeaderMap, peer_trusted: bool) {
    let keep = peer_trusted
        && headers.get_all(X_REQUEST_ID).iter().count() == 1
        && headers
            .get(X_REQUEST_ID)
            .is_some_and(|v| is_plain_request_id(v.as_bytes()));
    if !keep {
        headers.remove(X_REQUEST_ID);
    }
    if !peer_trusted {
        headers.remove(HeaderName::from_static("traceparent"));
        headers.remove(HeaderName::from_static("tracestate"));
    }
}

/// A request id safe to log and pass on: 1–128 bytes of letters, digits, `-`, `_`, `.` and `:`,
/// and no `..`.
pub fn is_plain_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && !id.windows(2).any(|w| w == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as headers;

    #[test]
    fn only_trusted_proxies_choose_the_request_id_and_trace() {
        let inbound = || {
            headers(&[
                ("x-request-id", "lb-1234"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "vendor=x"),
            ])
        };
        let mut untrusted = inbound();
        drop_untrusted_ids(&mut untrusted, false);
        assert!(untrusted.is_empty(), "{untrusted:?}");
        let mut trusted = inbound();
        drop_untrusted_ids(&mut trusted, true);
        assert_eq!(trusted, inbound());
        let mut odd = headers(&[("x-request-id", "../etc")]);
        drop_untrusted_ids(&mut odd, true);
        assert!(odd.is_empty());
    }

    #[test]
    fn request_ids_must_be_plain_tokens() {
        assert!(is_plain_request_id(b"3f1c9a2e-7b7d-4f0e-9d7a-5a1b2c3d4e5f"));
        assert!(is_plain_request_id(b"edge:abc.def_1"));
        for bad in [
            &b""[..],
            b"../../admin",
            b"a b",
            b"a/b",
            b"x\n",
            &[b'a'; 129][..],
        ] {
            assert!(!is_plain_request_id(bad), "{bad:?}");
        }
    }
}
