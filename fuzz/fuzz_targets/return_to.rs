//! The login `return_to` parameter: `auth::return_to::sanitize_return_to` on arbitrary text.
//!
//! Invariants (no open redirect, whatever the attacker puts in the login link):
//! - The result is either the input unchanged or `/`, and at most 2048 bytes.
//! - It starts with exactly one `/` (never `//` or `/\`), and holds no control character,
//!   whitespace, backslash or `#`; once percent-decoded it still does not start with `//` or
//!   `/\` and holds no control character or backslash.
//! - It is a valid `Location` header value.
//! - Resolved the way a browser resolves a `Location` header (the `url` crate, WHATWG) against
//!   `https://gw.example/`, it stays on that origin, without user info, and the path the browser
//!   then requests does not start with `//` (one trailing-slash redirect away from leaving).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pleo_gateway::auth::return_to::sanitize_return_to;
use url::Url;

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
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

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let kept = sanitize_return_to(Some(input));
    assert!(
        kept == input || kept == "/",
        "{input:?} rewritten to {kept:?}"
    );
    assert!(kept.len() <= 2048, "{input:?} kept at {} bytes", kept.len());
    assert!(
        kept.starts_with('/') && !kept.starts_with("//") && !kept.starts_with("/\\"),
        "{input:?} kept as {kept:?}"
    );
    assert!(
        !kept
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\' || c == '#'),
        "{input:?} kept as {kept:?}, with a forbidden character"
    );
    let decoded = percent_decode(&kept);
    assert!(
        !decoded.starts_with("//")
            && !decoded.starts_with("/\\")
            && !decoded.chars().any(|c| c.is_control() || c == '\\'),
        "{input:?} kept as {kept:?}, which decodes to {decoded:?}"
    );
    assert!(
        http::HeaderValue::from_str(&kept).is_ok(),
        "{input:?} kept as {kept:?}, no valid Location header"
    );

    let base = Url::parse("https://gw.example/").expect("static URL");
    let landed = base
        .join(&kept)
        .unwrap_or_else(|err| panic!("{input:?} kept as {kept:?} does not resolve: {err}"));
    assert_eq!(
        landed.origin(),
        base.origin(),
        "{input:?} kept as {kept:?} -> {landed}"
    );
    assert_eq!(
        landed.host_str(),
        Some("gw.example"),
        "{input:?} -> {landed}"
    );
    assert!(
        landed.username().is_empty() && landed.password().is_none(),
        "{input:?} -> {landed} carries user info"
    );
    assert!(
        !landed.path().starts_with("//"),
        "{input:?} kept as {kept:?} lands on path {:?}",
        landed.path()
    );
});
