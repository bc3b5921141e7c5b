//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! `/oauth/token` and `/oauth/token/introspect`.

use super::*;

fn assert_oauth_error(reply: &Reply, status: StatusCode, error: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.json()["error"], error, "{}", reply.text());
}

#[tokio::test]
async fn code_exchange_with_the_right_verifier_succeeds() {
    let mock = mock_with(true);
    let code = obtain_code(&mock, &[]).await;
    let reply = exchange_code(&mock, &code).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header(header::CACHE_CONTROL), Some("no-store"));
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 15 * 60);
    assert_eq!(body["scope"], "users:read export-jobs:read");
    let access = body["access_token"].as_str().unwrap();
    // Opaque, not a JWT.
    assert!(!access.contains('.') && access.len() >= 43);
    assert_ne!(body["refresh_token"], body["access_token"]);
    assert_eq!(mock.stats().authorization_code_grants, 1);
}

#[tokio::test]
async fn wrong_missing_or_plain_verifier_is_invalid_grant() {
    let mock = mock_with(true);
    let wrong = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX";
    for verifier in [Some(wrong), Some(CHALLENGE), None] {
        let code = obtain_code(&mock, &[]).await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
        ];
        form.extend(verifier.map(|v| ("code_verifier", v)));
        assert_oauth_error(
            &token_request(&mock, &form).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        );
    }
}

