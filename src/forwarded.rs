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

pub mod peer;

use std::{cell::RefCell, io::Write, net::IpAddr, str::FromStr};

use axum::http::{HeaderMap, HeaderName, HeaderValue, uri::Authority};
use ipnet::IpNet;
use url::Url;

use crate::header_memo::{Last, remembered};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Who the request came from, as far as the gateway can vouch for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarding {
    /// The client's address.
    pub client: IpAddr,
    /// Hops from the client to the gateway (see [`Forwarding::chain`]); empty when the peer is
    /// the client, so that the usual request needs no list of its own.
    chain: Vec<IpAddr>,
    /// `http` or `https`, as the browser used it.
    pub proto: &'static str,
    /// The host (and port) the browser addressed.
    pub host: HeaderValue,
    /// Whether the peer is a trusted proxy (whose other `X-Forwarded-*` headers may pass).
    pub peer_trusted: bool,
}

impl Forwarding {
    /// Hops from the client to the gateway: the client first, the gateway's peer last.
    pub fn chain(&self) -> &[IpAddr] {
        if self.chain.is_empty() {
            std::slice::from_ref(&self.client)
        } else {
            &self.chain
        }
    }
}

/// How browsers reach the gateway unless a trusted proxy says otherwise: `server.public_url`'s
/// scheme and authority, worked out once instead of for every request.
#[derive(Clone, Debug)]
pub struct PublicOrigin {
    proto: &'static str,
    host: HeaderValue,
}

impl PublicOrigin {
    pub fn new(public_url: &Url) -> Self {
        let proto = if public_url.scheme() == "https" {
            "https"
        } else {
            "http"
        };
        // A parsed URL's authority holds no byte a header value may not.
        let host = HeaderValue::from_str(&authority_of(public_url))
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self { proto, host }
    }
}

/// Works out the client, protocol and host of a request that arrived from `peer`.
pub fn resolve(
    peer: IpAddr,
    trusted: &[IpNet],
    inbound: &HeaderMap,
    public: &PublicOrigin,
) -> Forwarding {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    let default_proto = public.proto;
    if !is_trusted(&peer) {
        return Forwarding {
            client: peer,
            chain: Vec::new(),
            proto: default_proto,
            host: public.host.clone(),
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
        .and_then(|p| {
            if p.eq_ignore_ascii_case("https") {
                Some("https")
            } else if p.eq_ignore_ascii_case("http") {
                Some("http")
            } else {
                None
            }
        })
        .unwrap_or(default_proto);
    let host = values(inbound, &X_FORWARDED_HOST)
        .next_back()
        .or_else(|| {
            inbound
                .get(axum::http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .filter(|h| is_plain_authority(h))
        .and_then(|h| HeaderValue::from_str(h).ok())
        .unwrap_or_else(|| public.host.clone());
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
    let chain = match forwarding.chain() {
        [client] => address_value(*client),
        hops => header_value(|out| {
            for (index, hop) in hops.iter().enumerate() {
                if index > 0 {
                    out.write_all(b", ")?;
                }
                write_ip(out, hop)?;
            }
            Ok(())
        }),
    };
    if let Some(chain) = chain {
        headers.insert(X_FORWARDED_FOR, chain);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if forwarding.proto == "https" {
            "https"
        } else {
            "http"
        }),
    );
    headers.insert(X_FORWARDED_HOST, forwarding.host.clone());
    if let Some(client) = address_value(forwarding.client) {
        headers.insert(X_REAL_IP, client);
    }
}

thread_local! {
    static LAST_ADDRESS: Last<IpAddr> = const { RefCell::new(None) };
}

/// One address as a header value. Most requests to the app name the same address twice
/// (`X-Forwarded-For` and `X-Real-IP` of a client that is the peer), and a worker thread
/// mostly serves the same few peers (the ingress, the browser), so the last one is kept.
fn address_value(ip: IpAddr) -> Option<HeaderValue> {
    remembered(&LAST_ADDRESS, &ip, |ip| {
        header_value(|out| write_ip(out, ip))
    })
}

/// The header value `write` writes: into a buffer on the stack (this runs for every request to
/// the app, and the usual value is one address), or on the heap when it does not fit there.
fn header_value(write: impl Fn(&mut dyn Write) -> std::io::Result<()>) -> Option<HeaderValue> {
    let mut buffer = [0u8; 256];
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    if write(&mut cursor).is_ok() {
        let written = usize::try_from(cursor.position()).ok()?;
        return HeaderValue::from_bytes(buffer.get(..written)?).ok();
    }
    let mut heap = Vec::new();
    write(&mut heap).ok()?;
    HeaderValue::from_bytes(&heap).ok()
}

/// Writes an address as `Display` does. IPv4 without the formatting machinery, which cost
/// more than the rest of the forwarding headers together (it runs twice per request to the
/// app: `X-Forwarded-For` and `X-Real-IP`).
fn write_ip(out: &mut dyn Write, ip: &IpAddr) -> std::io::Result<()> {
    let IpAddr::V4(v4) = ip else {
        return write!(out, "{ip}");
    };
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            out.write_all(b".")?;
        }
        let digits = [
            b'0' + octet / 100,
            b'0' + octet / 10 % 10,
            b'0' + octet % 10,
        ];
        let first = match octet {
            100.. => 0,
            10.. => 1,
            _ => 2,
        };
        out.write_all(digits.get(first..).unwrap_or_default())?;
    }
    Ok(())
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
    const FORWARDED_PREFIX: &[u8] = b"x-forwarded-";
    // Every name it drops starts with one of these letters (a test holds them to it), and most
    // of a request's headers (accept, host, user-agent, sec-*) do not: they are done after one
    // byte instead of two dozen comparisons each.
    if !name
        .as_bytes()
        .first()
        .is_some_and(|b| REPLACED_INITIALS.contains(&b.to_ascii_lowercase()))
    {
        return false;
    }
    let spelt = |candidates: &[&str]| candidates.iter().any(|c| spells(name, c));
    spelt(OURS)
        || spelt(CLAIMS)
        || (name
            .as_bytes()
            .get(..FORWARDED_PREFIX.len())
            .is_some_and(|start| spells_bytes(start, FORWARDED_PREFIX))
            // What folding would change: a `_` or an upper-case letter.
            && (!peer_trusted || name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase())))
}

/// The forwarding headers the gateway writes itself.
const OURS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// The first letters of every name [`is_replaced`] drops.
const REPLACED_INITIALS: [u8; 4] = [b'c', b'f', b't', b'x'];

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
    // `Url::authority` is already `host[:port]` (no port when it is the scheme's default),
    // copied without formatting, unless the URL carries user info.
    if url.has_host() && url.username().is_empty() && url.password().is_none() {
        return url.authority().to_owned();
    }
    let host = url.host_str().unwrap_or("localhost");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

#[cfg(test)]
mod tests;
