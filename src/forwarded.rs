//! `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` towards the app, believed from the
//! client only when it is one of `server.trusted_proxies`.
//!
//! The app uses these headers for audit logs, rate limits and absolute URLs, so a value an
//! attacker can choose is worse than none. Rules:
//!
//! - From an untrusted peer, every inbound forwarding header (`Forwarded`, `X-Forwarded-*`,
//!   `X-Real-IP`, in any spelling a server might fold into the same name) is dropped: the client
//!   is the peer, the protocol and host are those of `server.public_url` (the configured
//!   browser-facing origin; the inbound `Host` is the client's to choose).
//! - From a trusted peer, `X-Forwarded-For` is walked from the right, skipping trusted hops; the
//!   first untrusted address is the client. `X-Forwarded-Proto`/`-Host` are taken from their
//!   right-most value (the one the nearest trusted proxy wrote) when well-formed. RFC 7239
//!   `Forwarded` is not parsed, and never passed on.
//! - Outgoing, `X-Forwarded-For` starts at the client found above (addresses left of it were
//!   supplied by the client and are dropped), so an app that naively reads the first entry still
//!   gets the right address; `X-Real-IP` carries the client alone.

use std::{io::Write, net::IpAddr, str::FromStr};

use axum::http::{HeaderMap, HeaderName, HeaderValue, uri::Authority};
use ipnet::IpNet;
use url::Url;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Who the request came from, as far as the gateway can vouch for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarding {
    /// The client's address.
    pub client: IpAddr,
    /// Hops from the client to the gateway: the client first, the gateway's peer last.
    pub chain: Vec<IpAddr>,
    /// `http` or `https`, as the browser used it.
    pub proto: String,
    /// The host (and port) the browser addressed.
    pub host: String,
    /// Whether the peer is a trusted proxy (whose other `X-Forwarded-*` headers may pass).
    pub peer_trusted: bool,
}

