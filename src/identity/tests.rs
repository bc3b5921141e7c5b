//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! [`Identity`] as the app and the internal listener see it: what an assertion says, and every
//! way one is refused.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::SecretString;

use super::*;
use crate::{
    config::Config,
    session::{SessionData, SessionHasher},
};

const NOW_MS: u64 = 1_700_000_000_000;

fn config(extra: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = [
        ("PLEO_GATEWAY__PLEO__CLIENT_ID", "c"),
        ("PLEO_GATEWAY__PLEO__SCOPES", "users:read"),
        ("PLEO_GATEWAY__SESSION__STORE", "memory"),
        ("PLEO_GATEWAY__SERVER__PUBLIC_URL", "https://gw.example.com"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert(format!("PLEO_GATEWAY__{k}"), (*v).to_owned());
    }
    Config::load_with_env(None, &env).unwrap()
}

fn session_keys() -> Vec<EncryptionKey> {
    vec![EncryptionKey::from_bytes([7; 32])]
}

fn session(subject: Option<&str>) -> Session {
    Session {
        key: SessionHasher::new(&session_keys()).current("id"),
        version: 1,
        absolute_deadline_ms: NOW_MS + 1_000_000,
        data: std::sync::Arc::new(SessionData {
            access_token: SecretString::from("at"),
            refresh_token: Some(SecretString::from("rt")),
            access_expires_at_ms: NOW_MS + 900_000,
            access_lifetime_ms: 900_000,
            subject: subject.map(str::to_owned),
            scopes: vec!["users:read".into(), "export-jobs:read".into()],
            created_at_ms: NOW_MS,
        }),
    }
}

fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn an_assertion_names_the_subject_scopes_and_a_session_reference() {
    let identity = Identity::new(
        &config(&[("IDENTITY__AUDIENCE", "my-app")]),
        &session_keys(),
    )
    .unwrap();
    let session = session(Some("urn:pleo:company:abc"));
    let token = identity.assertion(&session, NOW_MS).unwrap();
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], "https://gw.example.com");
    assert_eq!(claims["aud"], "my-app");
    assert_eq!(claims["sub"], "urn:pleo:company:abc");
    assert_eq!(claims["scope"], "users:read export-jobs:read");
    assert_eq!(claims["iat"], NOW_MS / 1000);
    assert_eq!(claims["exp"], NOW_MS / 1000 + 60);
    let sid = claims["sid"].as_str().unwrap();
    assert!(!sid.contains(session.key.as_str()));
    let verified = identity.verify(&token, NOW_MS).unwrap();
    assert_eq!(verified.session, session.key);
    assert_eq!(verified.claims.sub, "urn:pleo:company:abc");
}

#[test]
fn no_assertion_while_the_subject_is_unknown() {
    let identity = Identity::new(&config(&[]), &session_keys()).unwrap();
    assert!(identity.assertion(&session(None), NOW_MS).is_none());
}

#[test]
fn the_audience_defaults_to_the_public_url() {
    let identity = Identity::new(&config(&[]), &session_keys()).unwrap();
    let token = identity
        .assertion(&session(Some("urn:pleo:company:abc")), NOW_MS)
        .unwrap();
    assert_eq!(claims_of(&token)["aud"], "https://gw.example.com");
}

#[test]
fn expired_assertions_are_refused_after_the_leeway() {
    let identity = Identity::new(
        &config(&[("IDENTITY__ASSERTION_TTL", "30s")]),
        &session_keys(),
    )
    .unwrap();
    let token = identity
        .assertion(&session(Some("urn:pleo:company:abc")), NOW_MS)
        .unwrap();
    let at = |secs: u64| NOW_MS + secs * 1000;
    assert!(identity.verify(&token, at(30)).is_ok(), "within the leeway");
    assert_eq!(
        identity.verify(&token, at(35)).unwrap_err(),
        AssertionError::Expired
    );
    // Issued "in the future" (a clock far ahead): refused too.
    assert_eq!(
        identity.verify(&token, NOW_MS - 10_000).unwrap_err(),
        AssertionError::Expired
    );
}

#[test]
fn another_audience_issuer_or_key_is_refused() {
    let ours = Identity::new(&config(&[("IDENTITY__AUDIENCE", "app-a")]), &session_keys()).unwrap();
    let seed = URL_SAFE_NO_PAD.encode([3u8; 32]);
    let signer = |extra: &[(&str, &str)]| {
        let mut env = vec![("IDENTITY__SIGNING_KEYS", seed.as_str())];
        env.extend_from_slice(extra);
        Identity::new(&config(&env), &session_keys()).unwrap()
    };
    let verifier = signer(&[("IDENTITY__AUDIENCE", "app-a")]);
    let s = session(Some("urn:pleo:company:abc"));
    let for_b = signer(&[("IDENTITY__AUDIENCE", "app-b")])
        .assertion(&s, NOW_MS)
        .unwrap();
    assert_eq!(
        verifier.verify(&for_b, NOW_MS).unwrap_err(),
        AssertionError::WrongAudience
    );
    let other_gateway = signer(&[
        ("IDENTITY__AUDIENCE", "app-a"),
        ("SERVER__PUBLIC_URL", "https://other.example.com"),
    ])
    .assertion(&s, NOW_MS)
    .unwrap();
    assert_eq!(
        verifier.verify(&other_gateway, NOW_MS).unwrap_err(),
        AssertionError::WrongIssuer
    );
    // Same claims, generated key: not ours.
    let generated = ours.assertion(&s, NOW_MS).unwrap();
    assert_eq!(
        verifier.verify(&generated, NOW_MS).unwrap_err(),
        AssertionError::Invalid
    );
    assert!(
        verifier
            .verify(&verifier.assertion(&s, NOW_MS).unwrap(), NOW_MS)
            .is_ok()
    );
}