#[tokio::test]
async fn redirect_uri_must_match_the_authorization_request() {
    let mock = mock_with(true);
    let code = obtain_code(&mock, &[]).await;
    let reply = token_request(
        &mock,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:8080/other"),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn code_is_single_use_and_replay_revokes_its_tokens() {
    let mock = mock_with(true);
    let code = obtain_code(&mock, &[]).await;
    let first = exchange_code(&mock, &code).await.json();
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(
        api_get(&mock, "/v1/introspect", Some(access)).await.status,
        StatusCode::OK
    );

    let replay = exchange_code(&mock, &code).await;
    assert_oauth_error(&replay, StatusCode::BAD_REQUEST, "invalid_grant");
    let status = api_get(&mock, "/v1/introspect", Some(access)).await.status;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refresh_token = first["refresh_token"].as_str().unwrap();
    assert_oauth_error(
        &refresh(&mock, refresh_token).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
}

#[tokio::test]
async fn expired_code_is_invalid_grant() {
    let mock = MockPleo::new(MockPleoConfig {
        auto_approve: true,
        code_ttl: Duration::ZERO,
        ..MockPleoConfig::default()
    });
    let code = obtain_code(&mock, &[]).await;
    assert_oauth_error(
        &exchange_code(&mock, &code).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_grant() {
    let mock = mock_with(true);
    let (access1, refresh1) = login(&mock).await;

    let rotated = refresh(&mock, &refresh1).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
    assert_eq!(rotated.header(header::CACHE_CONTROL), Some("no-store"));
    let body = rotated.json();
    let access2 = body["access_token"].as_str().unwrap().to_owned();
    let refresh2 = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh1, refresh2);

    // The old access token dies at once; the new one works.
    let old = api_get(&mock, "/v1/introspect", Some(&access1)).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let new = api_get(&mock, "/v1/introspect", Some(&access2)).await;
    assert_eq!(new.status, StatusCode::OK);

    // Replaying the rotated refresh token fails and takes the whole grant down.
    assert_oauth_error(
        &refresh(&mock, &refresh1).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    assert_oauth_error(
        &refresh(&mock, &refresh2).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    let after = api_get(&mock, "/v1/introspect", Some(&access2)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);

    let stats = mock.stats();
    assert_eq!(stats.refresh_token_grants, 1);
    assert_eq!(stats.reuse_detections, 1);
    assert_eq!(stats.refresh_failures, 2);
    assert_eq!(stats.token_requests, 4);
}

#[tokio::test]
async fn unknown_refresh_token_is_invalid_grant() {
    let mock = mock_with(true);
    assert_oauth_error(
        &refresh(&mock, "nope").await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    assert_eq!(mock.stats().reuse_detections, 0);
    assert_eq!(mock.stats().refresh_failures, 1);
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client() {
    let mock = mock_with(true);
    let (_, refresh_token) = login(&mock).await;
    let reply = post_form(
        &mock,
        "/oauth/token",
        Some((CLIENT_ID, "wrong")),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
        ],
    )
    .await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(
        reply
            .header(header::WWW_AUTHENTICATE)
            .unwrap()
            .starts_with("Basic")
    );
    // The failed attempt did not consume the refresh token.
    assert_eq!(refresh(&mock, &refresh_token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn client_secret_in_the_body_is_rejected() {
    let mock = mock_with(true);
    let code = obtain_code(&mock, &[]).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", VERIFIER),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    let reply = post_form(&mock, "/oauth/token", None, &form).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(reply.header(header::WWW_AUTHENTICATE).is_some());
    // Even alongside correct Basic credentials.
    let reply = post_form(
        &mock,
        "/oauth/token",
        Some((CLIENT_ID, CLIENT_SECRET)),
        &form,
    )
    .await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn public_client_uses_client_id_in_the_body() {
    let mock = mock_with(true);
    let changes = [
        ("client_id", Some(PUBLIC_CLIENT_ID)),
        ("redirect_uri", Some(PUBLIC_REDIRECT_URI)),
    ];
    let code = obtain_code(&mock, &changes).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", PUBLIC_REDIRECT_URI),
        ("code_verifier", VERIFIER),
        ("client_id", PUBLIC_CLIENT_ID),
    ];
    let reply = post_form(&mock, "/oauth/token", None, &form).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // A confidential client cannot do the same.
    let code = obtain_code(&mock, &[]).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", VERIFIER),
        ("client_id", CLIENT_ID),
    ];
    let reply = post_form(&mock, "/oauth/token", None, &form).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn malformed_token_requests_are_rejected() {
    let mock = mock_with(true);
    let json = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, basic(CLIENT_ID, CLIENT_SECRET))
        .body(Body::from(r#"{"grant_type":"refresh_token"}"#))
        .unwrap();
    assert_oauth_error(
        &send(&mock, json).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let reply = token_request(&mock, &[("grant_type", "password")]).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unsupported_grant_type");
}

#[tokio::test]
async fn injected_failure_answers_without_consuming_the_refresh_token() {
    let mock = mock_with(true);
    let (_, refresh_token) = login(&mock).await;
    mock.set_token_failure(Some(503));
    assert_oauth_error(
        &refresh(&mock, &refresh_token).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    );
    mock.set_token_failure(None);
    assert_eq!(refresh(&mock, &refresh_token).await.status, StatusCode::OK);
    assert_eq!(mock.stats().refresh_failures, 0);
}

#[tokio::test]
async fn token_delay_postpones_the_answer() {
    let mock = mock_with(true);
    let (_, refresh_token) = login(&mock).await;
    mock.set_token_delay(Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert_eq!(refresh(&mock, &refresh_token).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn introspection_only_answers_the_owning_client() {
    let mock = mock_with(true);
    let (access, refresh_token) = login(&mock).await;
    let own = post_form(
        &mock,
        "/oauth/token/introspect",
        Some((CLIENT_ID, CLIENT_SECRET)),
        &[("token", &access)],
    )
    .await
    .json();
    assert_eq!(own["active"], true);
    assert_eq!(own["client_id"], CLIENT_ID);
    assert_eq!(own["scope"], "users:read export-jobs:read");
    assert_eq!(
        own["urn:pleo:params:oauth:subject_urn"],
        super::super::DEFAULT_SUBJECT_URN
    );
    assert!(own["exp"].as_u64().unwrap() > own["iat"].as_u64().unwrap());

    let other = post_form(
        &mock,
        "/oauth/token/introspect",
        None,
        &[("token", &refresh_token), ("client_id", PUBLIC_CLIENT_ID)],
    )
    .await
    .json();
    assert_eq!(other, serde_json::json!({ "active": false }));
}
