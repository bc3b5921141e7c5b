//! Which headers cross between the browser and the app. Pure functions over `HeaderMap`s.
//!
//! Towards the app a request keeps its end-to-end headers, the app's own cookies and its
//! `Authorization` (the app may run its own API auth; the gateway never writes a Pleo token
//! there, and a client that sends one chose to). It loses: hop-by-hop headers, `Host` (the
//! client sets the app's; the browser's is in `X-Forwarded-Host`), `Expect` (already answered
//! by the gateway's server), the gateway's session cookie, every inbound identity header and
//! request id in any spelling (`X-Pleo-Identity` included), and spoofable forwarding headers. It
//! gains the session's identity headers and signed assertion, the gateway's request id and
//! `X-Forwarded-*`.
//!
//! Back towards the browser a response loses hop-by-hop headers and any `Set-Cookie` that
//! would set, clear or shadow the gateway's cookie; the app's other cookies pass.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{
    auth::guard::identity_headers,
    forwarded::{self, Forwarding},
    identity::IDENTITY_HEADER,
    proxy::headers::{is_identity_header, spells, strip_hop_by_hop},
    session::{
        Session,
        cookie::{CookieSettings, without_cookies},
    },
};

use crate::request_id::X_REQUEST_ID;

/// What the gateway knows about a request on its way to the app.
#[derive(Debug)]
pub struct RequestRewrite<'a> {
    /// The gateway's cookies, which never reach the app.
    pub gateway_cookies: &'a CookieSettings,
    /// The session whose identity the app should see; `None` for public paths.
    pub identity: Option<&'a Session>,
    /// The signed assertion of that identity (`X-Pleo-Identity`).
    pub assertion: Option<&'a HeaderValue>,
    /// The request id the gateway assigned.
    pub request_id: Option<&'a HeaderValue>,
    /// Client address, protocol and host.
    pub forwarding: &'a Forwarding,
    /// Whether this is a WebSocket upgrade (then `Upgrade`/`Connection` are kept).
    pub websocket: bool,
}

/// The headers of a request as they go to the app.
pub fn request_headers(mut headers: HeaderMap, rewrite: &RequestRewrite<'_>) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    strip_gateway_cookie(&mut headers, rewrite.gateway_cookies);
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            is_identity_header(name)
                || (spells(name, X_REQUEST_ID.as_str())
                    && (name != X_REQUEST_ID.as_str() || rewrite.request_id.is_some()))
        })
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    if let Some(session) = rewrite.identity {
        identity_headers(session, &mut headers);
        if let Some(assertion) = rewrite.assertion {
            // A name, not a string: inserting by `&str` copies the name on every request.
            const IDENTITY: HeaderName = HeaderName::from_static(IDENTITY_HEADER);
            headers.insert(IDENTITY, assertion.clone());
        }
    }
    if let Some(id) = rewrite.request_id {
        headers.insert(X_REQUEST_ID, id.clone());
    }
    forwarded::apply(&mut headers, rewrite.forwarding);
    if rewrite.websocket {
        mark_websocket_upgrade(&mut headers);
    }
    headers
}

/// The headers of the app's response as they go back to the browser.
pub fn response_headers(headers: &mut HeaderMap, gateway_cookies: &CookieSettings, upgraded: bool) {
    strip_hop_by_hop(headers);
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|value| !touches_gateway_cookie(value, gateway_cookies))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    if upgraded {
        mark_websocket_upgrade(headers);
    }
}

/// Removes the gateway's cookie from every `Cookie` header, keeping the others.
fn strip_gateway_cookie(headers: &mut HeaderMap, cookies: &CookieSettings) {
    let lines: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        // A line that is not text cannot be checked for our cookie, so it does not go out.
        .filter_map(|value| value.to_str().ok())
        .filter_map(|line| without_cookies(line, |name| cookies.is_gateway_cookie(name)))
        .filter_map(|line| HeaderValue::from_str(&line).ok())
        .collect();
    headers.remove(header::COOKIE);
    for line in lines {
        headers.append(header::COOKIE, line);
    }
}