#[test]
fn a_session_reference_from_other_session_keys_is_refused() {
    let seed = URL_SAFE_NO_PAD.encode([3u8; 32]);
    let config = config(&[("IDENTITY__SIGNING_KEYS", &seed)]);
    let signer = Identity::new(&config, &[EncryptionKey::from_bytes([1; 32])]).unwrap();
    let verifier = Identity::new(&config, &[EncryptionKey::from_bytes([2; 32])]).unwrap();
    let token = signer
        .assertion(&session(Some("urn:pleo:company:abc")), NOW_MS)
        .unwrap();
    assert_eq!(
        verifier.verify(&token, NOW_MS).unwrap_err(),
        AssertionError::Invalid
    );
}

#[test]
fn the_jwks_lists_every_key_as_an_okp_ed25519_jwk() {
    let (a, b) = (
        URL_SAFE_NO_PAD.encode([1u8; 32]),
        URL_SAFE_NO_PAD.encode([2u8; 32]),
    );
    let both = format!("{a},{b}");
    let identity = Identity::new(
        &config(&[("IDENTITY__SIGNING_KEYS", &both)]),
        &session_keys(),
    )
    .unwrap();
    let jwks = identity.jwks();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for key in keys {
        let fields: std::collections::BTreeSet<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            ["alg", "crv", "kid", "kty", "use", "x"]
                .into_iter()
                .collect()
        );
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(key["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert!(key.get("d").is_none(), "no private part");
    }
    let token = identity
        .assertion(&session(Some("urn:pleo:company:abc")), NOW_MS)
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], keys[0]["kid"], "the first key signs");
}

/// A burst of requests for one session costs one signature: the header is reused while it is
/// younger than a quarter of its lifetime, and never for another session, subject or scopes.
#[test]
fn an_assertion_is_reused_briefly_for_the_same_session_only() {
    let identity = Identity::new(&config(&[]), &session_keys()).unwrap();
    let s = session(Some("urn:pleo:company:abc"));
    let first = identity.header_value(&s, NOW_MS).unwrap();
    assert_eq!(identity.header_value(&s, NOW_MS + 14_999).unwrap(), first);
    let later = identity.header_value(&s, NOW_MS + 15_000).unwrap();
    assert_ne!(
        later, first,
        "15 s is a quarter of the default 60 s: signed again"
    );
    let claims = claims_of(later.to_str().unwrap());
    assert_eq!(claims["iat"], (NOW_MS + 15_000) / 1000);

    let mut rescoped = s.clone();
    std::sync::Arc::make_mut(&mut rescoped.data).scopes = vec!["users:read".into()];
    let other_scopes = identity.header_value(&rescoped, NOW_MS + 15_001).unwrap();
    assert_ne!(other_scopes, later);
    assert_eq!(
        claims_of(other_scopes.to_str().unwrap())["scope"],
        "users:read"
    );

    let mut other = session(Some("urn:pleo:company:abc"));
    other.key = SessionHasher::new(&session_keys()).current("another id");
    assert_ne!(
        identity.header_value(&other, NOW_MS + 15_001).unwrap(),
        other_scopes
    );

    // Every assertion handed out has at least three quarters of its life left.
    let token = identity.header_value(&s, NOW_MS + 29_999).unwrap();
    let claims = claims_of(token.to_str().unwrap());
    let left = claims["exp"].as_u64().unwrap() * 1000 - (NOW_MS + 29_999);
    assert!(left >= 45_000 - 1000, "{left} ms left");
}

/// Short lifetimes are never reused, and the memory is bounded whatever the number of sessions.
#[test]
fn reuse_is_off_for_short_lifetimes_and_bounded() {
    let short = Identity::new(
        &config(&[("IDENTITY__ASSERTION_TTL", "3s")]),
        &session_keys(),
    )
    .unwrap();
    let s = session(Some("urn:pleo:company:abc"));
    assert_ne!(
        short.header_value(&s, NOW_MS).unwrap(),
        short.header_value(&s, NOW_MS).unwrap()
    );
    assert_eq!(short.recent.len(), 0);

    let identity = Identity::new(&config(&[]), &session_keys()).unwrap();
    let hasher = SessionHasher::new(&session_keys());
    for i in 0..5000 {
        let mut s = session(Some("urn:pleo:company:abc"));
        s.key = hasher.current(&format!("id {i}"));
        identity.header_value(&s, NOW_MS).unwrap();
    }
    assert!(identity.recent.len() <= 4096, "{}", identity.recent.len());
}
