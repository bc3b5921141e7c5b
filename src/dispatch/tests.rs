//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! [`route`] and [`finish_like_router`] on their own; `app`'s tests compare the whole stack
//! with the stack that routes every request.

use axum::{body::Body, http::StatusCode, response::IntoResponse};

use super::*;

#[test]
fn proxied_paths_are_decided_and_the_gateways_own_are_left_to_the_router() {
    let cases = [
        ("/", Route::App),
        ("/index.html", Route::App),
        ("/authors", Route::App),
        ("/auth.json", Route::App),
        ("/healthz/", Route::App),
        ("/metricsx", Route::App),
        ("/AUTH/login", Route::App),
        ("/pleo2/x", Route::App),
        ("/pleox", Route::App),
        ("/pleo/v1/users", Route::Pleo),
        ("/pleo//x", Route::Pleo),
        ("/pleo/a/", Route::Pleo),
        ("/pleo", Route::Router),
        ("/pleo/", Route::Router),
        ("/auth", Route::Router),
        ("/auth/", Route::Router),
        ("/auth/login", Route::Router),
        ("/auth/check/x", Route::Router),
        ("/healthz", Route::Router),
        ("/readyz", Route::Router),
        ("/metrics", Route::Router),
        ("/metrics/", Route::Router),
        ("/metrics/x", Route::Router),
        ("", Route::Router),
        ("*", Route::Router),
    ];
    for (path, expected) in cases {
        assert_eq!(route(path, "/pleo", true), expected, "{path:?}");
    }
    // Without an app, what is not Pleo's is the router's (its fallback answers 404).
    assert_eq!(route("/x", "/pleo", false), Route::Router);
    assert_eq!(route("/pleo/x", "/pleo", false), Route::Pleo);
    // A prefix of more than one segment.
    assert_eq!(route("/api/pleo/x", "/api/pleo", true), Route::Pleo);
    assert_eq!(route("/api/pleo", "/api/pleo", true), Route::Router);
    assert_eq!(route("/api", "/api/pleo", true), Route::App);
}

#[test]
fn responses_are_finished_as_the_router_finishes_them() {
    let sized = || (StatusCode::OK, "four").into_response();
    let response = finish_like_router(&Method::GET, sized());
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "4");
    // HEAD keeps the length of what GET would send, without the body.
    let response = finish_like_router(&Method::HEAD, sized());
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "4");
    assert_eq!(response.body().size_hint().exact(), Some(0));
    // A length the handler set is left alone; a streamed body gets none.
    let mut declared = sized();
    declared
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let response = finish_like_router(&Method::GET, declared);
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "10");
    let stream = Body::from_stream(futures_util::stream::iter([Ok::<_, Infallible>("x")]));
    let response = finish_like_router(&Method::GET, Response::new(stream));
    assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
    // A successful CONNECT loses a body, and gets no length.
    let response = finish_like_router(&Method::CONNECT, sized());
    assert_eq!(response.body().size_hint().exact(), Some(0));
    assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
}
