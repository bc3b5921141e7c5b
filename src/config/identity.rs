//! `[identity]` (the signed assertion the app receives) and `[background]` (opt-in access for
//! the app's server side when no user is present): their typed form and validation.

use std::time::Duration;

use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use ring::signature::Ed25519KeyPair;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use super::defaults::{
    DEFAULT_ASSERTION_TTL, DEFAULT_GRANT_IDLE_TIMEOUT, MAX_ASSERTION_TTL, MIN_SERVICE_TOKEN_CHARS,
};
use super::raw::Reader;

/// `[identity]`: how the assertion in `X-Pleo-Identity` is signed and what it says.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// Ed25519 keys; the first signs, all are published at `/auth/jwks.json`. Empty: one is
    /// generated at start-up (one replica, development).
    pub signing_keys: Vec<SigningKeyMaterial>,
    /// The `aud` claim; `None` means `server.public_url` (the app is what is served there).
    pub audience: Option<String>,
    /// How long an assertion is valid (default 60 s).
    pub assertion_ttl: Duration,
}

/// `[background]`: service access to the most recent grant of a company, off by default.
#[derive(Clone, Debug)]
pub struct BackgroundConfig {
    /// Whether the internal listener accepts service tokens at all.
    pub enabled: bool,
    /// Credentials of the app's server side; any of them is accepted (rotation).
    pub service_tokens: Vec<SecretString>,
    /// A background grant nobody used (no refresh) for this long is forgotten (default 60 days).
    pub grant_idle_timeout: Duration,
}

/// A signing key as configured: the secret material, validated, not yet a key pair.
pub struct SigningKeyMaterial(SecretBox<Material>);

/// The two shapes a key may be given in.
enum Material {
    /// The 32-byte seed.
    Seed([u8; 32]),
    /// A PKCS#8 v1 or v2 document (DER).
    Pkcs8(Vec<u8>),
}

impl secrecy::zeroize::Zeroize for Material {
    fn zeroize(&mut self) {
        match self {
            Material::Seed(seed) => seed.zeroize(),
            Material::Pkcs8(der) => der.zeroize(),
        }
    }
}

impl Clone for SigningKeyMaterial {
    fn clone(&self) -> Self {
        let inner = match self.0.expose_secret() {
            Material::Seed(seed) => Material::Seed(*seed),
            Material::Pkcs8(der) => Material::Pkcs8(der.clone()),
        };
        Self(SecretBox::new(Box::new(inner)))
    }
}

impl std::fmt::Debug for SigningKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKeyMaterial([redacted])")
    }
}

const SIGNING_KEY_HINT: &str = "use `openssl rand -base64 32` (a seed) or `openssl genpkey -algorithm ed25519` (PEM, in signing_keys_file)";