/// Works out the client, protocol and host of a request that arrived from `peer`.
pub fn resolve(
    peer: IpAddr,
    trusted: &[IpNet],
    inbound: &HeaderMap,
    public_url: &Url,
) -> Forwarding {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    let default_proto = public_url.scheme().to_owned();
    let default_host = authority_of(public_url);
    if !is_trusted(&peer) {
        return Forwarding {
            client: peer,
            chain: vec![peer],
            proto: default_proto,
            host: default_host,
            peer_trusted: false,
        };
    }

    // Right to left: each entry is who connected to the hop after it. Stop at the first
    // address we do not trust (the client) or at garbage (then the last trusted hop is all we
    // know).
    let mut chain = vec![peer];
    for entry in values(inbound, &X_FORWARDED_FOR).rev() {
        if chain.last().is_some_and(|hop| !is_trusted(hop)) {
            break;
        }
        match parse_ip(entry) {
            Some(ip) => chain.push(ip),
            None => break,
        }
    }
    chain.reverse();
    let proto = values(inbound, &X_FORWARDED_PROTO)
        .next_back()
        .map(str::to_ascii_lowercase)
        .filter(|p| p == "http" || p == "https")
        .unwrap_or(default_proto);
    let host = values(inbound, &X_FORWARDED_HOST)
        .next_back()
        .or_else(|| {
            inbound
                .get(axum::http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .filter(|h| is_plain_authority(h))
        .map(str::to_owned)
        .unwrap_or(default_host);
    Forwarding {
        client: chain.first().copied().unwrap_or(peer),
        chain,
        proto,
        host,
        peer_trusted: true,
    }
}

/// Replaces the forwarding headers of an outgoing request with `forwarding`.
pub fn apply(headers: &mut HeaderMap, forwarding: &Forwarding) {
    let spoofable: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_replaced(name.as_str(), forwarding.peer_trusted))
        .cloned()
        .collect();
    for name in spoofable {
        headers.remove(name);
    }
    // Written into a buffer on the stack: this runs for every request to the app, and the
    // usual chain is one address.
    let mut buffer = [0u8; 256];
    let chain = write_on_stack(&mut buffer, |out| {
        for (index, hop) in forwarding.chain.iter().enumerate() {
            if index > 0 {
                out.write_all(b", ")?;
            }
            write!(out, "{hop}")?;
        }
        Ok(())
    });
    let chain = match chain {
        Some(text) => HeaderValue::from_bytes(text),
        None => HeaderValue::try_from(
            forwarding
                .chain
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ),
    };
    if let Ok(chain) = chain {
        headers.insert(X_FORWARDED_FOR, chain);
    }
    let proto = match forwarding.proto.as_str() {
        "https" => Ok(HeaderValue::from_static("https")),
        "http" => Ok(HeaderValue::from_static("http")),
        other => HeaderValue::from_str(other),
    };
    if let Ok(proto) = proto {
        headers.insert(X_FORWARDED_PROTO, proto);
    }
    if let Ok(host) = HeaderValue::from_str(&forwarding.host) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let mut buffer = [0u8; 64];
    let client = write_on_stack(&mut buffer, |out| write!(out, "{}", forwarding.client));
    if let Some(Ok(client)) = client.map(HeaderValue::from_bytes) {
        headers.insert(X_REAL_IP, client);
    }
}

/// What `write` wrote into `buffer`, or `None` if it did not fit.
fn write_on_stack(
    buffer: &mut [u8],
    write: impl FnOnce(&mut std::io::Cursor<&mut [u8]>) -> std::io::Result<()>,
) -> Option<&[u8]> {
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    write(&mut cursor).ok()?;
    let written = usize::try_from(cursor.position()).ok()?;
    buffer.get(..written)
}

/// Headers that claim the client's address or rewrite the request's URL or method, which
/// frameworks and CDN integrations believe: a client could choose what the app logs, rate-limits
/// or routes by. The gateway's `X-Forwarded-For`/`X-Real-IP` say who the client is; these never
/// reach the app, whoever sent them.
const CLAIMS: &[&str] = &[
    "client-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-host",
    "x-host",
    "x-original-uri",
    "x-envoy-external-address",
    "x-envoy-original-path",
    "fly-client-ip",
    "cf-connecting-ipv6",
];

/// Whether an inbound header is dropped before the gateway's own forwarding headers are set.
/// A trusted proxy's other `X-Forwarded-*` (port, prefix) pass; a client's do not, and neither
/// do `_` spellings (`x_forwarded_for`), which no proxy writes but WSGI-style servers fold into
/// the real name. The [`CLAIMS`] are dropped in every spelling.
/// Compares byte by byte, without allocating: it runs for every header of every request to the
/// app.
fn is_replaced(name: &str, peer_trusted: bool) -> bool {
    const OURS: &[&str] = &[
        "forwarded",
        "x-real-ip",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    const FORWARDED_PREFIX: &[u8] = b"x-forwarded-";
    // What folding (below) would change: a `_` or an upper-case letter.
    let respelled = name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase());
    let spelt = |candidates: &[&str]| candidates.iter().any(|c| spells(name, c));
    spelt(OURS)
        || spelt(CLAIMS)
        || (name
            .as_bytes()
            .get(..FORWARDED_PREFIX.len())
            .is_some_and(|start| spells_bytes(start, FORWARDED_PREFIX))
            && (respelled || !peer_trusted))
}

/// Whether header name `name` is `canonical` (lowercase, with `-`) in a spelling a server could
/// fold into it: any ASCII case, `_` for `-`. Byte by byte, without allocating: it runs for
/// every header of every proxied request.
pub fn spells(name: &str, canonical: &str) -> bool {
    spells_bytes(name.as_bytes(), canonical.as_bytes())
}

/// [`spells`] over bytes (a prefix of a name, say).
pub(crate) fn spells_bytes(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name.iter().zip(canonical).all(|(&byte, &expected)| {
            let byte = if byte == b'_' {
                b'-'
            } else {
                byte.to_ascii_lowercase()
            };
            byte == expected
        })
}

/// Every comma-separated value of every `name` header, in order.
fn values<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl DoubleEndedIterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1` or `[::1]:80`.
fn parse_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// `host[:port]` with no user info, path or anything a header could smuggle.
fn is_plain_authority(text: &str) -> bool {
    !text.contains('@') && Authority::from_str(text).is_ok_and(|a| a.as_str() == text)
}

fn authority_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("localhost");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map as headers;
    use proptest::prelude::*;

    fn url() -> Url {
        Url::parse("https://app.example.com").unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let inbound = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("host", "evil.example"),
        ]);
        let f = resolve(ip("198.51.100.1"), &nets(&["10.0.0.0/8"]), &inbound, &url());
        assert_eq!(f.client, ip("198.51.100.1"));
        assert_eq!(f.chain, vec![ip("198.51.100.1")]);
        assert_eq!(f.proto, "https");
        assert_eq!(f.host, "app.example.com");
        assert!(!f.peer_trusted);
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let inbound = headers(&[
            ("x-forwarded-for", "1.1.1.1, 203.0.113.7"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-proto", "HTTPS"),
            ("x-forwarded-host", "app.example.com:8443"),
        ]);
        let f = resolve(ip("10.0.0.9"), &nets(&["10.0.0.0/8"]), &inbound, &url());
        assert_eq!(f.client, ip("203.0.113.7"));
        assert_eq!(
            f.chain,
            vec![ip("203.0.113.7"), ip("10.0.0.5"), ip("10.0.0.9")]
        );
        assert_eq!(f.proto, "https");
        assert_eq!(f.host, "app.example.com:8443");
    }

    #[test]
    fn garbage_or_an_all_trusted_chain_stops_at_the_last_known_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let f = resolve(
            ip("10.0.0.9"),
            &trusted,
            &headers(&[("x-forwarded-for", "unknown, 10.0.0.5")]),
            &url(),
        );
        assert_eq!(f.client, ip("10.0.0.5"));
        let f = resolve(
            ip("10.0.0.9"),
            &trusted,
            &headers(&[("x-forwarded-for", "[::ffff:10.0.0.1]:443")]),
            &url(),
        );
        assert_eq!(f.client, ip("10.0.0.1"));
        let f = resolve(ip("::ffff:10.0.0.9"), &trusted, &HeaderMap::new(), &url());
        assert_eq!(
            f.client,
            ip("10.0.0.9"),
            "v4-mapped peers are matched as v4"
        );
    }

    #[test]
    fn trusted_but_malformed_proto_and_host_fall_back() {
        let inbound = headers(&[
            ("x-forwarded-proto", "javascript"),
            ("x-forwarded-host", "user@evil.example"),
        ]);
        let f = resolve(ip("10.0.0.9"), &nets(&["10.0.0.0/8"]), &inbound, &url());
        assert_eq!(f.proto, "https");
        assert_eq!(f.host, "app.example.com");
        let f = resolve(
            ip("10.0.0.9"),
            &nets(&["10.0.0.0/8"]),
            &headers(&[("host", "internal.example:8080")]),
            &url(),
        );
        assert_eq!(f.host, "internal.example:8080", "a trusted proxy's Host");
    }

    #[test]
    fn a_chain_longer_than_the_stack_buffer_is_written_whole() {
        let hops: Vec<IpAddr> = (0..12)
            .map(|i| ip(&format!("2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}")))
            .collect();
        let f = Forwarding {
            client: hops[0],
            chain: hops.clone(),
            proto: "https".into(),
            host: "app.example.com".into(),
            peer_trusted: true,
        };
        let mut out = HeaderMap::new();
        apply(&mut out, &f);
        let expected = hops
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            expected.len() > 256,
            "the fallback is what this test is for"
        );
        assert_eq!(out["x-forwarded-for"], expected.as_str());
        assert_eq!(out["x-real-ip"], "2001:db8:ffff:ffff:ffff:ffff:ffff:0");
        assert_eq!(out["x-forwarded-proto"], "https");
    }

    #[test]
    fn apply_replaces_every_spelling() {
        let mut out = headers(&[
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_for", "1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("x_real_ip", "1.2.3.4"),
            ("x-forwarded-port", "1"),
            ("x_forwarded_prefix", "/evil"),
            ("accept", "*/*"),
        ]);
        let f = resolve(ip("198.51.100.1"), &[], &out.clone(), &url());
        apply(&mut out, &f);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(out.len(), 5, "{names:?}");
        assert_eq!(out["x-forwarded-for"], "198.51.100.1");
        assert_eq!(out["x-real-ip"], "198.51.100.1");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "app.example.com");
        assert!(out.contains_key("accept"));
    }

    #[test]
    fn client_address_and_url_claims_never_pass() {
        for trusted in [false, true] {
            let mut headers = HeaderMap::new();
            for name in CLAIMS {
                headers.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static("10.0.0.1"),
                );
            }
            headers.insert("true_client_ip", HeaderValue::from_static("10.0.0.1"));
            headers.insert("x-app", HeaderValue::from_static("kept"));
            let peer = if trusted { "10.1.1.1" } else { "198.51.100.7" };
            let forwarding = resolve(ip(peer), &nets(&["10.1.1.1/32"]), &headers, &url());
            apply(&mut headers, &forwarding);
            let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            left.sort_unstable();
            assert_eq!(
                left,
                [
                    "x-app",
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "x-forwarded-proto",
                    "x-real-ip"
                ],
                "trusted peer: {trusted}"
            );
        }
    }

    #[test]
    fn a_trusted_proxys_other_forwarding_headers_pass() {
        let mut out = headers(&[("x-forwarded-prefix", "/app"), ("x_forwarded_port", "1")]);
        let f = resolve(ip("10.0.0.9"), &nets(&["10.0.0.0/8"]), &out.clone(), &url());
        apply(&mut out, &f);
        assert_eq!(out["x-forwarded-prefix"], "/app");
        assert!(!out.contains_key("x_forwarded_port"));
        assert_eq!(out["x-forwarded-for"], "10.0.0.9");
    }

    /// The rule as first written: fold the name (lower case, `_` to `-`), then compare.
    fn is_replaced_by_folding(name: &str, peer_trusted: bool) -> bool {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        let respelled = folded != name;
        let ours = matches!(
            folded.as_str(),
            "forwarded"
                | "x-real-ip"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
        );
        ours || CLAIMS.contains(&folded.as_str())
            || (folded.starts_with("x-forwarded-") && (respelled || !peer_trusted))
    }

    proptest! {
        #[test]
        fn replacing_without_allocating_agrees_with_folding(
            name in "(?i)(x[-_]forwarded[-_](for|proto|host|port|prefix)|x[-_]real[-_]ip|forwarded|client[-_]ip|x[-_]original[-_]url|[a-z_-]{0,14})",
            peer_trusted in any::<bool>(),
        ) {
            prop_assert_eq!(
                is_replaced(&name, peer_trusted),
                is_replaced_by_folding(&name, peer_trusted)
            );
        }

        #[test]
        fn an_untrusted_peer_never_chooses_the_client(
            claimed in prop::collection::vec("[0-9a-f.:, ]{0,20}", 0..4),
            peer in any::<[u8; 4]>(),
        ) {
            let peer = IpAddr::from(peer);
            let mut inbound = HeaderMap::new();
            for value in &claimed {
                if let Ok(v) = HeaderValue::from_str(value) {
                    inbound.append(X_FORWARDED_FOR, v);
                }
            }
            let trusted = nets(&["10.0.0.0/8"]);
            let f = resolve(peer, &trusted, &inbound, &url());
            if !trusted[0].contains(&peer) {
                prop_assert_eq!(f.client, peer);
                let mut out = inbound.clone();
                apply(&mut out, &f);
                prop_assert_eq!(out["x-forwarded-for"].to_str().unwrap(), peer.to_string());
            }
            // Whoever is named, it is never an address the chain did not end in or walk to.
            prop_assert_eq!(f.chain.last().copied(), Some(peer));
        }
    }
}
