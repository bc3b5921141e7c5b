//! PKCE (RFC 7636) checks: the shape of a challenge and of a verifier, and S256 verification.
//!
//! Only S256 exists here: Pleo rejects `plain`, which offers no protection when the
//! authorisation request itself can be observed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Length of an S256 challenge: 32 SHA-256 bytes in unpadded base64url.
const S256_CHALLENGE_LEN: usize = 43;

/// Whether `challenge` can be an S256 challenge: exactly 43 characters of base64url.
pub(super) fn is_valid_s256_challenge(challenge: &str) -> bool {
    challenge.len() == S256_CHALLENGE_LEN
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `verifier` has the RFC 7636 §4.1 shape: 43–128 characters of `[A-Za-z0-9-._~]`.
pub(super) fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The S256 challenge of a verifier: BASE64URL-NOPAD(SHA256(ASCII(verifier))).
pub(super) fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` is well formed and hashes to `challenge`.
pub(super) fn verify_s256(verifier: &str, challenge: &str) -> bool {
    // Compare digests rather than strings so the comparison time does not depend on how
    // many leading characters match (a habit worth keeping even in a mock).
    is_valid_verifier(verifier)
        && Sha256::digest(s256_challenge(verifier)) == Sha256::digest(challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_example_verifies() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert_eq!(s256_challenge(verifier), challenge);
        assert!(verify_s256(verifier, challenge));
        assert!(is_valid_s256_challenge(challenge));
    }

    #[test]
    fn wrong_verifier_fails() {
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(!verify_s256(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX",
            challenge
        ));
    }

    #[test]
    fn plain_challenge_used_as_verifier_fails() {
        // With `plain` the verifier equals the challenge; S256 must not accept that.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(!verify_s256(verifier, verifier));
    }

    #[test]
    fn verifier_shape_is_enforced() {
        assert!(!is_valid_verifier(&"a".repeat(42)));
        assert!(is_valid_verifier(&"a".repeat(43)));
        assert!(is_valid_verifier(&"a".repeat(128)));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}+", "a".repeat(43))));
        assert!(is_valid_verifier(&format!("{}-._~", "a".repeat(43))));
    }

    #[test]
    fn challenge_shape_is_enforced() {
        assert!(!is_valid_s256_challenge(&"a".repeat(42)));
        assert!(!is_valid_s256_challenge(&"a".repeat(44)));
        assert!(!is_valid_s256_challenge(&format!("{}=", "a".repeat(42))));
        assert!(!is_valid_s256_challenge(&format!("{}+", "a".repeat(42))));
    }
}
