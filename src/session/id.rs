//! Session identifiers: what the cookie holds, and the keyed hash under which Redis stores it.
//!
//! The cookie value is 256 random bits. Redis only ever sees an HMAC of it, keyed with a secret
//! derived from the encryption keys, so a dump of the store (or `MONITOR`) gives nothing that can
//! be replayed as a cookie.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::config::EncryptionKey;

/// Length of an encoded session id (32 bytes, base64url without padding).
const ENCODED_LEN: usize = 43;

/// The secret value in the session cookie. Never logged, never stored.
///
/// Inline, not a `String`: every request with a cookie parses one.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; ENCODED_LEN]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl SessionId {
    /// A fresh id from the OS RNG.
    pub fn generate() -> Self {
        Self(random_encoded())
    }

    /// Accepts a cookie value only if it has exactly the shape we issue; anything else is
    /// treated as "no session" without touching the store.
    pub fn parse(value: &str) -> Option<Self> {
        let bytes: [u8; ENCODED_LEN] = value.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            .then_some(Self(bytes))
    }

    /// The cookie value.
    pub fn as_str(&self) -> &str {
        // Only ever built from base64url characters (`generate`, `parse`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// 256 random bits, base64url: used for login `state` values and other one-off tokens.
pub fn random_token() -> String {
    // Only base64url characters: always UTF-8.
    std::str::from_utf8(&random_encoded())
        .unwrap_or_default()
        .to_owned()
}

/// 256 random bits from the OS RNG, base64url without padding: the 43 characters of a session
/// id or a [`random_token`].
fn random_encoded() -> [u8; ENCODED_LEN] {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut encoded = [0u8; ENCODED_LEN];
    // 32 bytes are always 43 characters of unpadded base64: they fill the array exactly.
    // Checked in release builds too: an id of zero bytes would be every session's.
    let written = URL_SAFE_NO_PAD.encode_slice(bytes, &mut encoded);
    assert_eq!(
        written.ok(),
        Some(ENCODED_LEN),
        "256 bits are 43 characters"
    );
    encoded
}

/// The hashed form of a session id (or login state) as used in store keys. Safe to log.
///
/// The 64 hex digits are kept inline rather than in a `String`: a key is computed, compared
/// and copied on every request, and none of that should allocate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; KEY_LEN]);

/// Hex digits of a SHA-256 digest.
const KEY_LEN: usize = 64;

impl SessionKey {
    /// The hex digest.
    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII hex digits (`from_digest`, `parse`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
    /// A key the gateway wrote somewhere and reads back (a session reference, a background
    /// slot): exactly the 64 lower-case hex digits it computes, or nothing.
    pub fn parse(text: &str) -> Option<Self> {
        let digits: [u8; KEY_LEN] = text.as_bytes().try_into().ok()?;
        digits
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .then_some(Self(digits))
    }
    /// The key of a SHA-256 digest (an HMAC of a session id, a hash of a login state).
    pub(crate) fn from_digest(digest: &[u8; 32]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; KEY_LEN];
        for (pair, byte) in out.chunks_exact_mut(2).zip(digest) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        Self(out)
    }
    /// A short prefix for log lines and metrics labels: enough to correlate, useless to attack.
    pub fn short(&self) -> &str {
        &self.as_str()[..12]
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SessionKey").field(&self.as_str()).finish()
    }
}

/// Computes [`SessionKey`]s. Holds one HMAC key per configured encryption key; the first is
/// current, the others let sessions created before a key rotation still be found.
#[derive(Clone)]
pub struct SessionHasher {
    /// Keyed HMAC states, ready to clone: the key schedule is done once, not per request.
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for SessionHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHasher")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl SessionHasher {
    /// Derives one hashing key per encryption key (domain-separated, so the hash key is never
    /// the encryption key itself).
    pub fn new(keys: &[EncryptionKey]) -> Self {
        let keys = keys
            .iter()
            .map(|k| {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(k.bytes())
                    .unwrap_or_else(|_| unreachable_hmac());
                mac.update(b"pleo-gateway session-id hashing key v1");
                let hashing_key = mac.finalize().into_bytes();
                <Hmac<Sha256> as Mac>::new_from_slice(&hashing_key)
                    .unwrap_or_else(|_| unreachable_hmac())
            })
            .collect();
        Self { keys }
    }

    /// The key under the current (first) hashing key.
    pub fn current(&self, id: &str) -> SessionKey {
        self.with_key(0, id)
    }

    /// Every candidate key, current first: lookups try them in order after a rotation.
    pub fn candidates<'a>(&'a self, id: &'a str) -> impl Iterator<Item = SessionKey> + 'a {
        (0..self.keys.len()).map(move |i| self.with_key(i, id))
    }

    fn with_key(&self, index: usize, id: &str) -> SessionKey {
        let mut mac = self.keys[index].clone();
        mac.update(id.as_bytes());
        SessionKey::from_digest(&mac.finalize().into_bytes().into())
    }
}

/// Lower-case hex of `bytes`, without a per-byte allocation (it runs on every request).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// HMAC accepts keys of any length; this exists only to avoid an `expect` on that invariant.
fn unreachable_hmac() -> Hmac<Sha256> {
    unreachable!("HMAC-SHA256 accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn debug_never_shows_the_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(id.as_str()));
    }

    #[test]
    fn hashing_is_keyed_and_rotatable() {
        let a = EncryptionKey::generate();
        let b = EncryptionKey::generate();
        let id = SessionId::generate();
        let old = SessionHasher::new(std::slice::from_ref(&a)).current(id.as_str());
        let rotated = SessionHasher::new(&[b, a]);
        assert_ne!(rotated.current(id.as_str()), old);
        assert!(rotated.candidates(id.as_str()).any(|k| k == old));
        assert!(!old.as_str().contains(id.as_str()));
    }

    /// The shape of an encoded id, spelled out independently of [`SessionId::parse`]: 32 bytes
    /// in base64url without padding.
    const ID_LEN: usize = 43;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// `len` characters of the alphabet.
    fn from_alphabet(len: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(ALPHABET), len)
            .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
    }

    /// One character that no id contains: ASCII outside the alphabet (`+`, `/`, `=`, `.`, space,
    /// controls…) or any non-ASCII character.
    fn foreign_char() -> impl Strategy<Value = char> {
        let ascii: Vec<char> = (0u8..128)
            .filter(|b| !ALPHABET.contains(b))
            .map(char::from)
            .collect();
        prop_oneof![
            3 => proptest::sample::select(ascii),
            1 => any::<char>().prop_filter("non-ASCII", |c| !c.is_ascii()),
        ]
    }

    /// A candidate cookie value and whether it is shaped like an id. About half are; the rest
    /// are near misses (one character short or over, or one foreign character anywhere in an
    /// otherwise valid value), plus some arbitrary text.
    fn candidates() -> impl Strategy<Value = (String, bool)> {
        let one_foreign =
            (from_alphabet(ID_LEN), 0..ID_LEN, foreign_char()).prop_map(|(valid, at, foreign)| {
                let mut chars: Vec<char> = valid.chars().collect();
                chars[at] = foreign;
                chars.into_iter().collect()
            });
        prop_oneof![
            10 => from_alphabet(ID_LEN).prop_map(|s| (s, true)),
            2 => from_alphabet(ID_LEN - 1).prop_map(|s| (s, false)),
            2 => from_alphabet(ID_LEN + 1).prop_map(|s| (s, false)),
            4 => one_foreign.prop_map(|s| (s, false)),
            2 => "\\PC{0,80}".prop_map(|s| {
                let valid = s.len() == ID_LEN && s.bytes().all(|b| ALPHABET.contains(&b));
                (s, valid)
            }),
        ]
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_values_shaped_like_an_id((s, valid) in candidates()) {
            let parsed = SessionId::parse(&s);
            prop_assert_eq!(parsed.is_some(), valid, "parse({:?})", s);
            if let Some(id) = parsed {
                prop_assert_eq!(id.as_str(), s.as_str());
            }
        }
    }
}
