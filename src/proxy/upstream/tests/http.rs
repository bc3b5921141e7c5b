//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! What the app sees and what comes back: headers, cookies, bodies, timeouts.

use axum::body::Bytes;
use futures_util::StreamExt;
use reqwest::{StatusCode, header};

use super::{Harness, PLEO_TOKEN, SUBJECT, echoed, echoed_headers};

#[tokio::test]
async fn the_app_sees_identity_and_none_of_the_gateways_credentials() {
    let h = Harness::start().await;
    let cookie = h.login().await;
    let session_value = cookie.split_once('=').unwrap().1.to_owned();
    let response = h
        .http
        .put(h.url("/api/items/7?tag=a%2Fb&tag=c"))
        .header(header::COOKIE, format!("theme=dark; {cookie}; lang=da"))
        .header(header::AUTHORIZATION, "Bearer app-issued-token")
        .header("X-CSRF", "1")
        .header("X-Pleo-Subject", "urn:pleo:company:spoofed")
        .header("x_pleo_subject", "urn:pleo:company:spoofed")
        .header("X-PLEO-SCOPES", "spoofed:write")
        .header("X-Pleo-Identity", "spoofed.forged.assertion")
        .header("X-Forwarded-For", "203.0.113.66")
        .header("X-Forwarded-Host", "spoofed.example")
        .header("X-Real-IP", "203.0.113.66")
        .header("Forwarded", "for=203.0.113.66")
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let echo: serde_json::Value = response.json().await.unwrap();

    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["target"], "/api/items/7?tag=a%2Fb&tag=c");
    assert_eq!(echoed(&echo, "x-pleo-subject").as_deref(), Some(SUBJECT));
    assert_eq!(
        echoed(&echo, "x-pleo-scopes").as_deref(),
        Some("users:read export-jobs:read")
    );
    assert_eq!(echoed(&echo, "x-request-id"), Some(request_id));
    assert_eq!(
        echoed(&echo, "cookie").as_deref(),
        Some("theme=dark; lang=da")
    );
    assert_eq!(
        echoed(&echo, "authorization").as_deref(),
        Some("Bearer app-issued-token"),
        "the app's own credentials pass"
    );
    assert_eq!(
        echoed(&echo, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(echoed(&echo, "x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(echoed(&echo, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(echoed(&echo, "x-forwarded-host"), Some(h.addr.to_string()));
    assert_eq!(echoed(&echo, "forwarded"), None);
    assert_eq!(echoed(&echo, "x_pleo_subject"), None);
    let all = echo.to_string();
    for secret in [
        session_value.as_str(),
        PLEO_TOKEN,
        "spoofed",
        "203.0.113.66",
    ] {
        assert!(!all.contains(secret), "{secret} reached the app: {all}");
    }
    assert_ne!(
        echoed(&echo, "host"),
        Some(h.addr.to_string()),
        "the app is addressed by its own host; the browser's is in X-Forwarded-Host"
    );
    assert_eq!(
        echoed_headers(&echo)
            .iter()
            .filter(|(k, _)| k.contains("pleo"))
            .count(),
        3,
        "exactly the three identity headers"
    );
    let assertion = echoed(&echo, "x-pleo-identity").expect("a signed identity");
    let verified = h
        .state
        .identity
        .verify(&assertion, crate::session::now_ms())
        .expect("the gateway's own assertion verifies");
    assert_eq!(verified.claims.sub, SUBJECT);
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let h = Harness::start_with(&[("SERVER__TRUSTED_PROXIES", "127.0.0.1")]).await;
    let response = h
        .http
        .get(h.url("/static/x"))
        .header("X-Forwarded-For", "198.51.100.9, 203.0.113.66")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "app.example.com")
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed(&echo, "x-real-ip").as_deref(), Some("203.0.113.66"));
    assert_eq!(
        echoed(&echo, "x-forwarded-for").as_deref(),
        Some("203.0.113.66, 127.0.0.1")
    );
    assert_eq!(echoed(&echo, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        echoed(&echo, "x-forwarded-host").as_deref(),
        Some("app.example.com")
    );
}

#[tokio::test]
async fn the_apps_cookies_pass_but_never_one_named_like_the_gateways() {
    let h = Harness::start().await;
    let cookie = h.login().await;
    let response = h
        .http
        .get(h.url("/set-cookies"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookies: Vec<&str> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["app-pref=compact; Path=/"]);
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const SIZE: usize = 24 << 20;
    let h = Harness::start_with(&[("PROXY__MAX_BODY_BYTES", "32MiB")]).await;
    let cookie = h.login().await;

    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = futures_util::stream::iter(
        (0..SIZE / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let response = h
        .http
        .post(h.url("/upload"))
        .header(header::COOKIE, &cookie)
        .header("x-csrf", "1")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), SIZE.to_string());

    let response = h
        .http
        .get(h.url(&format!("/download/{SIZE}")))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, SIZE);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let h = Harness::start_with(&[("PROXY__MAX_BODY_BYTES", "1MiB")]).await;
    let cookie = h.login().await;
    let response = h
        .http
        .post(h.url("/upload"))
        .header(header::COOKIE, &cookie)
        .header("x-csrf", "1")
        .body(vec![0u8; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "declared length"
    );

    let chunks = futures_util::stream::iter(
        (0..32).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 64 * 1024]))),
    );
    let response = h
        .http
        .post(h.url("/upload"))
        .header(header::COOKIE, &cookie)
        .header("x-csrf", "1")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "streamed");
}

#[tokio::test]
async fn a_slow_app_is_a_504_and_a_dead_one_a_502() {
    let h = Harness::start_with(&[("PROXY__UPSTREAM_TIMEOUT", "1s")]).await;
    let cookie = h.login().await;
    let response = h
        .http
        .get(h.url("/slow"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");

    // A port nobody listens on: bind one, then close it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let h = Harness::in_front_of(&dead, &[]).await;
    let response = h.http.get(h.url("/static/x")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable");
}

#[tokio::test]
async fn a_slow_upload_is_not_a_slow_app_but_a_stalled_one_is_refused() {
    let h = Harness::start_with(&[("PROXY__UPSTREAM_TIMEOUT", "1s")]).await;
    let cookie = h.login().await;
    // 1.6 s of uploading against a 1 s deadline: the deadline is the app's, after the body.
    let paced = futures_util::stream::iter(0..8).then(|_| async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789"))
    });
    let response = h
        .http
        .post(h.url("/upload"))
        .header(header::COOKIE, &cookie)
        .header("x-csrf", "1")
        .body(reqwest::Body::wrap_stream(paced))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "80");

    let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"x"))])
        .chain(futures_util::stream::pending());
    let response = h
        .http
        .post(h.url("/upload"))
        .header(header::COOKIE, &cookie)
        .header("x-csrf", "1")
        .body(reqwest::Body::wrap_stream(stalled))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
}
