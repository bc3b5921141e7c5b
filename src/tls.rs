//! TLS for the outbound connections: which certificate authorities the clients for Pleo
//! (`pleo.ca_file`) and for the app (`proxy.ca_file`) trust, and how a failure to verify a
//! certificate is told apart in the logs.
//!
//! Both clients verify against the built-in Mozilla roots (`webpki-roots`, compiled in, so the
//! distroless image needs no CA store). A configured bundle is trusted *in addition*: a
//! private CA or a TLS-inspecting corporate proxy becomes reachable, and nothing that was
//! reachable before stops being so. Certificates are always verified; there is no switch to
//! turn verification off.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use crate::config::CaBundle;

/// What the logs add when a connection failed on an untrusted certificate.
pub const UNTRUSTED_HINT: &str = "the server's certificate is not trusted: if it comes from a \
    private CA or a TLS-inspecting proxy, put that CA in pleo.ca_file (Pleo) or proxy.ca_file \
    (the app)";

/// `builder` (a reqwest client for Pleo) trusting `bundle`'s CAs as well as the built-in roots.
pub fn trust_in_reqwest(
    mut builder: reqwest::ClientBuilder,
    bundle: Option<&CaBundle>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    if let Some(bundle) = bundle {
        for (index, der) in bundle.certificates.iter().enumerate() {
            let certificate = reqwest::Certificate::from_der(der.as_ref()).map_err(|e| {
                anyhow::anyhow!(
                    "{}: certificate {} cannot be used: {e}",
                    bundle.path.display(),
                    index + 1
                )
            })?;
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder)
}

/// A rustls client configuration trusting the built-in roots and `bundle`'s CAs (for the
/// hyper client of the app). ALPN is left to the connector.
pub fn client_config(bundle: &CaBundle) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (index, der) in bundle.certificates.iter().enumerate() {
        roots.add(der.clone()).map_err(|e| {
            anyhow::anyhow!(
                "{}: certificate {} cannot be used as a CA: {e}",
                bundle.path.display(),
                index + 1
            )
        })?;
    }
    // The same provider as every other TLS client in the process (see
    // `telemetry::install_crypto_provider`), named here so this works before it is installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether `error` (anywhere in its chain, including inside I/O errors) is rustls refusing the
/// peer's certificate.
pub fn is_untrusted_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(rustls::Error::InvalidCertificate(_)) = cause.downcast_ref::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps (the TLS connectors wrap rustls's error
        // in one or two of them), so step inside it directly.
        source = match cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_chain_names_the_cause() {
        let inner = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(is_untrusted_certificate(&inner));
        let text = crate::error::chain(&inner);
        assert!(text.contains("UnknownIssuer"), "{text}");
        assert!(!is_untrusted_certificate(&std::io::Error::other("refused")));
    }
}
