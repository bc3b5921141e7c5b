use super::*;
use crate::test_support::header_map as headers;
use proptest::prelude::*;

fn url() -> PublicOrigin {
    PublicOrigin::new(&Url::parse("https://app.example.com").unwrap())
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
    assert_eq!(f.chain(), [ip("198.51.100.1")]);
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
        f.chain(),
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
        proto: "https",
        host: HeaderValue::from_static("app.example.com"),
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
        "forwarded" | "x-real-ip" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
    );
    ours || CLAIMS.contains(&folded.as_str())
        || (folded.starts_with("x-forwarded-") && (respelled || !peer_trusted))
}

#[test]
fn the_public_authority_is_host_and_port_as_written() {
    for (url, authority) in [
        ("https://app.example.com", "app.example.com"),
        ("https://app.example.com:443/x", "app.example.com"),
        ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
        ("http://[::1]:8080", "[::1]:8080"),
        (
            "https://user:secret@app.example.com:8443",
            "app.example.com:8443",
        ),
    ] {
        assert_eq!(authority_of(&Url::parse(url).unwrap()), authority, "{url}");
    }
}

proptest! {
    #[test]
    fn addresses_are_written_as_display_writes_them(v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>()) {
        for ip in [IpAddr::from(v4), IpAddr::from(v6)] {
            let mut out = Vec::new();
            write_ip(&mut out, &ip).unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    /// The last address is kept per thread: a request from another peer, or the same peer
    /// again after others, still gets its own address in both headers.
    #[test]
    fn every_request_names_its_own_client(
        peers in proptest::collection::vec(prop_oneof![
            Just(IpAddr::from([192, 0, 2, 1])),
            Just(IpAddr::from([192, 0, 2, 2])),
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ], 1..12),
    ) {
        for peer in peers {
            let mut out = HeaderMap::new();
            apply(&mut out, &resolve(peer, &[], &HeaderMap::new(), &url()));
            let expected = peer.to_canonical().to_string();
            prop_assert_eq!(out["x-forwarded-for"].to_str().unwrap(), expected.as_str());
            prop_assert_eq!(out["x-real-ip"].to_str().unwrap(), expected.as_str());
        }
    }

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

    /// Every name the gateway drops, in any spelling: fails if a name is added whose first
    /// letter `is_replaced`'s one-byte shortcut does not know.
    #[test]
    fn every_dropped_name_is_dropped_in_any_spelling(
        index in 0..CLAIMS.len() + OURS.len(),
        mask in any::<u64>(),
        peer_trusted in any::<bool>(),
    ) {
        let canonical = CLAIMS.iter().chain(OURS).nth(index).unwrap();
        let respelt: String = canonical
            .bytes()
            .enumerate()
            .map(|(i, b)| match b {
                b'-' if mask >> (i % 64) & 1 == 1 => '_',
                b if mask >> (i % 64) & 1 == 1 => b.to_ascii_uppercase() as char,
                b => b as char,
            })
            .collect();
        prop_assert!(is_replaced(&respelt, peer_trusted), "{respelt}");
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
        prop_assert_eq!(f.chain().last().copied(), Some(peer));
    }
}
