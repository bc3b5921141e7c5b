//! Values that parse but must not be used: placeholders and keys published in this repository,
//! and plain `http://` in front of the production Pleo.
//!
//! A gateway started with the example configuration would otherwise run "valid": tokens sealed
//! under a key anyone can read in the repository, and a client id Pleo never issued. Each
//! problem names its key and says what to do instead.

use url::{Host, Url};

use super::raw::Problems;
use super::{PleoConfig, PleoEnvironment, ServerConfig, SessionConfig};

/// Keys published in this repository, as bytes (each is also readable ASCII): the example in
/// `config/gateway.toml`, the development key in `config/dev.toml`, the conformance check's,
/// and 32 zero bytes.
/// `published_keys_cover_the_repository` checks that every key in the repository's
/// configuration files and README is listed here.
const PUBLISHED_KEYS: &[(&[u8; 32], &str)] = &[
    (
        b"EXAMPLE-KEY-REPLACE-ME-32-BYTES!",
        "the example key from config/gateway.toml",
    ),
    (
        b"DEV-ONLY-KEY-NEVER-USE-IN-PROD!!",
        "the development key from config/dev.toml",
    ),
    (
        b"conformance-key-32-bytes-long!!!",
        "the key of the conformance check (scripts/conformance)",
    ),
    (&[0; 32], "32 zero bytes"),
];

/// Records a problem for every refused value among the sections that parsed.
pub(super) fn check(
    problems: &mut Problems,
    server: Option<&ServerConfig>,
    pleo: Option<&PleoConfig>,
    session: Option<&SessionConfig>,
) {
    if let Some(pleo) = pleo
        && is_placeholder_client_id(&pleo.client_id)
    {
        problems.push(
            "pleo.client_id",
            "is the all-zero placeholder from the example configuration; set the client id \
             Pleo issued for this integration",
        );
    }
    // Against a mock on this machine no real token can be sealed, so the development
    // configuration may keep its fixed key; anywhere else a published key protects nothing.
    if let (Some(pleo), Some(session)) = (pleo, session)
        && !(is_loopback(&pleo.auth_url) && is_loopback(&pleo.api_url))
    {
        for (index, key) in session.encryption_keys.iter().enumerate() {
            if let Some((_, what)) = PUBLISHED_KEYS.iter().find(|(k, _)| *k == key.bytes()) {
                problems.push(
                    "session.encryption_keys",
                    format!(
                        "key {} is {what}, which is public: anyone could read the tokens it \
                         seals. Make a key with `openssl rand -base64 32` (sessions sealed \
                         under the public key end; their users log in again)",
                        index + 1
                    ),
                );
            }
        }
    }
    if let (Some(server), Some(pleo)) = (server, pleo)
        && pleo.environment == PleoEnvironment::Production
        && server.public_url.scheme() == "http"
        && !server.allow_insecure_public_url
    {
        problems.push(
            "server.public_url",
            "is http:// with pleo.environment = \"production\": the session cookie would \
             travel unencrypted and without `Secure`. Set the https:// origin browsers use \
             (with a TLS-terminating proxy in front, the proxy's https:// address); to run on \
             plain http anyway, set server.allow_insecure_public_url = true",
        );
    }
}

/// `00000000-0000-0000-0000-000000000000` and other all-zero spellings.
fn is_placeholder_client_id(id: &str) -> bool {
    let id = id.trim();
    id.contains('0') && id.chars().all(|c| c == '0' || c == '-')
}

/// Whether `url` names this machine (`localhost`, `127.0.0.0/8`, `::1`).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_client_ids_are_placeholders() {
        assert!(is_placeholder_client_id(
            "00000000-0000-0000-0000-000000000000"
        ));
        assert!(is_placeholder_client_id(" 0000 "));
        assert!(!is_placeholder_client_id(
            "3fa85f64-5717-4562-b3fc-2c963f66afa6"
        ));
        assert!(!is_placeholder_client_id("-"));
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for (url, expected) in [
            ("http://127.0.0.1:9090", true),
            ("http://[::1]:9090", true),
            ("http://localhost:9090", true),
            ("https://auth.staging.pleo.io", false),
            ("http://10.0.0.1", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(url).unwrap()), expected, "{url}");
        }
    }

    /// Every key written in the repository's configuration files and README (a base64 string
    /// of 32 bytes in quotes) is refused, so a new example cannot slip past this module.
    #[test]
    fn published_keys_cover_the_repository() {
        use base64::Engine;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("README.md")];
        for dir in ["config", "deploy", "deploy/kubernetes"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                files.push(entry.unwrap().path());
            }
        }
        let mut found = 0;
        for file in files.iter().filter(|f| f.is_file()) {
            let text = std::fs::read_to_string(file).unwrap();
            for quoted in text.split('"').skip(1).step_by(2) {
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(quoted) else {
                    continue;
                };
                if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                    found += 1;
                    assert!(
                        PUBLISHED_KEYS.iter().any(|(k, _)| **k == key),
                        "{}: {quoted} is published but not refused",
                        file.display()
                    );
                }
            }
        }
        assert!(found >= 2, "the example and development keys were found");
    }
}
