//! Anonymous and hostile clients: logins that leave no server state, rate limits, several tabs,
//! forward-auth method confusion, the gateway's own namespaces, and sessions whose company
//! Pleo could not name yet.

use reqwest::{StatusCode, header};

use crate::support::{
    Options, PATIENCE, SESSION_COOKIE, SetCookie, StoreKind, TestEnv, eventually, json_body,
    location, session_set_cookie,
};

/// The pending-login cookies a response sets or clears.
fn login_cookies(response: &reqwest::Response) -> Vec<SetCookie> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(SetCookie::parse)
        .filter(|c| c.name.contains("-login-"))
        .collect()
}

/// Beyond the per-client limit `/auth/login` and `/auth/callback` answer 429 with
/// `Retry-After` in the gateway's error format; another client (as a trusted proxy reports it)
/// has its own budget; a client behind an untrusted peer cannot pick one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_endpoints_are_rate_limited_per_client() {
    let env = TestEnv::start(
        Options::new(StoreKind::Memory)
            .env("SERVER__AUTH_RATE_PER_CLIENT", "3/m")
            .env("SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
    )
    .await;
    let browser = env.browser();
    let from = |client: &'static str| {
        let browser = &browser;
        move |path: &str| browser.get(path).header("x-forwarded-for", client)
    };
    let one = from("198.51.100.1");
    for _ in 0..3 {
        let ok = browser.send(one("/auth/login")).await;
        assert_eq!(ok.status(), StatusCode::FOUND);
    }
    let limited = browser.send(one("/auth/callback?state=x&code=y")).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let body = json_body(limited).await;
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().unwrap().contains("too many"));

    let other = from("198.51.100.2");
    assert_eq!(
        browser.send(other("/auth/login")).await.status(),
        StatusCode::FOUND
    );
}

/// The global limit holds for everyone together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_endpoints_have_a_global_rate_limit() {
    let env = TestEnv::start(
        Options::new(StoreKind::Memory)
            .env("SERVER__AUTH_RATE_GLOBAL", "5/m")
            .env("SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
    )
    .await;
    let browser = env.browser();
    let statuses: Vec<StatusCode> = futures_util::future::join_all((0..8).map(|i| {
        let request = browser
            .get("/auth/login")
            .header("x-forwarded-for", format!("198.51.100.{i}"));
        async { browser.send(request).await.status() }
    }))
    .await;
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(limited, 3, "{statuses:?}");
}

/// Several tabs can log in at once; a browser keeps at most three logins in progress (the
/// oldest gives way), and a successful login clears its pending-login cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_tabs_log_in_and_pending_logins_stay_bounded() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    let mut authorize_urls = Vec::new();
    for tab in 0..4 {
        let response = browser
            .send(browser.get(&format!("/auth/login?return_to=/tab/{tab}")))
            .await;
        assert_eq!(response.status(), StatusCode::FOUND);
        let set = login_cookies(&response);
        let expected_cleared = usize::from(tab == 3);
        assert_eq!(
            set.iter().filter(|c| c.max_age == Some(0)).count(),
            expected_cleared,
            "tab {tab}: {set:?}"
        );
        let new = set.iter().find(|c| c.max_age != Some(0)).unwrap();
        assert!(new.attributes.iter().any(|a| a == "Path=/auth/"), "{new:?}");
        assert!(new.attributes.iter().any(|a| a == "HttpOnly"), "{new:?}");
        authorize_urls.push(location(&response));
    }
    // The first tab's login gave way to the fourth.
    let first = browser.authorize(&authorize_urls[0]).await;
    let refused = browser.send(browser.get(first.as_str())).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_body(refused).await["error"], "invalid_state");

    for (tab, authorize_url) in authorize_urls.iter().enumerate().skip(1).rev() {
        let callback = browser.authorize(authorize_url).await;
        let done = browser.send(browser.get(callback.as_str())).await;
        assert_eq!(done.status(), StatusCode::FOUND, "tab {tab}");
        assert_eq!(location(&done).path(), format!("/tab/{tab}"));
        assert!(session_set_cookie(&done).is_some());
        let cleared = login_cookies(&done);
        assert_eq!(
            cleared.len(),
            1,
            "its pending login is cleared: {cleared:?}"
        );
        assert_eq!(cleared[0].max_age, Some(0));
        // Replaying the same callback from this browser finds nothing to complete.
        let replay = browser.send(browser.get(callback.as_str())).await;
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST, "tab {tab}");
    }
    assert!(
        browser
            .cookie_header()
            .is_some_and(|c| !c.contains("-login-")),
        "no pending login left in the browser"
    );
    assert!(browser.cookie(SESSION_COOKIE).is_some());
}

