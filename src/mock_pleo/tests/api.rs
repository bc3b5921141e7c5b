//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! The bearer-protected API and the runtime controls.

use sha2::{Digest, Sha256};

use super::*;

fn assert_unauthorized(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    let challenge = reply.header(header::WWW_AUTHENTICATE).unwrap();
    assert!(challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""));
    assert!(reply.json()["message"].is_string());
}

#[tokio::test]
async fn unknown_or_missing_token_is_401() {
    let mock = mock_with(true);
    assert_unauthorized(&api_get(&mock, "/v1/introspect", Some("made-up")).await);
    assert_unauthorized(&api_get(&mock, "/v2/employees", None).await);
    // A token in the query string does not count.
    let (access, _) = login(&mock).await;
    let query = format!("/v1/introspect?access_token={access}");
    assert_unauthorized(&api_get(&mock, &query, None).await);
    let stats = mock.stats();
    assert_eq!(stats.api_requests, 3);
    assert_eq!(stats.api_unauthorized, 3);
}

#[tokio::test]
async fn introspect_describes_the_grant() {
    let mock = mock_with(true);
    let (access, _) = login(&mock).await;
    let reply = api_get(&mock, "/v1/introspect", Some(&access)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let data = &reply.json()["data"];
    assert_eq!(data["authMethod"], "OAUTH2");
    assert_eq!(data["clientId"], CLIENT_ID);
    assert_eq!(data["scope"], "users:read export-jobs:read");
    assert_eq!(data["applicationName"], "Pleo Gateway Demo");
    assert_eq!(data["subjectURN"], super::super::DEFAULT_SUBJECT_URN);
}

#[tokio::test]
async fn employees_honour_limit_and_cursor() {
    let mock = mock_with(true);
    let (access, _) = login(&mock).await;
    let all = api_get(&mock, "/v2/employees", Some(&access)).await.json();
    let total = all["pagination"]["total"].as_u64().unwrap();
    assert!((5..=10).contains(&total));
    assert_eq!(all["data"].as_array().unwrap().len() as u64, total);
    assert_eq!(all["pagination"]["hasNextPage"], false);

    let page = api_get(&mock, "/v2/employees?limit=3", Some(&access))
        .await
        .json();
    assert_eq!(page["data"].as_array().unwrap().len(), 3);
    assert_eq!(page["pagination"]["hasNextPage"], true);
    assert_eq!(page["pagination"]["hasPreviousPage"], false);
    let cursor = page["pagination"]["endCursor"].as_str().unwrap();
    let next = api_get(
        &mock,
        &format!("/v2/employees?limit=3&after={cursor}"),
        Some(&access),
    )
    .await
    .json();
    assert_eq!(next["data"][0]["id"], all["data"][3]["id"]);
    assert_eq!(next["pagination"]["hasPreviousPage"], true);

    let bad = api_get(&mock, "/v2/employees?limit=abc", Some(&access)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn expired_access_tokens_get_401_until_refreshed() {
    let mock = mock_with(true);
    let (access, refresh_token) = login(&mock).await;
    mock.expire_access_tokens();
    let reply = api_get(&mock, "/v1/introspect", Some(&access)).await;
    assert_unauthorized(&reply);
    assert_eq!(reply.json()["message"], "The JWT token has expired");
    let fresh = refresh(&mock, &refresh_token).await.json();
    let access = fresh["access_token"].as_str().unwrap();
    assert_eq!(
        api_get(&mock, "/v1/introspect", Some(access)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn access_token_ttl_applies_to_new_tokens() {
    let mock = mock_with(true);
    mock.set_access_token_ttl(Duration::ZERO);
    let code = obtain_code(&mock, &[]).await;
    let body = exchange_code(&mock, &code).await.json();
    assert_eq!(body["expires_in"], 0);
    let access = body["access_token"].as_str().unwrap();
    assert_unauthorized(&api_get(&mock, "/v1/introspect", Some(access)).await);
}

#[tokio::test]
async fn deleting_the_installation_revokes_the_grant() {
    let mock = mock_with(true);
    let (access, refresh_token) = login(&mock).await;
    let delete = Request::delete("/v1/installations/me")
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&mock, delete).await.status, StatusCode::NO_CONTENT);
    assert_unauthorized(&api_get(&mock, "/v1/introspect", Some(&access)).await);
    assert_eq!(
        refresh(&mock, &refresh_token).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(mock.stats().installations_deleted, 1);
    assert_eq!(mock.stats().reuse_detections, 0);
}

#[tokio::test]
async fn revoke_all_kills_every_grant() {
    let mock = mock_with(true);
    let (access1, _) = login(&mock).await;
    let (access2, refresh2) = login(&mock).await;
    mock.revoke_all();
    assert_unauthorized(&api_get(&mock, "/v1/introspect", Some(&access1)).await);
    assert_unauthorized(&api_get(&mock, "/v1/introspect", Some(&access2)).await);
    assert_eq!(
        refresh(&mock, &refresh2).await.json()["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn echo_returns_method_path_headers_and_body_digest() {
    let mock = mock_with(true);
    let (access, _) = login(&mock).await;
    let body = vec![7u8; 200_000];
    let request = Request::put("/echo/some/path?a=1&b=two")
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .header("X-Custom", "one")
        .header("x-custom", "two")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(body.clone()))
        .unwrap();
    let reply = send(&mock, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echo = reply.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/some/path");
    assert_eq!(echo["query"], "a=1&b=two");
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {access}"));
    assert_eq!(echo["headers"]["x-custom"], "one, two");
    assert_eq!(echo["headers"]["content-type"], "application/octet-stream");
    assert_eq!(echo["body_bytes"], 200_000);
    let digest: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(echo["body_sha256"], digest);

    assert_unauthorized(&api_get(&mock, "/echo/x", None).await);
}

#[tokio::test]
async fn big_streams_the_requested_number_of_bytes() {
    let mock = mock_with(true);
    let (access, _) = login(&mock).await;
    let n = 3 * 64 * 1024 + 17;
    let reply = api_get(&mock, &format!("/big?bytes={n}"), Some(&access)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header(header::CONTENT_LENGTH),
        Some(n.to_string().as_str())
    );
    assert_eq!(
        reply.header(header::CONTENT_TYPE),
        Some("application/octet-stream")
    );
    assert_eq!(reply.body.len(), n);
    assert!(
        reply
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 256) as u8)
    );

    let too_big = api_get(&mock, "/big?bytes=1073741825", Some(&access)).await;
    assert_eq!(too_big.status, StatusCode::BAD_REQUEST);
    assert_unauthorized(&api_get(&mock, "/big?bytes=10", None).await);
}

#[tokio::test]
async fn stats_are_served_as_json() {
    let mock = mock_with(true);
    login(&mock).await;
    let reply = send(
        &mock,
        Request::get("/_mock/stats").body(Body::empty()).unwrap(),
    )
    .await;
    let stats = reply.json();
    assert_eq!(stats["authorization_code_grants"], 1);
    assert_eq!(stats["token_requests"], 1);
}
