//! `pleo.ca_file` and `proxy.ca_file`: the outbound clients (Pleo's API for the gateway's own
//! calls and for proxied ones, Pleo's token endpoint, the app) against an HTTPS server whose certificate a private CA made by the test
//! signed. Without the CA configured each call fails as an untrusted certificate (and the token
//! client's error names the keys to set); with it each succeeds.

use std::{collections::HashMap, io::Write, time::Duration};

use axum::{Json, Router, routing::get, routing::post};
use secrecy::SecretString;
use serde_json::json;

use pleo_gateway::{
    config::Config,
    error::GatewayError,
    pleo_api::PleoApi,
    tls::{UNTRUSTED_HINT, is_untrusted_certificate},
    token::{PleoOAuth, TokenError},
    upstream::UpstreamClient,
};

/// A configuration whose Pleo and app are `base` (an https:// URL), trusting `ca_file` if given.
fn config(base: &str, ca_file: Option<&std::path::Path>) -> Config {
    let mut env: HashMap<String, String> = [
        ("PLEO__AUTH_URL", base),
        ("PLEO__API_URL", base),
        ("PLEO__CLIENT_ID", "tls-tests"),
        ("PLEO__CLIENT_SECRET", "tls-tests-secret"),
        ("PLEO__SCOPES", "users:read"),
        ("PROXY__UPSTREAM", base),
        ("SESSION__STORE", "memory"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("PLEO_GATEWAY__{k}"), v.to_owned()))
    .collect();
    if let Some(path) = ca_file {
        for key in ["PLEO__CA_FILE", "PROXY__CA_FILE"] {
            env.insert(format!("PLEO_GATEWAY__{key}"), path.display().to_string());
        }
    }
    Config::load_with_env(None, &env).unwrap()
}

/// Pleo's `/v1/introspect` and token endpoint, and an app page, on one HTTPS server.
fn router() -> Router {
    Router::new()
        .route(
            "/v1/introspect",
            get(|| async {
                Json(json!({"data": {"subjectURN": "urn:pleo:company:tls", "scope": "users:read"}}))
            }),
        )
        .route(
            "/oauth/token",
            post(|| async {
                Json(json!({
                    "access_token": "at", "refresh_token": "rt",
                    "token_type": "Bearer", "expires_in": 900
                }))
            }),
        )
        .route("/app", get(|| async { "app" }))
}

#[tokio::test]
async fn every_outbound_client_trusts_the_configured_ca_and_only_then() {
    let ca = private_ca();
    let address = serve_tls(router(), ca.server.clone()).await;
    let base = format!("https://{address}");
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(ca.ca_pem.as_bytes()).unwrap();

    // Without the CA: every call fails, recognisably as an untrusted certificate.
    let untrusted = config(&base, None);
    let error = PleoApi::new(&untrusted.pleo)
        .unwrap()
        .introspect("token")
        .await
        .unwrap_err();
    let reqwest_error = error.downcast_ref::<reqwest::Error>().unwrap();
    assert!(is_untrusted_certificate(reqwest_error), "{error:?}");
    match PleoOAuth::new(&untrusted)
        .unwrap()
        .refresh(&SecretString::from("rt"))
        .await
    {
        Err(TokenError::Unavailable(message)) => {
            assert!(message.contains(UNTRUSTED_HINT), "{message}");
            assert!(message.contains("certificate"), "{message}");
        }
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
    let app = |config: &Config| {
        UpstreamClient::new(
            config.proxy.upstream.as_ref().unwrap(),
            Duration::from_secs(5),
            4,
            config.proxy.ca_file.as_ref(),
        )
        .unwrap()
    };
    let request = || {
        http::Request::get(format!("{base}/app"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    assert!(matches!(
        app(&untrusted).send(request(), None).await,
        Err(GatewayError::UpstreamUnreachable)
    ));
    // A proxied call (`{pleo_prefix}/…`) goes through a pool of its own.
    let proxied = |api: PleoApi| async move {
        let uri = api.uri("/v1/introspect", None).unwrap();
        let mut request = http::Request::new(axum::body::Body::empty());
        *request.uri_mut() = uri;
        api.forward(request, "token")
            .await
            .map(|(response, _sent_headers)| response)
    };
    assert!(matches!(
        proxied(PleoApi::new(&untrusted.pleo).unwrap()).await,
        Err(GatewayError::PleoUnreachable)
    ));

    // With the CA in pleo.ca_file and proxy.ca_file: every call succeeds.
    let trusted = config(&base, Some(ca_file.path()));
    let identity = PleoApi::new(&trusted.pleo)
        .unwrap()
        .introspect("token")
        .await
        .unwrap();
    assert_eq!(identity.subject, "urn:pleo:company:tls");
    let tokens = PleoOAuth::new(&trusted)
        .unwrap()
        .refresh(&SecretString::from("rt"))
        .await
        .unwrap();
    assert_eq!(tokens.expires_in, Some(Duration::from_secs(900)));
    let response = app(&trusted).send(request(), None).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let response = proxied(PleoApi::new(&trusted.pleo).unwrap()).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
}

/// A private certificate authority made for one test, and a server configuration whose
/// certificate (for `127.0.0.1` and `localhost`) it signed: what `pleo.ca_file` and
/// `proxy.ca_file` are for.
struct PrivateCa {
    /// The CA's certificate, PEM: the contents of a `ca_file`.
    ca_pem: String,
    /// A TLS server configuration presenting the signed certificate.
    server: std::sync::Arc<rustls::ServerConfig>,
}

/// A fresh [`PrivateCa`].
fn private_ca() -> PrivateCa {
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
async fn serve_tls(
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
