//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! Who gets through to the app: sessions, public paths, the 302/401 rule and the CSRF rule.

use reqwest::{StatusCode, header};

use super::{Harness, echoed};

#[tokio::test]
async fn navigation_without_session_is_redirected_to_login() {
    let h = Harness::start().await;
    let response = h
        .http
        .get(h.url("/reports/q3?sort=desc&page=2"))
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()[header::LOCATION],
        "/auth/login?return_to=%2Freports%2Fq3%3Fsort%3Ddesc%26page%3D2"
    );
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");

    // Old browsers without fetch metadata are judged by Accept.
    let response = h
        .http
        .get(h.url("/"))
        .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn api_call_without_session_gets_401_json_with_login_url() {
    let h = Harness::start().await;
    for request in [
        h.http
            .get(h.url("/api/items?x=1"))
            .header(header::ACCEPT, "application/json"),
        h.http
            .get(h.url("/api/items?x=1"))
            .header("sec-fetch-mode", "cors")
            .header(header::ACCEPT, "text/html"),
        h.http.post(h.url("/api/items?x=1")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_authenticated");
        assert_eq!(
            body["login_url"],
            "/auth/login?return_to=%2Fapi%2Fitems%3Fx%3D1"
        );
    }
    // A dead cookie is no session either.
    let response = h
        .http
        .get(h.url("/api/items"))
        .header(
            header::COOKIE,
            format!("{}={}", h.state.cookies.name, "A".repeat(43)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn public_paths_skip_the_session_and_carry_no_identity() {
    let h = Harness::start().await;
    let cookie = h.login().await;
    for path in [
        "/favicon.ico",
        "/static/app.css?v=3",
        "/static/fonts/a%20b.woff2",
    ] {
        let response = h
            .http
            .get(h.url(path))
            .header(header::COOKIE, format!("theme=dark; {cookie}"))
            .header("x-pleo-subject", "urn:pleo:company:spoofed")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echo["target"], path);
        assert_eq!(echoed(&echo, "x-pleo-subject"), None);
        assert_eq!(echoed(&echo, "cookie").as_deref(), Some("theme=dark"));
    }
}

#[tokio::test]
async fn public_path_tricks_still_need_a_session() {
    let h = Harness::start().await;
    let json = [("Accept", "application/json")];
    for target in [
        "/static/../secret",
        "/static/%2e%2e/secret",
        "/static%2f..%2fsecret",
        "/static/..%2f..%2fsecret",
        "/static/%252e%252e/secret",
        "//static/x",
        "/static//../secret",
        "/static/..;/secret",
        "/favicon.ico;/secret",
        "/secret?/static/x",
    ] {
        let (status, _) = h.raw_get(target, &json).await;
        assert_eq!(status, 401, "{target}");
    }
    for target in [
        "/static/..%5csecret",
        "/static/%00",
        "/static/%c0%ae%c0%ae/x",
        "/static/%zz",
    ] {
        let (status, _) = h.raw_get(target, &json).await;
        assert_eq!(status, 400, "{target}");
    }
    // With a session, the app sees exactly what was sent.
    let cookie = h.login().await;
    let (status, body) = h
        .raw_get("/static/%2e%2e/secret", &[("Cookie", cookie.as_str())])
        .await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""target":"/static/%2e%2e/secret""#),
        "{body}"
    );
}

#[tokio::test]
async fn unsafe_requests_need_same_origin_or_the_csrf_header() {
    let h = Harness::start().await;
    let cookie = h.login().await;
    let post = |extra: &[(&'static str, String)]| {
        let mut request = h
            .http
            .post(h.url("/api/items"))
            .header(header::COOKIE, &cookie);
        for (k, v) in extra {
            request = request.header(*k, v);
        }
        request.send()
    };
    let status = |r: reqwest::Response| r.status();
    assert_eq!(status(post(&[]).await.unwrap()), StatusCode::FORBIDDEN);
    assert_eq!(
        status(
            post(&[("origin", "https://evil.example".into())])
                .await
                .unwrap()
        ),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            post(&[("sec-fetch-site", "same-site".into())])
                .await
                .unwrap()
        ),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(post(&[("x-csrf", "1".into())]).await.unwrap()),
        StatusCode::OK
    );
    assert_eq!(
        status(post(&[("origin", h.origin())]).await.unwrap()),
        StatusCode::OK
    );
    assert_eq!(
        status(
            post(&[("sec-fetch-site", "same-origin".into())])
                .await
                .unwrap()
        ),
        StatusCode::OK
    );
}

#[tokio::test]
async fn gateway_routes_are_not_proxied() {
    let h = Harness::start().await;
    let response = h.http.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "ok");
    let response = h.http.get(h.url("/auth/session")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A session whose company Pleo has not named (introspection failed at login, and Pleo is
/// still unreachable here) never reaches the app: 503 `subject_unknown` with `Retry-After`, and
/// the retry backs off instead of asking Pleo on every request.
#[tokio::test]
async fn a_session_without_a_subject_never_reaches_the_app() {
    let h = Harness::start().await;
    let now = crate::session::now_ms();
    let (id, _) = h
        .state
        .sessions
        .create(crate::session::SessionData {
            access_token: secrecy::SecretString::from(super::PLEO_TOKEN),
            refresh_token: None,
            access_expires_at_ms: now + 3_600_000,
            access_lifetime_ms: 3_600_000,
            subject: None,
            scopes: vec!["users:read".into()],
            created_at_ms: now,
        })
        .await
        .unwrap();
    let cookie = format!("{}={}", h.state.cookies.name, id.as_str());
    for attempt in 0..2 {
        let response = h
            .http
            .get(h.url("/whoami"))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}"
        );
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "subject_unknown");
    }
}
