//! Extra certificate authorities for the outbound TLS connections (`pleo.ca_file`,
//! `proxy.ca_file`): a private CA, or the CA of a corporate proxy that inspects TLS.
//!
//! The PEM file is read and parsed while the configuration is validated, so `check-config`
//! already says when it is unreadable, empty or holds no certificate. The certificates are
//! trusted in addition to the built-in Mozilla roots (see [`crate::tls`]), never instead of
//! them: adding a CA cannot break a connection that worked before.

use std::path::PathBuf;

use rustls::RootCertStore;
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
    /// Parses the PEM `text` of `path`: every `CERTIFICATE` block, each of which must be
    /// usable as a trust anchor; at least one is required. Other blocks (a key someone
    /// appended by mistake) are skipped, never echoed.
    pub(super) fn from_pem(path: &str, text: &str) -> Result<Self, String> {
        let mut certificates = Vec::new();
        // Parsed as the TLS stack will, so a broken certificate is found by `check-config`
        // rather than on the first connection.
        let mut anchors = RootCertStore::empty();
        for (index, item) in CertificateDer::pem_slice_iter(text.as_bytes()).enumerate() {
            let certificate = item
                .map_err(|err| err.to_string())
                .and_then(|certificate| {
                    anchors
                        .add(certificate.clone())
                        .map(|()| certificate)
                        .map_err(|err| err.to_string())
                })
                .map_err(|err| {
                    format!(
                        "{path:?}: certificate {} cannot be used as a CA ({err})",
                        index + 1
                    )
                })?;
            certificates.push(certificate);
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

    #[test]
    fn certificates_are_read_in_order() {
        let (a, b) = (
            crate::test_support::private_ca_pem(),
            crate::test_support::private_ca_pem(),
        );
        let bundle = CaBundle::from_pem("/ca.pem", &format!("junk\n{a}\n{b}")).unwrap();
        assert_eq!(bundle.certificates.len(), 2);
        assert_eq!(bundle.path, PathBuf::from("/ca.pem"));
    }

    #[test]
    fn a_file_without_usable_certificates_is_refused() {
        let message = CaBundle::from_pem("/ca.pem", "not a certificate\n").unwrap_err();
        assert!(message.contains("holds no PEM certificate"), "{message}");
        assert!(message.contains("/ca.pem"), "{message}");
        let garbage =
            "-----BEGIN CERTIFICATE-----\nMIIBejCCASCgAwIBAgIUSJQv\n-----END CERTIFICATE-----\n";
        let message = CaBundle::from_pem("/ca.pem", garbage).unwrap_err();
        assert!(
            message.contains("certificate 1 cannot be used as a CA"),
            "{message}"
        );
    }
}