/// Whether a `Set-Cookie` would touch the gateway's cookie: same name in any case (browsers
/// match the `__Host-` prefix case-insensitively), or nameless (`=name=value` is sent back as
/// `name=value`, a known way to plant a cookie under another name), or not readable at all.
fn touches_gateway_cookie(value: &HeaderValue, cookies: &CookieSettings) -> bool {
    let Ok(text) = value.to_str() else {
        return true;
    };
    let pair = text.split(';').next().unwrap_or_default();
    let name = pair.split_once('=').map_or("", |(name, _)| name.trim());
    name.is_empty() || cookies.is_gateway_cookie(name)
}

/// The hop-by-hop pair a WebSocket handshake needs on both legs.
fn mark_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{SessionData, SessionHasher};
    use crate::test_support::header_map as map;
    use proptest::prelude::*;
    use secrecy::SecretString;

    /// Plain-HTTP settings: the cookie is `pleo-session`, configured as `__Host-pleo-session`.
    fn names() -> CookieSettings {
        CookieSettings::new("__Host-pleo-session", true)
    }

    fn session() -> Session {
        let key = SessionHasher::new(&[crate::config::EncryptionKey::generate()]).current("x");
        Session {
            key,
            version: 1,
            absolute_deadline_ms: 0,
            data: std::sync::Arc::new(SessionData {
                access_token: SecretString::from("pleo-access-token"),
                refresh_token: Some(SecretString::from("pleo-refresh-token")),
                access_expires_at_ms: 0,
                access_lifetime_ms: 0,
                subject: Some("urn:pleo:company:42".into()),
                scopes: vec!["users:read".into(), "export-jobs:read".into()],
                created_at_ms: 0,
            }),
        }
    }

    fn forwarding() -> Forwarding {
        let url = url::Url::parse("https://app.example.com").unwrap();
        forwarded::resolve(
            "198.51.100.1".parse().unwrap(),
            &[],
            &HeaderMap::new(),
            &forwarded::PublicOrigin::new(&url),
        )
    }

    fn rewrite<'a>(
        identity: Option<&'a Session>,
        request_id: Option<&'a HeaderValue>,
        forwarding: &'a Forwarding,
    ) -> RequestRewrite<'a> {
        RequestRewrite {
            gateway_cookies: Box::leak(Box::new(names())),
            identity,
            assertion: identity.map(|_| &*Box::leak(Box::new(HeaderValue::from_static("signed")))),
            request_id,
            forwarding,
            websocket: false,
        }
    }

    #[test]
    fn the_app_sees_identity_not_credentials() {
        let session = session();
        let id = HeaderValue::from_static("gateway-id");
        let f = forwarding();
        let out = request_headers(
            map(&[
                ("cookie", "theme=dark; pleo-session=SECRET; lang=da"),
                ("cookie", "__Host-pleo-session=SECRET"),
                ("authorization", "Basic YXBwOmFwcA=="),
                ("x-pleo-subject", "urn:pleo:company:spoofed"),
                ("x_pleo_subject", "urn:pleo:company:spoofed"),
                ("X-PLEO-SCOPES", "everything"),
                ("x-pleo-identity", "spoofed"),
                ("x_pleo_identity", "spoofed"),
                ("x_request_id", "spoofed"),
                ("x-request-id", "spoofed"),
                ("host", "evil.example"),
                ("connection", "close, x-private"),
                ("x-private", "1"),
                ("expect", "100-continue"),
                ("accept", "text/html"),
            ]),
            &rewrite(Some(&session), Some(&id), &f),
        );
        assert_eq!(out["cookie"], "theme=dark; lang=da");
        assert_eq!(out.get_all("cookie").iter().count(), 1);
        assert_eq!(out["authorization"], "Basic YXBwOmFwcA==");
        assert_eq!(out["x-pleo-subject"], "urn:pleo:company:42");
        assert_eq!(out["x-pleo-scopes"], "users:read export-jobs:read");
        assert_eq!(out["x-pleo-identity"], "signed");
        assert_eq!(out.get_all("x-pleo-identity").iter().count(), 1);
        assert_eq!(out["x-request-id"], "gateway-id");
        for gone in [
            "x_pleo_subject",
            "x_pleo_identity",
            "x_request_id",
            "host",
            "connection",
            "x-private",
            "expect",
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        assert_eq!(out["x-forwarded-for"], "198.51.100.1");
        let all = format!("{out:?}");
        assert!(
            !all.contains("SECRET") && !all.contains("spoofed") && !all.contains("pleo-access")
        );
    }

    #[test]
    fn public_paths_get_no_identity_and_keep_a_request_id_they_cannot_replace() {
        let f = forwarding();
        let out = request_headers(
            map(&[
                ("x-pleo-subject", "spoof"),
                ("x-pleo-identity", "spoof"),
                ("x-request-id", "from-layer"),
                ("x_request_id", "x"),
            ]),
            &rewrite(None, None, &f),
        );
        assert!(!out.contains_key("x-pleo-subject"));
        assert!(!out.contains_key("x-pleo-identity"));
        assert_eq!(out["x-request-id"], "from-layer");
        assert!(!out.contains_key("x_request_id"));
    }

    #[test]
    fn websocket_handshakes_keep_their_upgrade() {
        let f = forwarding();
        let mut r = rewrite(None, None, &f);
        r.websocket = true;
        let out = request_headers(
            map(&[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "k"),
            ]),
            &r,
        );
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out["sec-websocket-key"], "k");
    }

    #[test]
    fn the_apps_cookies_pass_but_never_one_named_like_ours() {
        let mut h = map(&[
            ("set-cookie", "app=1; Path=/; HttpOnly"),
            ("set-cookie", "pleo-session=planted; Path=/"),
            ("set-cookie", "__HOST-PLEO-SESSION=planted; Secure; Path=/"),
            ("set-cookie", " pleo-session =planted"),
            ("set-cookie", "=pleo-session=planted"),
            ("set-cookie", "nameless"),
            ("set-cookie", "pleo-session-app=1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/html"),
        ]);
        response_headers(&mut h, &names(), false);
        let cookies: Vec<&str> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["app=1; Path=/; HttpOnly", "pleo-session-app=1"]);
        assert!(!h.contains_key("transfer-encoding"));
        assert!(h.contains_key("content-type"));
    }

    proptest! {
        /// A worker thread keeps the identity values it made last: sessions that take turns on
        /// one thread each still reach the app as themselves.
        #[test]
        fn every_request_carries_its_own_sessions_identity(
            turns in prop::collection::vec(
                ("urn:pleo:company:[0-9]{1,3}", prop::collection::vec("[a-z]{1,5}:read", 0..3)),
                1..10,
            ),
        ) {
            let f = forwarding();
            for (subject, scopes) in turns {
                let mut session = session();
                let data = std::sync::Arc::make_mut(&mut session.data);
                data.subject = Some(subject.clone());
                data.scopes.clone_from(&scopes);
                let out = request_headers(HeaderMap::new(), &rewrite(Some(&session), None, &f));
                prop_assert_eq!(out["x-pleo-subject"].to_str().unwrap(), subject.as_str());
                prop_assert_eq!(out["x-pleo-scopes"].to_str().unwrap(), scopes.join(" "));
            }
        }

        #[test]
        fn the_session_cookie_never_reaches_the_app(
            others in prop::collection::vec("[a-z]{1,6}=[a-z0-9]{0,6}", 0..4),
            position in 0usize..5,
            name in prop::sample::select(vec!["__Host-pleo-session", "pleo-session"]),
        ) {
            let mut pairs = others.clone();
            pairs.insert(position.min(pairs.len()), format!("{name}=SESSIONVALUE"));
            let f = forwarding();
            let out = request_headers(
                map(&[("cookie", &pairs.join("; "))]),
                &rewrite(None, None, &f),
            );
            let cookie = out.get("cookie").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            prop_assert!(!cookie.contains("SESSIONVALUE"));
            for other in &others {
                prop_assert!(cookie.contains(other.as_str()));
            }
        }
    }
}
