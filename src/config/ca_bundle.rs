//! Extra certificate authorities for the outbound TLS connections (`pleo.ca_file`,
//! `proxy.ca_file`): a private CA, or the CA of a corporate proxy that inspects TLS.
//!
//! The PEM file is read and parsed while the configuration is validated, so `check-config`
//! already says when it is unreadable, empty or holds no certificate. The certificates are
//! trusted in addition to the built-in Mozilla roots (see [`crate::tls`]), never instead of
//! them: adding a CA cannot break a connection that worked before.

use std::path::PathBuf;

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// The certificates of one `ca_file`, and where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaBundle {
    /// The file, as configured.
    pub path: PathBuf,
    /// Its certificates, DER-encoded, in file order.
    pub certificates: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Parses the PEM `text` of `path`: every `CERTIFICATE` block; at least one is required.
    /// Other blocks (a key someone appended by mistake) are skipped, never echoed.
    pub(super) fn from_pem(path: &str, text: &str) -> Result<Self, String> {
        let mut certificates = Vec::new();
        for (index, item) in CertificateDer::pem_slice_iter(text.as_bytes()).enumerate() {
            match item {
                Ok(certificate) => certificates.push(certificate),
                Err(err) => {
                    return Err(format!(
                        "{path:?}: PEM certificate {} cannot be read ({err})",
                        index + 1
                    ));
                }
            }
        }
        if certificates.is_empty() {
            return Err(format!(
                "{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            ));
        }
        Ok(Self {
            path: PathBuf::from(path),
            certificates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PEM framing around base64 bytes: only the framing is checked here (the TLS stack checks the
    /// certificate itself when it is used, see `crate::tls`).
    const PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBejCCASCgAwIBAgIUSJQvSbVLJXZg5dTO2K6dzhR1Z5swCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAeFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEwMDAw
MDBaMBIxEDAOBgNVBAMMB3Rlc3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQ0oP4d6Fq3t+e9mVxSxQbS2l6z8Hh1gGqN4B2f7t2R4xvZ5z3lJ3T4r1xq6k1Y
o8y3L4k9v5G7a2pV2rQ0mK1Bo1MwUTAdBgNVHQ4EFgQU8f0zB1n8aY5l4n5hZ0bV
0j8cE+QwHwYDVR0jBBgwFoAU8f0zB1n8aY5l4n5hZ0bV0j8cE+QwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA0Zq8rY3x0bq7yK7o4m2WcW5rX1eP
-----END CERTIFICATE-----
";

    #[test]
    fn certificates_are_read_in_order() {
        let bundle = CaBundle::from_pem("/ca.pem", &format!("junk\n{PEM}\n{PEM}")).unwrap();
        assert_eq!(bundle.certificates.len(), 2);
        assert_eq!(bundle.path, PathBuf::from("/ca.pem"));
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let message = CaBundle::from_pem("/ca.pem", "not a certificate\n").unwrap_err();
        assert!(message.contains("holds no PEM certificate"), "{message}");
        assert!(message.contains("/ca.pem"), "{message}");
    }
}
