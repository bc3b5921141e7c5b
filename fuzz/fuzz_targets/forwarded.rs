//! Forwarding headers: `forwarded::resolve` and `apply` on arbitrary request headers.
//!
//! Input: text lines `name: value`, each added as a request header when `http` accepts it
//! (`x-forwarded-for`, `x-forwarded-proto`, `x-forwarded-host`, `host`, `x_forwarded_for`, …).
//! A line `peer: N` picks the TCP peer from a fixed list (default: an untrusted IPv4 address);
//! trusted proxies are fixed: `10.0.0.0/8`, `fd00::/8`, `127.0.0.1/32`. `public_url` is
//! `https://app.example.com`.
//!
//! Invariants:
//! - An untrusted peer chooses nothing: the client is the peer, the chain is the peer alone,
//!   proto and host are `public_url`'s, and no inbound `X-Forwarded-*`/`Forwarded`/`X-Real-IP`
//!   (in any spelling) survives `apply`.
//! - Always: the chain ends in the (canonical) peer and starts with the client; every hop after
//!   the client is trusted; the hops before the peer are the right-most entries of
//!   `X-Forwarded-For`, in order; the walk stops only at an untrusted address, at garbage, or
//!   when the entries run out.
//! - `proto` is `http` or `https`; `host` is a plain `host[:port]` authority (no user info).
//! - After `apply`, the outgoing `X-Forwarded-For` is exactly the chain, `X-Real-IP` the client,
//!   `X-Forwarded-Proto`/`-Host` the resolved values, each once; no header that claims the
//!   client's address or rewrites URL or method (`True-Client-IP`, `X-Original-URL`,
//!   `X-HTTP-Method-Override`, …) survives in any spelling, whoever the peer.
//! - `is_plain_request_id` accepts only 1–128 bytes of `[A-Za-z0-9._:-]` without `..` (checked
//!   on every inbound `X-Request-Id`).
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue, uri::Authority};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use pleo_gateway::{
    forwarded::{PublicOrigin, apply, resolve},
    request_id::is_plain_request_id,
};
use url::Url;

const PEERS: &[&str] = &[
    "198.51.100.7",     // untrusted v4 (default)
    "10.0.0.9",         // trusted v4
    "::ffff:10.0.0.9",  // trusted, v4-mapped
    "2001:db8::1",      // untrusted v6
    "fd00::5",          // trusted v6
    "127.0.0.1",        // trusted loopback
    "::ffff:192.0.2.1", // untrusted, v4-mapped
];
/// Headers `apply` drops in every spelling (`forwarded::CLAIMS`).
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
];
const TRUSTED: &[&str] = &["10.0.0.0/8", "fd00::/8", "127.0.0.1/32"];

fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

fn is_plain_authority(text: &str) -> bool {
    !text.contains('@') && Authority::from_str(text).is_ok_and(|a| a.as_str() == text)
}

fn only(headers: &HeaderMap, name: &str) -> String {
    let all: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
    assert_eq!(all.len(), 1, "{name} sent {} times", all.len());
    all[0].to_str().expect("ascii").to_owned()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut peer: IpAddr = PEERS[0].parse().expect("static");
    let mut inbound = HeaderMap::new();
    for line in text.split('\n') {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        if name == "peer" {
            if let Ok(n) = value.trim().parse::<usize>() {
                peer = PEERS[n % PEERS.len()].parse().expect("static");
            }
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            inbound.append(name, value);
        }
    }
    let trusted: Vec<IpNet> = TRUSTED.iter().map(|n| n.parse().expect("static")).collect();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let public = PublicOrigin::new(&Url::parse("https://app.example.com").expect("static"));

    let f = resolve(peer, &trusted, &inbound, &public);
    let host = f.host.to_str().expect("an authority is ASCII");
    let canonical_peer = peer.to_canonical();

    assert_eq!(f.chain().last(), Some(&canonical_peer), "{f:?}");
    assert_eq!(f.chain().first(), Some(&f.client), "{f:?}");
    assert!(f.proto == "http" || f.proto == "https", "{f:?}");
    assert!(
        is_plain_authority(host),
        "host {host:?} is not plain"
    );
    assert_eq!(f.peer_trusted, is_trusted(&canonical_peer));

    if !is_trusted(&canonical_peer) {
        assert_eq!(
            f.client, canonical_peer,
            "an untrusted peer chose the client: {f:?}"
        );
        assert_eq!(f.chain(), [canonical_peer]);
        assert_eq!(f.proto, "https");
        assert_eq!(host, "app.example.com");
    } else {
        for hop in &f.chain()[1..] {
            assert!(
                is_trusted(hop),
                "untrusted hop {hop} after the client: {f:?}"
            );
        }
        let entries = values(&inbound, "x-forwarded-for");
        let walked = f.chain().len() - 1;
        assert!(walked <= entries.len(), "{f:?} from {entries:?}");
        let tail = &entries[entries.len() - walked..];
        for (hop, entry) in f.chain()[..walked].iter().zip(tail) {
            assert_eq!(Some(*hop), parse_entry(entry), "{f:?} from {entries:?}");
        }
        // Why the walk stopped: an untrusted client, garbage next, or no more entries.
        if is_trusted(&f.client) && walked < entries.len() {
            let next = entries[entries.len() - walked - 1];
            assert_eq!(
                parse_entry(next),
                None,
                "walk stopped at trusted {} before parseable {next:?}",
                f.client
            );
        }
        if let Some(proto) = values(&inbound, "x-forwarded-proto").last() {
            let lower = proto.to_ascii_lowercase();
            if lower == "http" || lower == "https" {
                assert_eq!(f.proto, lower);
            }
        }
    }

    for id in inbound.get_all("x-request-id") {
        let id = id.as_bytes();
        if is_plain_request_id(id) {
            assert!(
                (1..=128).contains(&id.len()),
                "request id of {} bytes",
                id.len()
            );
            assert!(
                id.iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
                    && !id.windows(2).any(|w| w == b".."),
                "request id {:?} accepted",
                String::from_utf8_lossy(id)
            );
        }
    }

    let mut out = inbound.clone();
    apply(&mut out, &f);
    let chain: Vec<String> = f.chain().iter().map(IpAddr::to_string).collect();
    assert_eq!(only(&out, "x-forwarded-for"), chain.join(", "));
    assert_eq!(only(&out, "x-real-ip"), f.client.to_string());
    assert_eq!(only(&out, "x-forwarded-proto"), f.proto);
    assert_eq!(only(&out, "x-forwarded-host"), host);
    for name in out.keys() {
        let folded = name.as_str().to_ascii_lowercase().replace('_', "-");
        let ours = matches!(
            name.as_str(),
            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-real-ip"
        );
        if ours {
            continue;
        }
        assert!(
            folded != "forwarded" && folded != "x-real-ip",
            "{name} survives apply"
        );
        assert!(!CLAIMS.contains(&folded.as_str()), "{name} survives apply");
        if folded.starts_with("x-forwarded-") {
            assert!(
                f.peer_trusted && !name.as_str().contains('_'),
                "{name} survives apply (peer trusted: {})",
                f.peer_trusted
            );
        }
    }
});
