//! The Pleo API proxy: what goes out to Pleo, and what never does.

use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::support::{Options, SESSION_COOKIE, StoreKind, TestEnv, json_body, sha256_hex};

/// The proxied request carries the gateway's bearer token and nothing of the browser's
/// credentials; method, path, query, end-to-end headers and body are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxied_request_carries_only_the_gateway_bearer_token() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    let session = browser.cookie(SESSION_COOKIE).expect("session cookie");
    let access_token = env.tap.issued()[0].access_token.clone();

    let body = serde_json::to_vec(&json!({
        "name": "Quarterly export",
        "items": [1, 2, 3],
        "note": "ünïcödé"
    }))
    .unwrap();
    let response = browser
        .send(
            browser
                .post("/pleo/echo/v3/export-jobs?company_id=42&tag=a%20b&tag=c")
                .header(
                    header::COOKIE,
                    format!("theme=dark; {SESSION_COOKIE}={session}"),
                )
                .header(header::AUTHORIZATION, "Bearer spoofed-by-the-browser")
                .header("X-CSRF", "1")
                .header("X-Pleo-Subject", "urn:pleo:company:spoofed")
                .header("X-Pleo-Scopes", "everything:write")
                .header("X-Forwarded-For", "203.0.113.7")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .header("X-Client-Trace", "keep-me")
                .body(body.clone()),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_body(response).await;

    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/v3/export-jobs");
    assert_eq!(echo["query"], "company_id=42&tag=a%20b&tag=c");
    assert_eq!(echo["body_bytes"], body.len());
    assert_eq!(echo["body_sha256"], sha256_hex(&body));

    let headers = echo["headers"].as_object().expect("headers object");
    assert_eq!(
        headers["authorization"],
        format!("Bearer {access_token}"),
        "exactly the session's access token"
    );
    let authorizations = echo["header_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == "authorization")
        .count();
    assert_eq!(authorizations, 1, "one Authorization header");
    for name in headers.keys() {
        assert!(
            !name.starts_with("x-pleo-") && !name.starts_with("x_pleo_"),
            "identity header {name} went to Pleo"
        );
    }
    for gone in ["cookie", "x-csrf", "x-forwarded-for"] {
        assert!(
            !headers.contains_key(gone),
            "{gone} went to Pleo: {headers:?}"
        );
    }
    let all = echo.to_string();
    assert!(!all.contains(&session), "the session id went to Pleo");
    assert!(!all.contains("spoofed"), "a spoofed value went to Pleo");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["accept"], "application/json");
    assert_eq!(headers["x-client-trace"], "keep-me");
}

/// Every method reaches Pleo as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn methods_and_queries_are_forwarded_unchanged() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    for method in [
        Method::GET,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        let response = browser
            .send(
                browser
                    .request(method.clone(), "/pleo/echo/items/7?expand=vendor")
                    .header("X-CSRF", "1"),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        let echo = json_body(response).await;
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["path"], "/echo/items/7");
        assert_eq!(echo["query"], "expand=vendor");
    }
}

/// Unsafe methods need `X-CSRF`; without it the gateway answers 403 and Pleo sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsafe_method_without_csrf_header_never_reaches_pleo() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    let before = env.mock.stats().api_requests;
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let response = browser
            .send(
                browser
                    .request(method.clone(), "/pleo/echo/v3/export-jobs")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body("{}"),
            )
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method}");
        assert_eq!(json_body(response).await["error"], "csrf_header_missing");
    }
    let empty = browser
        .send(browser.post("/pleo/echo/x").header("X-CSRF", "").body("{}"))
        .await;
    assert_eq!(
        empty.status(),
        StatusCode::FORBIDDEN,
        "an empty X-CSRF is no X-CSRF"
    );
    assert_eq!(
        env.mock.stats().api_requests,
        before,
        "nothing reached Pleo"
    );

    // Logout is unsafe too: without the header the session stays.
    let logout = browser.send(browser.post("/auth/logout")).await;
    assert_eq!(logout.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        browser.send(browser.get("/auth/session")).await.status(),
        StatusCode::OK
    );
}

/// Without a session the proxy answers 401 with the login URL and calls nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_without_session_is_401_with_login_url() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    let response = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = json_body(response).await;
    assert_eq!(body["error"], "not_authenticated");
    assert!(
        body["login_url"]
            .as_str()
            .is_some_and(|url| url.starts_with("/auth/login")),
        "{body}"
    );
    // A cookie of the right shape that names no session is no better.
    let forged = browser
        .send(browser.get("/pleo/v2/employees").header(
            header::COOKIE,
            format!("{SESSION_COOKIE}={}", "A".repeat(43)),
        ))
        .await;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(env.mock.stats().api_requests, 0);
}

/// Pleo's `Set-Cookie` never reaches the browser, and responses are marked private.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxied_responses_are_private_and_carry_no_session_cookie() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    let response = browser.send(browser.get("/pleo/v1/introspect")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(response.headers()[header::CACHE_CONTROL], "private");
    let body = json_body(response).await;
    assert_eq!(body["data"]["authMethod"], "OAUTH2");
}

/// Forward-auth: `/auth/check` is 200 with the identity headers for a live session and 401
/// without one; for an unsafe original method (`X-Forwarded-Method` / `X-Original-Method`) it
/// applies the CSRF rule like the proxy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_auth_check_gives_identity_and_applies_csrf_to_unsafe_methods() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let anonymous = env.browser();
    let response = anonymous.send(anonymous.get("/auth/check")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let browser = env.browser();
    browser.login().await;
    let response = browser.send(browser.get("/auth/check")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["x-pleo-subject"]
            .to_str()
            .unwrap()
            .starts_with("urn:pleo:company:")
    );
    assert!(response.headers().contains_key("x-pleo-scopes"));

    for header in ["x-forwarded-method", "x-original-method"] {
        let forged = browser
            .send(browser.get("/auth/check").header(header, "POST"))
            .await;
        assert_eq!(
            forged.status(),
            StatusCode::FORBIDDEN,
            "{header} without X-CSRF"
        );
        let allowed = browser
            .send(
                browser
                    .get("/auth/check")
                    .header(header, "POST")
                    .header("x-csrf", "1"),
            )
            .await;
        assert_eq!(allowed.status(), StatusCode::OK, "{header} with X-CSRF");
    }
}
