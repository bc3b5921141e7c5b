//! Pending logins live in the browser, not on the server: `/auth/login` seals the PKCE verifier,
//! the return path and the subject hint into a short-lived cookie scoped to `/auth/`, and
//! `/auth/callback` opens and clears it.
//!
//! Why a cookie and not the store: anyone can call `/auth/login` without a session, so anything
//! it stored would let an anonymous client grow Redis (or the process) until real users are
//! refused. With the cookie, a login attempt costs the server nothing after its response.
//!
//! What still holds:
//! - **Single use.** The callback clears the cookie whatever the outcome, and the authorisation
//!   code is single-use at Pleo: a replayed callback URL from a browser that already used it
//!   finds no cookie (400), and one replayed with a copied cookie gets a spent code (400).
//! - **Login CSRF** (RFC 6749 §10.12). Only the browser that started a login holds its cookie, so
//!   a callback URL sent to someone else finds nothing to complete. A pending-login cookie must
//!   use `__Secure-` and `Path=/auth/`, which a sibling subdomain could still set ("cookie
//!   tossing": plant the attacker's own pending login, then send the victim its callback URL),
//!   so each login is also bound to the browser by a `__Host-` binding cookie (`Path=/`, which
//!   only this host can set): the login stores the SHA-256 of its value and the callback
//!   compares.
//! - **Several tabs.** Each login has its own cookie, named by a tag of its `state`; at most
//!   [`MAX_PENDING_LOGINS`] are kept per browser, the oldest giving way, which bounds the
//!   `Cookie` header `/auth/*` requests carry.
//! - **Confidentiality.** The cookie is sealed (XChaCha20-Poly1305, the session keys) and bound
//!   to its tag, and it carries a digest of the `state`, not the `state` itself.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{id::hex, seal::Sealer};
use crate::config::EncryptionKey;

/// Longest `return_to` kept, in bytes; a longer one falls back to `/`. It keeps one sealed
/// login cookie (about 1.35 × this plus 200 bytes) well inside browsers' 4 KiB per cookie.
pub const MAX_RETURN_TO_BYTES: usize = 2048;

/// Longest sealed value of one pending-login cookie: with its name and attributes it stays
/// under the 4096 bytes browsers keep per cookie.
pub const MAX_COOKIE_VALUE_BYTES: usize = 3800;

/// Most logins in progress per browser: several tabs may log in at once, and with three cookies
/// of at most about 3 KiB the `Cookie` header of `/auth/*` stays inside the default 16 KiB head.
pub const MAX_PENDING_LOGINS: usize = 3;

/// What a login in progress needs at the callback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// PKCE code verifier (secret until the token exchange).
    #[serde(rename = "v")]
    pub pkce_verifier: String,
    /// Where to go after login (already validated).
    #[serde(rename = "r")]
    pub return_to: String,
    /// `urn_pleo_params_oauth_subject` from an Initiation-URI login, if any.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub subject_hint: Option<String>,
    /// When `/auth/login` issued it (Unix ms): the cookie's `Max-Age` is the browser's word,
    /// this is the server's.
    #[serde(rename = "t")]
    pub issued_at_ms: u64,
    /// SHA-256 (hex) of the `state` this login was started with.
    #[serde(rename = "s")]
    state_digest: String,
    /// SHA-256 (hex) of the browser-binding cookie of the browser that started it.
    #[serde(rename = "b")]
    binding_digest: String,
}

impl PendingLogin {
    /// A pending login for `state`, issued at `now_ms`.
    pub fn new(
        state: &str,
        pkce_verifier: String,
        return_to: String,
        subject_hint: Option<String>,
        now_ms: u64,
        binding: &str,
    ) -> Self {
        Self {
            pkce_verifier,
            return_to,
            subject_hint,
            issued_at_ms: now_ms,
            state_digest: digest(state),
            binding_digest: digest(binding),
        }
    }

    /// Whether `binding` (the browser-binding cookie's value) is the one this login started with.
    pub fn bound_to(&self, binding: Option<&str>) -> bool {
        binding.is_some_and(|b| digest(b) == self.binding_digest)
    }
}

