//! The `sid` claim: a reference to the session that the app can keep and hand back, from which
//! the gateway — and only the gateway — finds the session again.
//!
//! It is the session's store key encrypted with XChaCha20-Poly1305 under a key derived from the
//! session encryption keys, with a synthetic nonce (an HMAC of the store key, as in SIV): the
//! same session always gets the same reference, so the app can use it to tell sessions apart,
//! while the reference reveals neither the session id (the cookie) nor the store key (which
//! names the Redis record). Anyone without the gateway's keys learns only whether two
//! references are equal; a forged or altered reference fails authentication.
//!
//! After an encryption key rotation, references made under an older key still open (every
//! configured key is tried) and new ones are made under the first key.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{config::EncryptionKey, session::SessionKey};

const NONCE_LEN: usize = 24;
/// Binds ciphertexts to this use, so nothing else sealed under the same key opens as a reference.
const CONTEXT: &[u8] = b"pleo-gateway session reference v1";

struct RefKey {
    aead: XChaCha20Poly1305,
    nonce_mac: Hmac<Sha256>,
}

/// Makes and opens session references.
pub struct SessionReferences {
    keys: Vec<RefKey>,
}

impl std::fmt::Debug for SessionReferences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionReferences")
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn derive(key: &EncryptionKey, label: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl SessionReferences {
    /// One reference key per session encryption key (domain-separated derivations, so neither
    /// is ever the session key itself); the first makes references. `None` for an empty list.
    pub fn new(keys: &[EncryptionKey]) -> Option<Self> {
        let keys: Vec<RefKey> = keys
            .iter()
            .map(|key| RefKey {
                aead: XChaCha20Poly1305::new(
                    (&derive(key, b"pleo-gateway session reference encryption v1")).into(),
                ),
                nonce_mac: <Hmac<Sha256> as Mac>::new_from_slice(&derive(
                    key,
                    b"pleo-gateway session reference nonce v1",
                ))
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length")),
            })
            .collect();
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The reference of the session stored under `key`.
    pub fn make(&self, key: &SessionKey) -> String {
        let primary = &self.keys[0];
        let mut mac = primary.nonce_mac.clone();
        mac.update(key.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        let nonce = XNonce::from_slice(&digest[..NONCE_LEN]);
        let sealed = primary
            .aead
            .encrypt(
                nonce,
                Payload {
                    msg: key.as_str().as_bytes(),
                    aad: CONTEXT,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The store key a reference names, if it is one of ours.
    pub fn open(&self, reference: &str) -> Option<SessionKey> {
        let bytes = URL_SAFE_NO_PAD.decode(reference).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        self.keys.iter().find_map(|key| {
            let plain = key
                .aead
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: CONTEXT,
                    },
                )
                .ok()?;
            SessionKey::parse(std::str::from_utf8(&plain).ok()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionHasher;

    fn store_key(id: &str) -> SessionKey {
        SessionHasher::new(&[EncryptionKey::from_bytes([9; 32])]).current(id)
    }

    #[test]
    fn a_reference_is_stable_opens_to_its_key_and_reveals_neither_id_nor_key() {
        let refs = SessionReferences::new(&[EncryptionKey::from_bytes([1; 32])]).unwrap();
        let key = store_key("the-session-id");
        let reference = refs.make(&key);
        assert_eq!(reference, refs.make(&key), "stable for the session");
        assert_ne!(reference, refs.make(&store_key("another")));
        assert_eq!(refs.open(&reference), Some(key.clone()));
        assert!(!reference.contains(key.as_str()));
        assert!(!reference.contains("the-session-id"));
    }

    #[test]
    fn forged_altered_or_foreign_references_do_not_open() {
        let refs = SessionReferences::new(&[EncryptionKey::from_bytes([1; 32])]).unwrap();
        let other = SessionReferences::new(&[EncryptionKey::from_bytes([2; 32])]).unwrap();
        let reference = refs.make(&store_key("s"));
        assert_eq!(other.open(&reference), None);
        let mut bytes = URL_SAFE_NO_PAD.decode(&reference).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(refs.open(&URL_SAFE_NO_PAD.encode(bytes)), None);
        assert_eq!(refs.open("not base64!"), None);
        assert_eq!(refs.open(""), None);
    }

    #[test]
    fn references_made_before_a_key_rotation_still_open() {
        let (old, new) = (
            EncryptionKey::from_bytes([1; 32]),
            EncryptionKey::from_bytes([2; 32]),
        );
        let before = SessionReferences::new(std::slice::from_ref(&old)).unwrap();
        let after = SessionReferences::new(&[new, old]).unwrap();
        let key = store_key("s");
        assert_eq!(after.open(&before.make(&key)), Some(key));
    }
}
