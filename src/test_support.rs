//! Helpers shared by the crate's unit tests (compiled only under `#[cfg(test)]`).

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// A header map from `(name, value)` pairs, appended in order (repeated names are kept).
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// A private certificate authority made for one test, and a server configuration whose
/// certificate (for `127.0.0.1` and `localhost`) it signed: what `pleo.ca_file` and
/// `proxy.ca_file` are for.
pub struct PrivateCa {
    /// The CA's certificate, PEM: the contents of a `ca_file`.
    pub ca_pem: String,
    /// A TLS server configuration presenting the signed certificate.
    pub server: std::sync::Arc<rustls::ServerConfig>,
}

/// A fresh [`PrivateCa`].
pub fn private_ca() -> PrivateCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pleo-gateway test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
    PrivateCa {
        ca_pem: ca_cert.pem(),
        server: std::sync::Arc::new(server),
    }
}

/// Serves `router` over HTTPS (HTTP/1.1) with `tls` on an ephemeral loopback port until the
/// test ends; returns the address.
pub async fn serve_tls(
    router: axum::Router,
    tls: std::sync::Arc<rustls::ServerConfig>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}