impl SigningKeyMaterial {
    /// A fresh random key (none configured: development, one replica).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Self::from_seed(seed)
    }

    /// A key from its 32-byte seed (tests, and callers that derive keys).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(Material::Seed(seed))))
    }

    /// One entry: base64 of a 32-byte seed or of a PKCS#8 document. An error message never
    /// contains the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        let text = text.trim();
        let bytes = GeneralPurpose::new(&alphabet::STANDARD, config)
            .decode(text)
            .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, config).decode(text))
            .map_err(|_| format!("is not valid base64; {SIGNING_KEY_HINT}"))?;
        let material = match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(seed) => Material::Seed(seed),
            Err(_) => Material::Pkcs8(bytes),
        };
        let key = Self(SecretBox::new(Box::new(material)));
        key.key_pair().map(|_| key).map_err(|_| {
            format!(
                "is neither a 32-byte Ed25519 seed nor an Ed25519 PKCS#8 key; {SIGNING_KEY_HINT}"
            )
        })
    }

    /// Every key in a list of configured lines: a PEM block spanning several lines is joined
    /// first; every other line is one [`parse`](Self::parse)d entry. Problems name the entry's
    /// position (1-based) only.
    pub fn parse_all(lines: &[String]) -> (Vec<Self>, Vec<(usize, String)>) {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        let mut pem: Option<(usize, String)> = None;
        for (index, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.starts_with("-----BEGIN") {
                pem = Some((index + 1, String::new()));
            } else if line.starts_with("-----END") {
                match pem.take() {
                    Some((position, body)) => match Self::parse(&body) {
                        Ok(key) => keys.push(key),
                        Err(message) => problems.push((position, message)),
                    },
                    None => problems.push((index + 1, "ends a PEM block never begun".into())),
                }
            } else if let Some((_, body)) = pem.as_mut() {
                body.push_str(line);
            } else {
                match Self::parse(line) {
                    Ok(key) => keys.push(key),
                    Err(message) => problems.push((index + 1, message)),
                }
            }
        }
        if let Some((position, _)) = pem {
            problems.push((position, "begins a PEM block that never ends".into()));
        }
        (keys, problems)
    }

    /// The key pair (ring checks the key; validation already did).
    pub fn key_pair(&self) -> Result<Ed25519KeyPair, ring::error::KeyRejected> {
        match self.0.expose_secret() {
            Material::Seed(seed) => Ed25519KeyPair::from_seed_unchecked(seed),
            Material::Pkcs8(der) => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der),
        }
    }
}

/// Reads and checks `[identity]`.
pub(super) fn identity(r: &mut Reader) -> Option<IdentityConfig> {
    let mut signing_keys = Vec::new();
    if let Some(list) = r.secret_list("identity", "signing_keys") {
        let (keys, problems) = SigningKeyMaterial::parse_all(&list.items);
        for (position, message) in problems {
            r.problems.push(
                list.key.clone(),
                format!("{} {position} {message}", list.entry),
            );
        }
        signing_keys = keys;
    }
    let audience = r
        .text("identity", "audience")
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    if let Some(audience) = &audience
        && audience.chars().any(char::is_control)
    {
        r.problem(
            "identity",
            "audience",
            "must not contain control characters",
        );
    }
    let assertion_ttl = r.value("identity", "assertion_ttl", DEFAULT_ASSERTION_TTL, |text| {
        let ttl = super::values::duration(text)?;
        if ttl < Duration::from_secs(1) || ttl > MAX_ASSERTION_TTL {
            return Err(format!(
                "must be between 1s and 10m ({text:?}); an assertion is for one request's work"
            ));
        }
        Ok(ttl)
    });
    Some(IdentityConfig {
        signing_keys,
        audience,
        assertion_ttl: assertion_ttl?,
    })
}

