//! Compact JWS (RFC 7515) with EdDSA (RFC 8037) only: signing the gateway's assertions and
//! checking the ones callers hand back. Pure functions over a [`SigningKeys`] ring.
//!
//! Verification is deliberately narrow: the header must say `"alg":"EdDSA"` and name a `kid`
//! of ours; anything else — `none`, `HS256` (the classic confusion of using a public key as an
//! HMAC secret), an unknown `kid`, a `crit` extension, a `jwk`/`jku`/`x5u` pointing at some
//! other key — is refused before any signature is looked at. The library never picks a key or
//! algorithm from the token itself.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use super::keys::SigningKeys;

/// Longest assertion accepted: ours are about 500 bytes; a megabyte of header is an attack.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims of an identity assertion. Every field is always present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The gateway: `server.public_url` without its trailing slash.
    pub iss: String,
    /// `[identity] audience`: the app.
    pub aud: String,
    /// The Pleo subject URN (`urn:pleo:company:…` or `urn:pleo:organisation:…`).
    pub sub: String,
    /// Granted scopes, space-separated (as `X-Pleo-Scopes`).
    pub scope: String,
    /// The session reference: opaque to the app, stable for the session, neither its id nor
    /// its store key (see [`super::SessionReferences`]).
    pub sid: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Unique per assertion, for apps that log or de-duplicate them.
    pub jti: String,
}

/// The protected header we write and accept.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    kid: String,
}

/// Why a token was refused. The text is for logs at debug level and never names a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwsError {
    /// Not three base64url parts of sane size, or not JSON where JSON belongs.
    #[error("the assertion is malformed")]
    Malformed,
    /// The header names an algorithm other than EdDSA, or carries fields we do not accept.
    #[error("the assertion's header is not accepted (only EdDSA with a kid)")]
    Header,
    /// The `kid` is not one of our keys, or the signature does not verify.
    #[error("the assertion's signature does not verify")]
    Signature,
}

/// Signs `claims` with the ring's first key: `header.payload.signature`, base64url.
pub fn sign(keys: &SigningKeys, claims: &Claims) -> String {
    let header = Header {
        alg: "EdDSA".into(),
        typ: Some("JWT".into()),
        kid: keys.signing_kid().to_owned(),
    };
    // Serialising these two plain structs cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = keys.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// Checks the header and signature of `token` against the ring and returns its claims. Time,
/// issuer and audience are the caller's to check.
pub fn verify(keys: &SigningKeys, token: &str) -> Result<Claims, JwsError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwsError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwsError::Malformed)
    };
    let header_json = decode(header)?;
    // Unknown fields (`jwk`, `jku`, `x5u`, `crit`, …) fail to parse: refused as a header.
    let parsed: Header = serde_json::from_slice(&header_json).map_err(|_| {
        if serde_json::from_slice::<serde_json::Value>(&header_json).is_ok() {
            JwsError::Header
        } else {
            JwsError::Malformed
        }
    })?;
    if parsed.alg != "EdDSA" || parsed.typ.as_deref().is_some_and(|t| t != "JWT") {
        return Err(JwsError::Header);
    }
    let signature = decode(signature)?;
    let signed = &token[..header.len() + 1 + payload.len()];
    if !keys.verify(&parsed.kid, signed.as_bytes(), &signature) {
        return Err(JwsError::Signature);
    }
    serde_json::from_slice(&decode(payload)?).map_err(|_| JwsError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigningKeyMaterial;

    fn ring() -> SigningKeys {
        SigningKeys::new(&[SigningKeyMaterial::generate()]).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            iss: "https://gateway.example.com".into(),
            aud: "app".into(),
            sub: "urn:pleo:company:123".into(),
            scope: "users:read".into(),
            sid: "ref".into(),
            iat: 1_700_000_000,
            exp: 1_700_000_060,
            jti: "j".into(),
        }
    }

    fn b64(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn a_signed_assertion_verifies_and_says_what_was_signed() {
        let keys = ring();
        let token = sign(&keys, &claims());
        assert_eq!(verify(&keys, &token), Ok(claims()));
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], keys.signing_kid());
    }

    #[test]
    fn a_tampered_payload_does_not_verify() {
        let keys = ring();
        let token = sign(&keys, &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut other = claims();
        other.sub = "urn:pleo:company:someone-else".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap()),
            parts[2]
        );
        assert_eq!(verify(&keys, &forged), Err(JwsError::Signature));
    }

    #[test]
    fn another_key_or_an_unknown_kid_does_not_verify() {
        let (ours, theirs) = (ring(), ring());
        assert_eq!(
            verify(&ours, &sign(&theirs, &claims())),
            Err(JwsError::Signature)
        );
        // Our signature, relabelled with a kid we do not have.
        let token = sign(&ours, &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let header = b64(&serde_json::json!({"alg": "EdDSA", "kid": "nope"}));
        let relabelled = format!("{header}.{}.{}", parts[1], parts[2]);
        assert_eq!(verify(&ours, &relabelled), Err(JwsError::Signature));
    }

    #[test]
    fn alg_none_hs256_and_embedded_keys_are_refused() {
        let keys = ring();
        let payload = b64(&serde_json::to_value(claims()).unwrap());
        let kid = keys.signing_kid();
        for header in [
            serde_json::json!({"alg": "none", "kid": kid}),
            serde_json::json!({"alg": "HS256", "kid": kid}),
            serde_json::json!({"alg": "ES256", "kid": kid}),
            serde_json::json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"]}),
            serde_json::json!({"alg": "EdDSA", "kid": kid, "jwk": {"kty": "OKP"}}),
            serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "at+jwt"}),
        ] {
            let header = b64(&header);
            // A "signature" an HS256 verifier keyed with our public key would accept, or none.
            for signature in ["", "AAAA"] {
                let token = format!("{header}.{payload}.{signature}");
                assert_eq!(verify(&keys, &token), Err(JwsError::Header), "{token}");
            }
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let keys = ring();
        let token = sign(&keys, &claims());
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &format!("{token}x"),
            &"A".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(verify(&keys, bad).is_err(), "{bad}");
        }
    }
}
