//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! `/oauth/authorize` and the consent page.

use super::*;
use crate::mock_pleo::consent_request_id;

/// Asserts the reply redirects back with `error` and the original state.
fn assert_redirect_error(reply: &Reply, error: &str) {
    let params = reply.redirect_params();
    assert_eq!(
        params.get("error").map(String::as_str),
        Some(error),
        "{params:?}"
    );
    assert_eq!(params.get("state").map(String::as_str), Some("st4te"));
    assert!(!params.contains_key("code"));
}

/// Asserts an HTML error page and, above all, no redirect.
fn assert_error_page(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.header(header::LOCATION).is_none());
    assert!(
        reply
            .header(header::CONTENT_TYPE)
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn auto_approve_redirects_to_the_registered_uri_with_code_and_state() {
    let mock = mock_with(true);
    let reply = authorize(&mock, &[]).await;
    let location = reply.header(header::LOCATION).unwrap();
    assert!(
        location.starts_with(&format!("{REDIRECT_URI}?code=")),
        "{location}"
    );
    let code = &reply.redirect_params()["code"];
    // At least 128 bits of randomness, base64url.
    assert!(code.len() >= 22, "{code}");
}

#[tokio::test]
async fn unregistered_redirect_uri_shows_an_error_page_not_a_redirect() {
    let mock = mock_with(true);
    for uri in [
        "http://evil.example/callback",
        "http://127.0.0.1:8080/auth/callback/",
        "http://127.0.0.1:8080/auth/callback?x=1",
    ] {
        assert_error_page(&authorize(&mock, &[("redirect_uri", Some(uri))]).await);
    }
    assert_error_page(&authorize(&mock, &[("redirect_uri", None)]).await);
}

#[tokio::test]
async fn unknown_client_shows_an_error_page() {
    let mock = mock_with(true);
    assert_error_page(&authorize(&mock, &[("client_id", Some("nobody"))]).await);
    assert_error_page(&authorize(&mock, &[("client_id", None)]).await);
}

#[tokio::test]
async fn plain_pkce_is_rejected() {
    let mock = mock_with(true);
    let plain = authorize(&mock, &[("code_challenge_method", Some("plain"))]).await;
    assert_redirect_error(&plain, "invalid_request");
    // No method means plain (RFC 7636 §4.3): rejected just the same.
    let absent = authorize(&mock, &[("code_challenge_method", None)]).await;
    assert_redirect_error(&absent, "invalid_request");
}

#[tokio::test]
async fn missing_or_malformed_challenge_is_rejected() {
    let mock = mock_with(true);
    assert_redirect_error(
        &authorize(&mock, &[("code_challenge", None)]).await,
        "invalid_request",
    );
    assert_redirect_error(
        &authorize(&mock, &[("code_challenge", Some("too-short"))]).await,
        "invalid_request",
    );
}

#[tokio::test]
async fn missing_state_is_rejected() {
    let mock = mock_with(true);
    let reply = authorize(&mock, &[("state", None)]).await;
    let params = reply.redirect_params();
    assert_eq!(params["error"], "invalid_request");
    assert!(!params.contains_key("code"));
}

#[tokio::test]
async fn other_request_errors_redirect_with_the_right_code() {
    let mock = mock_with(true);
    assert_redirect_error(
        &authorize(&mock, &[("response_type", Some("token"))]).await,
        "unsupported_response_type",
    );
    assert_redirect_error(
        &authorize(&mock, &[("scope", Some(""))]).await,
        "invalid_scope",
    );
    assert_redirect_error(&authorize(&mock, &[("scope", None)]).await, "invalid_scope");
    assert_redirect_error(
        &authorize(
            &mock,
            &[("urn_pleo_params_oauth_subject", Some("urn:evil:x"))],
        )
        .await,
        "invalid_request",
    );
}

#[tokio::test]
async fn subject_parameter_becomes_the_grant_subject() {
    let mock = mock_with(true);
    let subject = "urn:pleo:organisation:0c2e3d4f-1111-4222-8333-944455566677";
    let code = obtain_code(&mock, &[("urn_pleo_params_oauth_subject", Some(subject))]).await;
    let access = exchange_code(&mock, &code).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let whoami = api_get(&mock, "/v1/introspect", Some(&access)).await.json();
    assert_eq!(whoami["data"]["subjectURN"], subject);
}

/// Shows the consent page and returns the parked request id.
async fn consent(mock: &MockPleo) -> String {
    let page = authorize(mock, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header(header::CACHE_CONTROL), Some("no-store"));
    let html = page.text();
    assert!(html.contains("Pleo Gateway Demo"), "{html}");
    assert!(html.contains("users:read") && html.contains("export-jobs:read"));
    assert!(html.contains(super::super::DEFAULT_SUBJECT_URN));
    // The form must carry only the opaque id, not the request parameters.
    assert!(!html.contains(CHALLENGE) && !html.contains("st4te"));
    consent_request_id(&html).unwrap().to_owned()
}

async fn decide(mock: &MockPleo, request_id: &str, decision: &str) -> Reply {
    post_form(
        mock,
        "/oauth/authorize/decision",
        None,
        &[("request_id", request_id), ("decision", decision)],
    )
    .await
}

#[tokio::test]
async fn consent_approve_redirects_with_a_working_code() {
    let mock = mock_with(false);
    let request_id = consent(&mock).await;
    let params = decide(&mock, &request_id, "approve")
        .await
        .redirect_params();
    assert_eq!(params["state"], "st4te");
    let reply = exchange_code(&mock, &params["code"]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn consent_deny_redirects_with_access_denied() {
    let mock = mock_with(false);
    let request_id = consent(&mock).await;
    let reply = decide(&mock, &request_id, "deny").await;
    assert_redirect_error(&reply, "access_denied");
    assert!(reply.redirect_params().contains_key("error_description"));
}

#[tokio::test]
async fn consent_decision_is_single_use_and_needs_a_known_id() {
    let mock = mock_with(false);
    let request_id = consent(&mock).await;
    decide(&mock, &request_id, "approve")
        .await
        .redirect_params();
    assert_error_page(&decide(&mock, &request_id, "approve").await);
    assert_error_page(&decide(&mock, "forged", "approve").await);
}