/// Seals and opens pending-login cookies.
#[derive(Debug)]
pub struct PendingLogins {
    cipher: Sealer,
    ttl: Duration,
}

impl PendingLogins {
    /// Uses the session key ring (the first key seals) and `session.login_state_ttl`.
    pub fn new(keys: &[EncryptionKey], ttl: Duration) -> Option<Self> {
        Some(Self {
            cipher: Sealer::new(keys)?,
            ttl,
        })
    }

    /// How long a login may take; also the cookie's `Max-Age`.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The cookie-name tag of the login started with `state`.
    pub fn tag(state: &str) -> String {
        digest(state)[..16].to_owned()
    }

    /// The cookie value for `login`, to be stored under the tag of its state. A `return_to`
    /// that would make the value too long for a browser to keep (JSON escaping can double it)
    /// is dropped for `/`.
    pub fn seal(&self, login: &PendingLogin) -> String {
        let sealed = self.seal_exactly(login);
        if sealed.len() <= MAX_COOKIE_VALUE_BYTES {
            return sealed;
        }
        let shorter = PendingLogin {
            return_to: "/".into(),
            ..login.clone()
        };
        self.seal_exactly(&shorter)
    }

    fn seal_exactly(&self, login: &PendingLogin) -> String {
        let plain = serde_json::to_vec(login).unwrap_or_default();
        let tag = &login.state_digest[..16];
        URL_SAFE_NO_PAD.encode(self.cipher.seal(&plain, &context(tag)))
    }

    /// Opens the cookie stored under `tag`, if it is ours, intact and not older than the TTL.
    pub fn open(&self, tag: &str, value: &str, now_ms: u64) -> Option<PendingLogin> {
        let blob = URL_SAFE_NO_PAD.decode(value).ok()?;
        let plain = self.cipher.open(&blob, &context(tag)).ok()?;
        let login: PendingLogin = serde_json::from_slice(&plain).ok()?;
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let fresh = now_ms < login.issued_at_ms.saturating_add(ttl_ms);
        (fresh && login.state_digest.starts_with(tag)).then_some(login)
    }

    /// Opens the cookie of the login started with `state`: `None` unless the cookie was
    /// sealed for exactly that state.
    pub fn open_for_state(&self, state: &str, value: &str, now_ms: u64) -> Option<PendingLogin> {
        self.open(&Self::tag(state), value, now_ms)
            .filter(|login| login.state_digest == digest(state))
    }
}

/// The issue time of a new login at `now_ms`: strictly after every login in `present` (as
/// [`logins_to_evict`] takes them). Tabs that start logins within one millisecond would
/// otherwise tie, and the newest could give way instead of the oldest.
pub fn issue_time(now_ms: u64, present: &[(String, Option<u64>)]) -> u64 {
    present
        .iter()
        .filter_map(|(_, issued)| *issued)
        .max()
        .map_or(now_ms, |latest| now_ms.max(latest.saturating_add(1)))
}

/// The tags of the logins a new one must displace so that at most [`MAX_PENDING_LOGINS`]
/// remain: unreadable or expired ones first, then the oldest. `present` pairs each tag with
/// its issue time (`None` when the cookie does not open).
pub fn logins_to_evict(present: &[(String, Option<u64>)]) -> Vec<String> {
    let mut ordered: Vec<&(String, Option<u64>)> = present.iter().collect();
    // `None` sorts first: the unreadable go before any live login.
    ordered.sort_by_key(|(_, issued)| *issued);
    let excess = (present.len() + 1).saturating_sub(MAX_PENDING_LOGINS);
    let dead = ordered
        .iter()
        .take_while(|(_, issued)| issued.is_none())
        .count();
    ordered
        .into_iter()
        .take(excess.max(dead))
        .map(|(tag, _)| tag.clone())
        .collect()
}

fn digest(state: &str) -> String {
    hex(&Sha256::digest(state.as_bytes()))
}

