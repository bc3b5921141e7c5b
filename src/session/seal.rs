//! Sealing records at rest (session records, and pending logins in their cookies), so a Redis
//! dump, `MONITOR` or a copied cookie never yields a token or a PKCE verifier.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per write (random nonces are safe at that size,
//! no counter to coordinate across replicas). Each blob names the key that sealed it by a short
//! fingerprint, so keys can be rotated: the first configured key encrypts, every configured key
//! decrypts, and a record is re-sealed under the first key the next time it is written.
//! The associated data binds a blob to the Redis slot it was written for, so a blob copied to
//! another session's key does not decrypt.

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::EncryptionKey;

/// Format version of sealed blobs; bump when the layout changes.
const FORMAT_V1: u8 = 1;
const FINGERPRINT_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + FINGERPRINT_LEN + NONCE_LEN;

/// Why a blob could not be opened. Callers treat every case as "no session" (never a 500).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    /// Shorter than a header, or an unknown format version.
    #[error("sealed data is malformed")]
    Malformed,
    /// Sealed under a key that is no longer configured.
    #[error("sealed under an unknown key")]
    UnknownKey,
    /// Authentication failed: tampered, truncated, or moved to another slot.
    #[error("sealed data failed authentication")]
    Forged,
}

struct KeyEntry {
    fingerprint: [u8; FINGERPRINT_LEN],
    aead: XChaCha20Poly1305,
}

/// Seals and opens session records with the configured key ring.
pub struct Sealer {
    keys: Vec<KeyEntry>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Sealer {
    /// Builds the ring; the first key encrypts. Returns `None` for an empty list.
    pub fn new(keys: &[EncryptionKey]) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        let keys = keys
            .iter()
            .map(|key| KeyEntry {
                fingerprint: fingerprint(key.bytes()),
                aead: XChaCha20Poly1305::new(key.bytes().into()),
            })
            .collect();
        Some(Self { keys })
    }

    /// Encrypts `plaintext` under the primary key, bound to `context` (the record's slot).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let primary = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + 16);
        out.push(FORMAT_V1);
        out.extend_from_slice(&primary.fingerprint);
        out.extend_from_slice(&nonce);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers; an empty
        // ciphertext would simply fail to open later, which reads as "no session".
        let sealed = primary
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .unwrap_or_default();
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a blob sealed by any configured key for the same `context`.
    pub fn open(&self, blob: &[u8], context: &[u8]) -> Result<Vec<u8>, CipherError> {
        if blob.len() < HEADER_LEN || blob[0] != FORMAT_V1 {
            return Err(CipherError::Malformed);
        }
        let fingerprint = &blob[1..1 + FINGERPRINT_LEN];
        let nonce = XNonce::from_slice(&blob[1 + FINGERPRINT_LEN..HEADER_LEN]);
        let entry = self
            .keys
            .iter()
            .find(|k| k.fingerprint == fingerprint)
            .ok_or(CipherError::UnknownKey)?;
        entry
            .aead
            .decrypt(
                nonce,
                Payload {
                    msg: &blob[HEADER_LEN..],
                    aad: context,
                },
            )
            .map_err(|_| CipherError::Forged)
    }

    /// True when `blob` was sealed by a key other than the primary (it should be re-sealed).
    pub fn is_stale(&self, blob: &[u8]) -> bool {
        blob.get(1..1 + FINGERPRINT_LEN) != Some(&self.keys[0].fingerprint[..])
    }
}

fn fingerprint(key: &[u8; 32]) -> [u8; FINGERPRINT_LEN] {
    let digest = Sha256::new()
        .chain_update(b"pleo-gateway key fingerprint v1")
        .chain_update(key)
        .finalize();
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(&digest[..FINGERPRINT_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(keys: &[&EncryptionKey]) -> Sealer {
        let keys: Vec<EncryptionKey> = keys.iter().map(|k| (*k).clone()).collect();
        Sealer::new(&keys).unwrap()
    }

    #[test]
    fn round_trip() {
        let a = EncryptionKey::generate();
        let c = cipher(&[&a]);
        let blob = c.seal(b"refresh-token-value", b"slot-1");
        assert!(!blob.windows(5).any(|w| w == b"refre"));
        assert_eq!(c.open(&blob, b"slot-1").unwrap(), b"refresh-token-value");
    }

    #[test]
    fn wrong_context_wrong_key_and_truncation_fail() {
        let a = EncryptionKey::generate();
        let b = EncryptionKey::generate();
        let blob = cipher(&[&a]).seal(b"secret", b"slot-1");
        assert_eq!(
            cipher(&[&a]).open(&blob, b"slot-2"),
            Err(CipherError::Forged)
        );
        assert_eq!(
            cipher(&[&b]).open(&blob, b"slot-1"),
            Err(CipherError::UnknownKey)
        );
        assert_eq!(
            cipher(&[&a]).open(&blob[..blob.len() - 1], b"slot-1"),
            Err(CipherError::Forged)
        );
        assert_eq!(
            cipher(&[&a]).open(&blob[..10], b"slot-1"),
            Err(CipherError::Malformed)
        );
    }

    #[test]
    fn rotation_decrypts_old_and_reports_stale() {
        let a = EncryptionKey::generate();
        let b = EncryptionKey::generate();
        let old = cipher(&[&a]).seal(b"secret", b"s");
        let rotated = cipher(&[&b, &a]);
        assert_eq!(rotated.open(&old, b"s").unwrap(), b"secret");
        assert!(rotated.is_stale(&old));
        assert!(!rotated.is_stale(&rotated.seal(b"secret", b"s")));
    }
}
