//! The one cross-site request rule, for every unsafe request and every WebSocket: `/auth/*`,
//! both proxies, forward-auth and WebSocket upgrades all ask this module.
//!
//! - A request that can change state (any method but GET, HEAD, OPTIONS, TRACE) needs the
//!   `X-CSRF` header, which a cross-site form cannot send and a cross-site `fetch` cannot send
//!   without a CORS preflight the gateway never approves — or, on the app path and forward-auth,
//!   the browser's own word that it is same-origin (`Sec-Fetch-Site`, else `Origin`).
//! - A WebSocket upgrade must come from `public_url`'s origin (browsers always send `Origin` on
//!   handshakes, and the cookie rides along cross-site: cross-site WebSocket hijacking).
//! - Forward-auth judges the original request's method from every signal it gets, and treats a
//!   method it cannot read as unsafe.
//!
//! Pure functions of the headers, so the rules are unit-tested apart from any I/O.

use axum::http::{HeaderMap, HeaderName, Method, header};
use url::Url;

use crate::error::GatewayError;

/// The CSRF header unsafe requests must carry (any non-empty value).
pub const CSRF_HEADER: &str = "x-csrf";

/// Whether the method can change state (and so needs the CSRF rule).
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Fails with 403 unless the CSRF header is present and non-empty.
pub fn require_csrf_header(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers.get(CSRF_HEADER) {
        Some(v) if !v.as_bytes().is_empty() => Ok(()),
        _ => Err(GatewayError::CsrfHeaderMissing),
    }
}

/// The rule for unsafe requests to the app and forward-auth: `X-CSRF`, or the browser's own
/// word that the request is same-origin. A request with neither `Sec-Fetch-Site` nor `Origin`
/// is not from a current browser, and must carry `X-CSRF`.
pub fn same_origin_or_csrf_header(
    headers: &HeaderMap,
    public_url: &Url,
) -> Result<(), GatewayError> {
    if require_csrf_header(headers).is_ok() {
        return Ok(());
    }
    let same_origin = match headers
        .get(HeaderName::from_static("sec-fetch-site"))
        .and_then(|v| v.to_str().ok())
    {
        Some(site) => site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none"),
        None => origin_allowed(headers, public_url),
    };
    if same_origin {
        Ok(())
    } else {
        Err(GatewayError::CsrfHeaderMissing)
    }
}

/// Whether `Origin` is the gateway's own public origin.
pub fn origin_allowed(headers: &HeaderMap, public_url: &Url) -> bool {
    let expected = public_url.origin().ascii_serialization();
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| origin.eq_ignore_ascii_case(&expected))
}

/// Whether the request forward-auth is asked about is unsafe: the check request's own method
/// (Envoy sends the original one; nginx's `auth_request` always sends GET), or any
/// `X-Forwarded-Method` (Traefik) or `X-Original-Method` value. The client may have supplied
/// either header itself, so every value counts, and an empty or unparseable one is treated as
/// unsafe: a method the gateway cannot read is not one it can call safe.
pub fn original_is_unsafe(method: &Method, headers: &HeaderMap) -> bool {
    is_unsafe(method)
        || ["x-forwarded-method", "x-original-method"]
            .iter()
            .flat_map(|name| headers.get_all(*name))
            .any(|value| Method::from_bytes(value.as_bytes()).map_or(true, |m| is_unsafe(&m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as map;

    #[test]
    fn same_origin_pages_pass_and_other_sites_do_not() {
        let url = Url::parse("https://app.example.com").unwrap();
        let ok = |pairs| same_origin_or_csrf_header(&map(pairs), &url).is_ok();
        assert!(ok(&[("x-csrf", "1")]));
        assert!(ok(&[("sec-fetch-site", "same-origin")]));
        assert!(ok(&[("origin", "https://app.example.com")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        assert!(!ok(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://app.example.com")
        ]));
        assert!(!ok(&[("origin", "https://evil.example")]));
        assert!(!ok(&[("origin", "null")]));
        assert!(!ok(&[("x-csrf", "")]));
        assert!(!ok(&[]));
    }

    #[test]
    fn only_the_public_origin_is_allowed() {
        let url = Url::parse("https://app.example.com").unwrap();
        assert!(origin_allowed(
            &map(&[("origin", "https://app.example.com")]),
            &url
        ));
        assert!(origin_allowed(
            &map(&[("origin", "HTTPS://APP.EXAMPLE.COM")]),
            &url
        ));
        assert!(!origin_allowed(
            &map(&[("origin", "https://app.example.com.evil")]),
            &url
        ));
        assert!(!origin_allowed(
            &map(&[("origin", "http://app.example.com")]),
            &url
        ));
        assert!(!origin_allowed(&map(&[]), &url));
    }

    #[test]
    fn any_unsafe_or_unreadable_original_method_is_unsafe() {
        let get = Method::GET;
        assert!(!original_is_unsafe(&get, &map(&[])));
        assert!(!original_is_unsafe(
            &get,
            &map(&[("x-original-method", "GET")])
        ));
        assert!(!original_is_unsafe(
            &get,
            &map(&[("x-forwarded-method", "HEAD")])
        ));
        assert!(original_is_unsafe(&Method::POST, &map(&[])));
        for hostile in ["POST", "P(ST", "", "DELETE", "PURGE"] {
            assert!(
                original_is_unsafe(&get, &map(&[("x-original-method", hostile)])),
                "{hostile:?}"
            );
        }
        // The client-supplied X-Forwarded-Method cannot mask the proxy's X-Original-Method.
        assert!(original_is_unsafe(
            &get,
            &map(&[("x-forwarded-method", "GET"), ("x-original-method", "POST")])
        ));
        assert!(original_is_unsafe(
            &get,
            &map(&[("x-forwarded-method", "GET"), ("x-forwarded-method", "PUT")])
        ));
    }
}