/// Associated data: binds a sealed login to its cookie name, and keeps it from ever opening as
/// a session record (whose context is a store key).
fn context(tag: &str) -> Vec<u8> {
    format!("pending-login:{tag}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins() -> PendingLogins {
        PendingLogins::new(&[EncryptionKey::generate()], Duration::from_secs(600)).unwrap()
    }

    fn sample(state: &str) -> PendingLogin {
        PendingLogin::new(
            state,
            "verifier".into(),
            "/x?y=1".into(),
            None,
            1_000,
            "binding",
        )
    }

    #[test]
    fn round_trip_for_the_same_state() {
        let logins = logins();
        let sealed = logins.seal(&sample("state-a"));
        let opened = logins.open_for_state("state-a", &sealed, 2_000).unwrap();
        assert_eq!(opened, sample("state-a"));
        assert!(!sealed.contains("verifier"));
    }

    #[test]
    fn another_state_or_a_moved_cookie_does_not_open() {
        let logins = logins();
        let sealed = logins.seal(&sample("state-a"));
        assert!(logins.open_for_state("state-b", &sealed, 2_000).is_none());
        // Moved under another tag (another cookie name): the associated data no longer fits.
        assert!(
            logins
                .open(&PendingLogins::tag("state-b"), &sealed, 2_000)
                .is_none()
        );
    }

    #[test]
    fn expired_tampered_and_foreign_cookies_do_not_open() {
        let logins = logins();
        let sealed = logins.seal(&sample("s"));
        assert!(
            logins
                .open_for_state("s", &sealed, 1_000 + 600_000)
                .is_none()
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            logins
                .open_for_state("s", &URL_SAFE_NO_PAD.encode(&bytes), 2_000)
                .is_none()
        );
        assert!(logins.open_for_state("s", "not base64!", 2_000).is_none());
        assert!(self::logins().open_for_state("s", &sealed, 2_000).is_none());
    }

    #[test]
    fn the_longest_return_to_fits_one_cookie() {
        let logins = logins();
        let login = PendingLogin::new(
            &"s".repeat(43),
            "v".repeat(43),
            "/".repeat(MAX_RETURN_TO_BYTES),
            Some(format!("urn:pleo:organisation:{}", "f".repeat(64))),
            u64::MAX,
            "binding",
        );
        let cookie = format!("__Secure-pleo-session-login-{}=", "0".repeat(16));
        assert!(cookie.len() + logins.seal(&login).len() < 4000);
    }

    #[test]
    fn a_return_to_that_escapes_too_long_falls_back_to_the_start_page() {
        let logins = logins();
        let quotes = format!("/{}", "\"".repeat(MAX_RETURN_TO_BYTES - 1));
        let login = PendingLogin::new("s", "v".repeat(43), quotes, None, 1, "b");
        let sealed = logins.seal(&login);
        assert!(sealed.len() <= MAX_COOKIE_VALUE_BYTES, "{}", sealed.len());
        assert_eq!(
            logins.open_for_state("s", &sealed, 2).unwrap().return_to,
            "/"
        );
    }

    #[test]
    fn a_login_is_bound_to_the_browser_that_started_it() {
        let login = sample("s");
        assert!(login.bound_to(Some("binding")));
        assert!(!login.bound_to(Some("another browser")));
        assert!(!login.bound_to(None));
    }

    #[test]
    fn eviction_keeps_the_newest_and_drops_the_unreadable() {
        let present = |items: &[(&str, Option<u64>)]| -> Vec<(String, Option<u64>)> {
            items.iter().map(|(t, i)| ((*t).to_owned(), *i)).collect()
        };
        assert!(logins_to_evict(&present(&[("a", Some(1)), ("b", Some(2))])).is_empty());
        assert_eq!(
            logins_to_evict(&present(&[("a", Some(3)), ("b", Some(1)), ("c", Some(2))])),
            vec!["b"]
        );
        assert_eq!(
            logins_to_evict(&present(&[("a", None), ("b", Some(1))])),
            vec!["a"]
        );
        assert_eq!(logins_to_evict(&present(&[("a", Some(1)); 6])).len(), 4);
        // Started within one millisecond, a new login still comes after those in progress.
        let same_ms = present(&[("a", Some(7)), ("b", Some(8)), ("c", Some(8))]);
        assert_eq!(issue_time(8, &same_ms), 9);
        assert_eq!(issue_time(20, &same_ms), 20);
        assert_eq!(issue_time(5, &present(&[("a", None)])), 5);
    }
}
