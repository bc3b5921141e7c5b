//! How token-endpoint answers are classified, end to end: [`PleoOAuth`] against a tiny axum
//! server on 127.0.0.1:0 that answers with a chosen status, headers and body.
//!
//! The rule (README, "Tokens and refresh"): only a 4xx is Pleo's verdict on the grant
//! ([`TokenError::Rejected`], which ends the session). A 4xx without a JSON `error` string is
//! still a verdict, named `http_<status>`. 5xx, 429 and 3xx are transient whatever their body
//! says, as are network errors and timeouts; a 2xx that is not a token response is invalid (and
//! transient too, for the refresh).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, http::Response, routing::post};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use super::{PleoOAuth, TokenEndpoint, TokenError};
use crate::config::Config;

/// A client for the authorisation server at `auth_url`, with `pleo.request_timeout`.
fn client(auth_url: &str, request_timeout: &str) -> PleoOAuth {
    let env: HashMap<String, String> = [
        ("PLEO__AUTH_URL", auth_url),
        ("PLEO__CLIENT_ID", "oauth-tests"),
        ("PLEO__CLIENT_SECRET", "oauth-tests-secret"),
        ("PLEO__SCOPES", "users:read"),
        ("PLEO__REQUEST_TIMEOUT", request_timeout),
        ("SESSION__STORE", "memory"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("PLEO_GATEWAY__{k}"), v.to_owned()))
    .collect();
    PleoOAuth::new(&Config::load_with_env(None, &env).unwrap()).unwrap()
}

/// Serves `router` on a free port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// An authorisation server whose token endpoint always answers `status` with `headers` and
/// `body`.
async fn answering(status: u16, headers: &[Header], body: &'static str) -> PleoOAuth {
    let headers = headers.to_vec();
    let router = Router::new().route(
        "/oauth/token",
        post(move || async move {
            let mut response = Response::builder().status(status);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).unwrap()
        }),
    );
    client(&serve(router).await, "5s")
}

/// A response header: name, value.
type Header = (&'static str, &'static str);

const JSON: Header = ("content-type", "application/json");

async fn refresh(oauth: &PleoOAuth) -> Result<super::TokenSet, TokenError> {
    // Through the seam the refresh protocol uses.
    TokenEndpoint::refresh(oauth, &SecretString::from("rt-0")).await
}

fn rejection(result: Result<super::TokenSet, TokenError>) -> String {
    match result {
        Err(TokenError::Rejected { error }) => error,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn transient(result: Result<super::TokenSet, TokenError>) -> String {
    match result {
        Err(e @ TokenError::Unavailable(_)) => e.to_string(),
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_response_is_read_and_the_refresh_token_sent() {
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let router = Router::new().route(
        "/oauth/token",
        post({
            let seen = Arc::clone(&seen);
            move |body: String| async move {
                *seen.lock().unwrap() = body;
                Response::builder()
                    .header(JSON.0, JSON.1)
                    .body(Body::from(
                        r#"{"access_token":"at-1","refresh_token":"rt-1","token_type":"bearer",
                            "expires_in":3600,"scope":"users:read"}"#,
                    ))
                    .unwrap()
            }
        }),
    );
    let oauth = client(&serve(router).await, "5s");
    let tokens = refresh(&oauth).await.unwrap();
    assert_eq!(tokens.access_token.expose_secret(), "at-1");
    assert_eq!(tokens.refresh_token.unwrap().expose_secret(), "rt-1");
    assert_eq!(tokens.expires_in, Some(Duration::from_secs(3600)));
    assert_eq!(tokens.scopes, Some(vec!["users:read".to_owned()]));
    let body = seen.lock().unwrap().clone();
    assert!(body.contains("grant_type=refresh_token"), "{body}");
    assert!(body.contains("refresh_token=rt-0"), "{body}");
}

#[tokio::test]
async fn invalid_grant_is_a_rejection() {
    let oauth = answering(
        400,
        &[JSON],
        r#"{"error":"invalid_grant","error_description":"refresh token reused"}"#,
    )
    .await;
    assert_eq!(rejection(refresh(&oauth).await), "invalid_grant");
}

#[tokio::test]
async fn an_oauth_error_in_any_4xx_is_a_rejection_by_its_code() {
    let oauth = answering(401, &[JSON], r#"{"error":"invalid_client"}"#).await;
    assert_eq!(rejection(refresh(&oauth).await), "invalid_client");
}

#[tokio::test]
async fn a_4xx_without_a_json_error_is_a_rejection_named_by_its_status() {
    // An HTML error page, an empty body, JSON without `error`, and a non-string `error`.
    let cases: [(u16, &[Header], &str); 4] = [
        (
            400,
            &[("content-type", "text/html")],
            "<h1>Bad Request</h1>",
        ),
        (403, &[], ""),
        (400, &[JSON], r#"{"message":"no"}"#),
        (404, &[JSON], r#"{"error":42}"#),
    ];
    for (status, headers, body) in cases {
        let oauth = answering(status, headers, body).await;
        assert_eq!(
            rejection(refresh(&oauth).await),
            format!("http_{status}"),
            "{status} {body:?}"
        );
    }
}

#[tokio::test]
async fn too_many_requests_is_transient_whatever_the_body_says() {
    let oauth = answering(
        429,
        &[JSON, ("retry-after", "5")],
        r#"{"error":"invalid_grant"}"#,
    )
    .await;
    assert!(transient(refresh(&oauth).await).contains("HTTP 429"));
}

#[tokio::test]
async fn server_errors_are_transient_whatever_the_body_says() {
    for status in [500, 502, 503, 504] {
        let oauth = answering(status, &[JSON], r#"{"error":"invalid_grant"}"#).await;
        let shown = transient(refresh(&oauth).await);
        assert!(shown.contains(&format!("HTTP {status}")), "{shown}");
    }
}

#[tokio::test]
async fn redirects_are_transient_and_never_followed() {
    let followed = Arc::new(AtomicUsize::new(0));
    for status in [301u16, 302, 307, 308] {
        let router = Router::new()
            .route(
                "/oauth/token",
                post(move || async move {
                    Response::builder()
                        .status(status)
                        .header("location", "/elsewhere/oauth/token")
                        .body(Body::empty())
                        .unwrap()
                }),
            )
            .route(
                "/elsewhere/oauth/token",
                post({
                    let followed = Arc::clone(&followed);
                    move || async move {
                        followed.fetch_add(1, Ordering::SeqCst);
                        r#"{"access_token":"at-x","token_type":"bearer"}"#
                    }
                }),
            );
        let oauth = client(&serve(router).await, "5s");
        let shown = transient(refresh(&oauth).await);
        assert!(shown.contains(&format!("HTTP {status}")), "{shown}");
    }
    assert_eq!(followed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_2xx_that_is_not_a_token_response_is_invalid() {
    let oauth = answering(200, &[JSON], r#"{"hello":"world"}"#).await;
    let result = refresh(&oauth).await;
    assert!(
        matches!(result, Err(TokenError::InvalidResponse(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn no_answer_within_the_request_timeout_is_a_timeout() {
    let router = Router::new().route(
        "/oauth/token",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "too late"
        }),
    );
    // A real 200 ms: reqwest's deadline against a server that does not answer.
    let oauth = client(&serve(router).await, "200ms");
    let result = refresh(&oauth).await;
    assert!(matches!(result, Err(TokenError::Timeout)), "{result:?}");
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let oauth = client(&format!("http://{addr}"), "5s");
    transient(refresh(&oauth).await);
}
