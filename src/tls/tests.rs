//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! The three outbound clients (Pleo's API, Pleo's token endpoint, the app) against HTTPS
//! servers whose certificate a private CA made by the test signed: without the CA in
//! `pleo.ca_file` / `proxy.ca_file` each call fails as an untrusted certificate, with it
//! each succeeds.

use std::{collections::HashMap, io::Write, time::Duration};

use axum::{Json, Router, routing::get, routing::post};
use secrecy::SecretString;
use serde_json::json;

use super::{UNTRUSTED_HINT, is_untrusted_certificate};
use crate::{
    config::Config,
    error::GatewayError,
    pleo_api::PleoApi,
    test_support::{private_ca, serve_tls},
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
}

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