/// A `return_to` longer than the documented 2048 bytes falls back to `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overlong_return_to_falls_back_to_the_start_page() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    let long = format!("/a?{}", "q".repeat(2048));
    let (done, _) = browser.login_with(&format!("return_to={long}")).await;
    assert_eq!(done.status(), StatusCode::FOUND);
    assert_eq!(location(&done).path(), "/");
    let fits = format!("/a?{}", "q".repeat(2000));
    let (done, _) = env.browser().login_with(&format!("return_to={fits}")).await;
    assert_eq!(location(&done).query(), Some(&fits[3..]));
}

/// Forward-auth applies the CSRF rule when any signal says the checked request is unsafe: the
/// sub-request's own method (Envoy), `X-Original-Method` even when the client set
/// `X-Forwarded-Method: GET`, and a method it cannot parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_auth_treats_any_unsafe_or_unreadable_method_as_unsafe() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    let check = |method: reqwest::Method, headers: &[(&'static str, &'static str)]| {
        let mut request = browser.request(method, "/auth/check/");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        browser.send(request)
    };
    assert_eq!(
        check(reqwest::Method::GET, &[]).await.status(),
        StatusCode::OK
    );
    for headers in [
        &[("x-original-method", "P(ST")][..],
        &[("x-original-method", "")],
        &[
            ("x-forwarded-method", "GET"),
            ("x-original-method", "DELETE"),
        ],
    ] {
        let response = check(reqwest::Method::GET, headers).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
    }
    assert_eq!(
        check(reqwest::Method::POST, &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        check(reqwest::Method::POST, &[("x-csrf", "1")])
            .await
            .status(),
        StatusCode::OK
    );
}

/// `/auth`, `/auth/`, the Pleo prefix and `/metrics` are the gateway's, answered in its own
/// format (metrics live on `server.metrics_listen` only).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateways_namespaces_and_metrics_are_not_public() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    for path in ["/auth", "/auth/", "/pleo", "/pleo/", "/metrics"] {
        let response = browser.send(browser.get(path)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json_body(response).await["error"], "not_found", "{path}");
    }
}

/// When Pleo cannot say who a session belongs to at login, the session still calls the Pleo
/// API, but forward-auth answers 503 with `Retry-After` (never a 200 without a subject) until a
/// retried introspection succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_without_a_subject_is_not_vouched_for_until_pleo_names_it() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    env.mock.set_introspect_failure(Some(503));
    let browser = env.browser();
    browser.login().await;
    let info = json_body(browser.send(browser.get("/auth/session")).await).await;
    assert!(info["subject"].is_null(), "{info}");

    let check = browser.send(browser.get("/auth/check")).await;
    assert_eq!(check.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(check.headers().contains_key(header::RETRY_AFTER));
    assert!(!check.headers().contains_key("x-pleo-subject"));
    assert_eq!(json_body(check).await["error"], "subject_unknown");
    let api = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(api.status(), StatusCode::OK, "the Pleo API keeps working");

    env.mock.set_introspect_failure(None);
    eventually("the subject to be confirmed", PATIENCE, async || {
        let check = browser.send(browser.get("/auth/check")).await;
        check.status() == StatusCode::OK && check.headers().contains_key("x-pleo-subject")
    })
    .await;
    let info = json_body(browser.send(browser.get("/auth/session")).await).await;
    assert!(
        info["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("urn:pleo:"))
    );
}

/// Login CSRF by cookie tossing: a sibling subdomain can set a `__Secure-…-login-…` cookie for
/// `/auth/`, so an attacker plants their own pending login in the victim's browser and sends
/// the victim its callback URL. The victim's browser lacks the `__Host-` binding cookie that
/// login was started with: refused, and the attacker's code is never exchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tossed_pending_login_cookie_logs_nobody_in() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let attacker = env.browser();
    let started = attacker.send(attacker.get("/auth/login")).await;
    let planted = login_cookies(&started)
        .into_iter()
        .find(|c| c.max_age != Some(0))
        .expect("a pending-login cookie");
    let callback = attacker.authorize(&location(&started)).await;

    let victim = env.browser();
    victim.set_cookie(&planted.name, &planted.value);
    let response = victim.send(victim.get(callback.as_str())).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        session_set_cookie(&response).is_none(),
        "no session for the victim"
    );
    assert_eq!(json_body(response).await["error"], "invalid_state");
    assert_eq!(env.mock.stats().authorization_code_grants, 0);
}
