//! The Ed25519 keys that sign identity assertions, and the JWKS that publishes them.
//!
//! Keys come from `[identity] signing_keys` (or `signing_keys_file`): each entry is the 32-byte
//! Ed25519 seed in base64 (`openssl rand -base64 32`), the base64 of a PKCS#8 document, or —
//! in the file — a PEM `PRIVATE KEY` block as `openssl genpkey -algorithm ed25519` writes it.
//! The first key signs; every key is published, so a key can be rotated in (listed second,
//! then first) and out (removed once no assertion signed by it can still be alive, i.e. after
//! `assertion_ttl`) without an app ever seeing an unknown `kid`.
//!
//! A key's `kid` is its RFC 7638 JWK thumbprint: derived from the public key, identical on
//! every replica, and nothing to configure.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::config::SigningKeyMaterial;

/// One key of the ring: its pair, public key and `kid`.
struct RingKey {
    kid: String,
    pair: Ed25519KeyPair,
    public: Vec<u8>,
}

/// The configured signing keys: the first signs, all verify and are published.
pub struct SigningKeys {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SigningKeys {
    /// The ring for `materials`, first signs; `None` when empty or a key does not load (the
    /// configuration was validated, so only a bug gets there).
    pub fn new(materials: &[SigningKeyMaterial]) -> Option<Self> {
        let keys = materials
            .iter()
            .map(|material| {
                let pair = material.key_pair().ok()?;
                let public = pair.public_key().as_ref().to_vec();
                Some(RingKey {
                    kid: thumbprint(&public),
                    pair,
                    public,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The `kid` of the signing key.
    pub fn signing_kid(&self) -> &str {
        &self.keys[0].kid
    }

    /// Signs `message` with the first key.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.keys[0].pair.sign(message).as_ref().to_vec()
    }

    /// Whether `signature` over `message` was made by the key named `kid`. An unknown `kid`
    /// is simply false.
    pub fn verify(&self, kid: &str, message: &[u8], signature: &[u8]) -> bool {
        self.keys.iter().find(|k| k.kid == kid).is_some_and(|key| {
            UnparsedPublicKey::new(&ED25519, &key.public)
                .verify(message, signature)
                .is_ok()
        })
    }

    /// The JWK Set of every public key (RFC 7517, OKP keys per RFC 8037).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|key| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(&key.public),
                    "kid": key.kid,
                    "use": "sig",
                    "alg": "EdDSA",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: SHA-256 over the required members in
/// lexicographic order, no whitespace, base64url.
fn thumbprint(public: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigningKeyMaterial;
    use base64::engine::general_purpose::STANDARD;

    /// RFC 8032 §7.1, test 1: the seed, its public key and the signature of the empty message.
    const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC8032_SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn rfc_key() -> SigningKeys {
        let seed: [u8; 32] = unhex(RFC8032_SEED).try_into().unwrap();
        let material = SigningKeyMaterial::parse(&STANDARD.encode(seed)).unwrap();
        SigningKeys::new(&[material]).unwrap()
    }

    #[test]
    fn a_base64_seed_signs_as_rfc_8032_says() {
        let keys = rfc_key();
        assert_eq!(keys.sign(b""), unhex(RFC8032_SIGNATURE));
        let jwks = keys.jwks();
        assert_eq!(
            jwks["keys"][0]["x"],
            URL_SAFE_NO_PAD.encode(unhex(RFC8032_PUBLIC))
        );
        // RFC 8037 Appendix A.3 gives this key's thumbprint.
        assert_eq!(
            keys.signing_kid(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn every_key_verifies_and_is_published_but_only_the_first_signs() {
        let (old, new) = (
            SigningKeyMaterial::generate(),
            SigningKeyMaterial::generate(),
        );
        let ring = SigningKeys::new(&[new.clone(), old.clone()]).unwrap();
        let old_only = SigningKeys::new(&[old]).unwrap();
        let signature = old_only.sign(b"m");
        assert!(ring.verify(old_only.signing_kid(), b"m", &signature));
        assert!(!ring.verify(ring.signing_kid(), b"m", &signature));
        assert!(!ring.verify("unknown", b"m", &signature));
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
        assert_eq!(ring.jwks()["keys"][0]["kid"], ring.signing_kid());
    }
}