/// Reads and checks `[background]`.
pub(super) fn background(r: &mut Reader) -> Option<BackgroundConfig> {
    let enabled = r.value("background", "enabled", "false", super::values::boolean);
    let mut service_tokens = Vec::new();
    if let Some(list) = r.secret_list("background", "service_tokens") {
        for (index, item) in list.items.iter().enumerate() {
            if item.chars().count() < MIN_SERVICE_TOKEN_CHARS
                || item.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                // Only the position is named: the text is (or was meant to be) a secret.
                r.problems.push(
                    list.key.clone(),
                    format!(
                        "{} {} must be at least {MIN_SERVICE_TOKEN_CHARS} characters without spaces; make one with `openssl rand -base64 32`",
                        list.entry,
                        index + 1
                    ),
                );
            } else {
                service_tokens.push(SecretString::from(item.clone()));
            }
        }
    }
    if enabled == Some(true)
        && service_tokens.is_empty()
        && r.problems
            .0
            .iter()
            .all(|p| !p.key.starts_with("background.service_tokens"))
    {
        r.problem(
            "background",
            "service_tokens",
            "required with background.enabled = true: the credential the app's server side presents; make one with `openssl rand -base64 32`",
        );
    }
    let grant_idle_timeout = r.value(
        "background",
        "grant_idle_timeout",
        DEFAULT_GRANT_IDLE_TIMEOUT,
        super::values::duration,
    );
    Some(BackgroundConfig {
        enabled: enabled?,
        service_tokens,
        grant_idle_timeout: grant_idle_timeout?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut env: std::collections::HashMap<String, String> = [
            ("PLEO__CLIENT_ID", "c"),
            ("PLEO__SCOPES", "users:read"),
            ("SESSION__STORE", "memory"),
        ]
        .iter()
        .chain(pairs)
        .map(|(k, v)| (format!("PLEO_GATEWAY__{k}"), (*v).to_owned()))
        .collect();
        env.retain(|_, v| !v.is_empty());
        Config::load_with_env(None, &env)
    }

    fn problems(pairs: &[(&str, &str)]) -> String {
        match load(pairs) {
            Ok(_) => panic!("{pairs:?} should be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn background_access_needs_long_service_tokens_and_never_echoes_them() {
        let text = problems(&[("BACKGROUND__ENABLED", "true")]);
        assert!(
            text.contains("background.service_tokens: required"),
            "{text}"
        );
        let text = problems(&[
            ("BACKGROUND__ENABLED", "true"),
            ("BACKGROUND__SERVICE_TOKENS", "short-secret,another one"),
        ]);
        assert!(text.contains("entry 1 must be at least 32"), "{text}");
        assert!(!text.contains("short-secret"), "{text}");
        let token = "0123456789abcdef0123456789abcdef";
        let config = load(&[
            ("BACKGROUND__ENABLED", "true"),
            ("BACKGROUND__SERVICE_TOKENS", token),
        ])
        .unwrap();
        assert!(config.background.enabled);
        assert_eq!(config.background.service_tokens.len(), 1);
        assert!(!format!("{config:?}").contains(token));
        assert!(!config.redacted_toml().contains(token));
    }

    #[test]
    fn identity_keys_and_ttl_are_checked() {
        let text = problems(&[("IDENTITY__SIGNING_KEYS", "bm90IGEga2V5")]);
        assert!(
            text.contains("identity.signing_keys: entry 1 is neither"),
            "{text}"
        );
        assert!(problems(&[("IDENTITY__ASSERTION_TTL", "1h")]).contains("identity.assertion_ttl"));
        let config = load(&[("SERVER__INTERNAL_LISTEN", "127.0.0.1:8081")]).unwrap();
        assert_eq!(
            config.server.internal_listen,
            Some("127.0.0.1:8081".parse().unwrap())
        );
        assert_eq!(
            config.identity.assertion_ttl,
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            load(&[]).unwrap().server.internal_listen,
            None,
            "off by default"
        );
    }

    #[test]
    fn generated_signing_keys_are_a_warning_for_several_replicas() {
        let warnings = load(&[]).unwrap().warnings();
        assert!(
            warnings.iter().any(|w| w.contains("identity.signing_keys")),
            "{warnings:?}"
        );
        let seed = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let configured = load(&[("IDENTITY__SIGNING_KEYS", seed)]).unwrap();
        assert!(
            configured.warnings().is_empty(),
            "{:?}",
            configured.warnings()
        );
    }

    #[test]
    fn a_pem_block_from_openssl_is_one_key() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1) for the RFC 8032 test-1 seed.
        let lines: Vec<String> = [
            "-----BEGIN PRIVATE KEY-----",
            "MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g",
            "-----END PRIVATE KEY-----",
        ]
        .map(String::from)
        .to_vec();
        let (keys, problems) = SigningKeyMaterial::parse_all(&lines);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn bad_entries_are_named_by_position_never_by_value() {
        let lines: Vec<String> = ["c2hvcnQ=", "not base64 !!", "-----BEGIN PRIVATE KEY-----"]
            .map(String::from)
            .to_vec();
        let (keys, problems) = SigningKeyMaterial::parse_all(&lines);
        assert!(keys.is_empty());
        let positions: Vec<usize> = problems.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, [1, 2, 3]);
        assert!(problems.iter().all(|(_, m)| !m.contains("c2hvcnQ")));
    }
}
