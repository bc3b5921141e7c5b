//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! Scenario tests of the whole mock through its router (`oneshot`), plus one over a real socket.
//!
//! Shared helpers live here; the scenarios are split by endpoint family.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod authorize;
mod token;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::{MockClient, MockPleo, MockPleoConfig};

const CLIENT_ID: &str = "demo-client";
const CLIENT_SECRET: &str = "demo-secret";
const REDIRECT_URI: &str = "http://127.0.0.1:8080/auth/callback";
const PUBLIC_CLIENT_ID: &str = "spa-client";
const PUBLIC_REDIRECT_URI: &str = "http://localhost:3000/callback";
/// The RFC 7636 appendix B pair.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// A response reduced to what the tests look at.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query parameters of the `Location` this reply redirects to.
    fn redirect_params(&self) -> HashMap<String, String> {
        assert_eq!(
            self.status,
            StatusCode::FOUND,
            "expected a redirect: {}",
            self.text()
        );
        let location = url::Url::parse(self.header(header::LOCATION).unwrap()).unwrap();
        location.query_pairs().into_owned().collect()
    }
}

/// The default demo client plus a public client, with auto-approve as asked.
fn mock_with(auto_approve: bool) -> MockPleo {
    let mut config = MockPleoConfig {
        auto_approve,
        ..MockPleoConfig::default()
    };
    config.clients.push(MockClient {
        client_id: PUBLIC_CLIENT_ID.to_owned(),
        client_secret: None,
        redirect_uris: vec![PUBLIC_REDIRECT_URI.to_owned()],
    });
    MockPleo::new(config)
}

async fn send(mock: &MockPleo, request: Request<Body>) -> Reply {
    let response = mock.router().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// The standard authorisation request parameters with `changes` applied (`None` removes).
fn authorize_uri(changes: &[(&str, Option<&str>)]) -> String {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "users:read export-jobs:read"),
        ("state", "st4te"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    for (name, value) in changes {
        params.retain(|(n, _)| n != name);
        if let Some(value) = value {
            params.push((name, value));
        }
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    format!("/oauth/authorize?{query}")
}

async fn authorize(mock: &MockPleo, changes: &[(&str, Option<&str>)]) -> Reply {
    let request = Request::get(authorize_uri(changes))
        .body(Body::empty())
        .unwrap();
    send(mock, request).await
}

/// Runs an auto-approved authorisation request and returns the code.
async fn obtain_code(mock: &MockPleo, changes: &[(&str, Option<&str>)]) -> String {
    let params = authorize(mock, changes).await.redirect_params();
    assert_eq!(params.get("state").map(String::as_str), Some("st4te"));
    params.get("code").cloned().expect("a code")
}

fn basic(client_id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{client_id}:{secret}")))
}

/// POSTs a form to `path` with optional Basic credentials.
async fn post_form(
    mock: &MockPleo,
    path: &str,
    basic_auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Reply {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic_auth {
        request = request.header(header::AUTHORIZATION, basic(id, secret));
    }
    send(mock, request.body(Body::from(body)).unwrap()).await
}

/// A token request from the demo client, authenticated with its secret.
async fn token_request(mock: &MockPleo, form: &[(&str, &str)]) -> Reply {
    post_form(mock, "/oauth/token", Some((CLIENT_ID, CLIENT_SECRET)), form).await
}

async fn exchange_code(mock: &MockPleo, code: &str) -> Reply {
    token_request(
        mock,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", VERIFIER),
        ],
    )
    .await
}

async fn refresh(mock: &MockPleo, refresh_token: &str) -> Reply {
    token_request(
        mock,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// A complete login: returns (access token, refresh token).
async fn login(mock: &MockPleo) -> (String, String) {
    let code = obtain_code(mock, &[]).await;
    let reply = exchange_code(mock, &code).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn api_get(mock: &MockPleo, path: &str, access_token: Option<&str>) -> Reply {
    let mut request = Request::get(path);
    if let Some(token) = access_token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    send(mock, request.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn serve_answers_on_a_real_socket_and_shuts_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mock = mock_with(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mock.clone().serve(listener, async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /_mock/stats HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"token_requests\":0"), "{raw}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}
