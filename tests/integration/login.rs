//! Logging in and out: the authorize redirect, PKCE, the callback's state and error handling.

use pleo_gateway::mock_pleo::DEFAULT_SUBJECT_URN;
use reqwest::{StatusCode, header};

use crate::support::{
    CLIENT_ID, Options, SCOPES, SESSION_COOKIE, StoreKind, TestEnv, json_body, location, query_map,
    random_b64, session_set_cookie, set_cookie_named,
};

for_each_store! {
    /// The whole happy path: login, session info without tokens, an API call, logout.
    async fn full_login_api_call_and_logout(store) {
        let env = TestEnv::start(Options::new(store)).await;
        let browser = env.browser();

        let callback = browser.login().await;
        assert_eq!(location(&callback).path(), "/", "no return_to: back to /");
        let cookie = session_set_cookie(&callback).expect("session cookie");
        assert!(cookie.value.len() >= 43, "opaque id of at least 256 bits: {cookie:?}");
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(
                cookie.attributes.iter().any(|a| a == attribute),
                "missing {attribute}: {cookie:?}"
            );
        }
        assert!(
            !cookie.attributes.iter().any(|a| a.to_ascii_lowercase().starts_with("domain")),
            "no Domain attribute: {cookie:?}"
        );
        let session_cookie = format!("{SESSION_COOKIE}={}", cookie.value);

        let info = browser.send(browser.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::OK);
        let text = info.text().await.unwrap();
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(info["authenticated"], true);
        assert_eq!(info["subject"], DEFAULT_SUBJECT_URN);
        let scopes: Vec<&str> = info["scopes"]
            .as_array()
            .expect("scopes array")
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        assert_eq!(scopes, SCOPES, "granted scopes");
        assert!(info["access_token_expires_at"].is_string());
        assert!(info["session_expires_at"].is_string());
        let issued = env.tap.issued();
        assert_eq!(issued.len(), 1, "one code exchange");
        assert!(!text.contains(&issued[0].access_token), "access token leaked: {text}");
        assert!(!text.contains(&issued[0].refresh_token), "refresh token leaked: {text}");
        assert!(!text.contains(&cookie.value), "session id echoed: {text}");

        let employees = browser.send(browser.get("/pleo/v2/employees?limit=3")).await;
        assert_eq!(employees.status(), StatusCode::OK);
        let employees = json_body(employees).await;
        assert_eq!(employees["data"].as_array().map(Vec::len), Some(3));
        assert_eq!(employees["pagination"]["total"], 8);
        assert_eq!(env.mock.stats().api_unauthorized, 0);

        let logout = browser
            .send(browser.post("/auth/logout").header("X-CSRF", "1"))
            .await;
        assert_eq!(logout.status(), StatusCode::OK);
        let cleared = session_set_cookie(&logout).expect("logout sets the cookie");
        assert_eq!(cleared.max_age, Some(0), "cookie expired: {cleared:?}");
        assert!(cleared.value.is_empty(), "cookie emptied: {cleared:?}");
        assert_eq!(json_body(logout).await["logged_out"], true);
        assert_eq!(browser.cookie(SESSION_COOKIE), None, "the browser dropped it");

        // The old cookie, replayed by hand, is worthless: the session is gone server-side.
        let replay = browser
            .send(browser.get("/auth/session").header(header::COOKIE, &session_cookie))
            .await;
        assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(json_body(replay).await["error"], "not_authenticated");
        let before = env.mock.stats().api_requests;
        let api = browser
            .send(browser.get("/pleo/v2/employees").header(header::COOKIE, &session_cookie))
            .await;
        assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(env.mock.stats().api_requests, before, "nothing reached Pleo");
    }

    /// A callback URL used twice. The callback clears its pending-login cookie whatever the
    /// outcome, and Pleo's code is single-use, so a replay gets nowhere:
    ///
    /// (a) from the same browser, its pending login is spent (the cookie is gone): refused as
    ///     `invalid_state` before any token request — also while that browser has another login
    ///     pending, because a pending login opens only for its own state;
    /// (b) with a copy of the pending-login cookie taken before the callback (a thief's), the
    ///     gateway does try the code, Pleo refuses it as spent, and no session results.
    async fn replayed_state_is_rejected(store) {
        let env = TestEnv::start(Options::new(store)).await;
        let browser = env.browser();
        let authorize_url = browser.begin_login("").await;
        let pending = browser.pending_logins();
        assert_eq!(pending.len(), 1, "one login in progress: {pending:?}");
        let (pending_name, stolen_value) = pending[0].clone();
        let binding_name = format!("{SESSION_COOKIE}-login");
        let stolen_binding = browser.cookie(&binding_name).expect("the browser-binding cookie");
        let callback_url = browser.authorize(&authorize_url).await;
        let first = browser.send(browser.get(callback_url.as_str())).await;
        assert_eq!(first.status(), StatusCode::FOUND);
        let session = session_set_cookie(&first).expect("the first callback logs in").value;
        let cleared = set_cookie_named(&first, &pending_name)
            .expect("the callback answers with a Set-Cookie for its pending login");
        assert!(
            cleared.value.is_empty() && cleared.max_age == Some(0),
            "the callback clears its pending login: {cleared:?}"
        );
        assert_eq!(browser.pending_logins(), vec![], "the browser dropped it");
        let stats = env.mock.stats();
        assert_eq!(stats.token_requests, 1, "{stats:?}");
        assert_eq!(stats.authorization_code_grants, 1, "{stats:?}");

        // (a) The same browser, with no pending login left: refused on the state alone.
        let replay = browser.send(browser.get(callback_url.as_str())).await;
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
        assert!(session_set_cookie(&replay).is_none(), "no session for a replay");
        assert_eq!(json_body(replay).await["error"], "invalid_state");
        assert_eq!(
            env.mock.stats().token_requests,
            1,
            "the spent state never led to a token request"
        );
        // Another login of the same browser is pending (another tab): its cookie is no key to
        // the spent state.
        let _another = browser.begin_login("").await;
        assert_eq!(browser.pending_logins().len(), 1);
        let replay = browser.send(browser.get(callback_url.as_str())).await;
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
        assert!(session_set_cookie(&replay).is_none(), "no session for a replay");
        assert_eq!(json_body(replay).await["error"], "invalid_state");
        assert_eq!(
            env.mock.stats().token_requests,
            1,
            "another login's cookie did not open the spent state"
        );
        assert_eq!(browser.cookie(SESSION_COOKIE), Some(session), "the session is untouched");

        // (b) A thief with a copy of the pending-login cookie alone (or a sibling subdomain that
        // planted it): the login is bound to the browser that started it.
        let thief = env.browser();
        thief.set_cookie(&pending_name, &stolen_value);
        let replay = thief.send(thief.get(callback_url.as_str())).await;
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
        assert!(session_set_cookie(&replay).is_none(), "no session for a replay");
        assert_eq!(json_body(replay).await["error"], "invalid_state");
        assert_eq!(env.mock.stats().token_requests, 1, "nothing went to Pleo");

        // (c) A thief with copies of both browser cookies: the state opens, the code does not.
        let thief = env.browser();
        thief.set_cookie(&pending_name, &stolen_value);
        thief.set_cookie(&binding_name, &stolen_binding);
        let replay = thief.send(thief.get(callback_url.as_str())).await;
        let status = replay.status();
        assert!(session_set_cookie(&replay).is_none(), "no session for a replay");
        let body = json_body(replay).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(body["error"], "token_exchange_failed", "{body}");
        let stats = env.mock.stats();
        assert_eq!(
            stats.token_requests, 2,
            "with the copied cookie the gateway did present the code: {stats:?}"
        );
        assert_eq!(
            stats.authorization_code_grants, 1,
            "Pleo refused the spent code: {stats:?}"
        );
        assert_eq!(thief.cookie(SESSION_COOKIE), None);
        let info = thief.send(thief.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
        let info = browser.send(browser.get("/auth/session")).await;
        assert_eq!(info.status(), StatusCode::OK, "the replays left the first session alone");
    }

    /// A state the gateway never issued is refused before any token exchange.
    async fn forged_state_is_rejected(store) {
        let env = TestEnv::start(Options::new(store)).await;
        let browser = env.browser();
        // A real login is pending, so the store is not simply empty.
        let _pending = browser.begin_login("").await;
        let forged = format!(
            "/auth/callback?code=some-code&state={}",
            random_b64(32).replace(['+', '/', '='], "A")
        );
        let response = browser.send(browser.get(&forged)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(session_set_cookie(&response).is_none());
        assert_eq!(json_body(response).await["error"], "invalid_state");
        assert_eq!(env.mock.stats().token_requests, 0);
    }
}

/// `/auth/login` sends the browser to Pleo with every parameter PKCE and Pleo require.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorize_redirect_carries_every_oauth_and_pkce_parameter() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    let url = browser.begin_login("").await;
    assert_eq!(url.origin(), env.mock_url.origin());
    assert_eq!(url.path(), "/oauth/authorize");
    let params = query_map(&url);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(
        params["redirect_uri"],
        format!("{}auth/callback", env.gateway_url)
    );
    assert_eq!(params["scope"], SCOPES.join(" "), "space-separated scopes");
    assert_eq!(params["code_challenge_method"], "S256");
    let state = &params["state"];
    assert!(state.len() >= 43, "state of at least 256 bits: {state}");
    let challenge = &params["code_challenge"];
    assert_eq!(challenge.len(), 43, "base64url SHA-256: {challenge}");
    assert!(
        challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url without padding: {challenge}"
    );
    assert!(!params.contains_key("urn_pleo_params_oauth_subject"));
    assert!(
        !params.contains_key("code_verifier"),
        "the verifier stays server-side"
    );
    assert_eq!(
        url.query_pairs().count(),
        params.len(),
        "no parameter is repeated"
    );

    // Each login has its own state and challenge.
    let again = query_map(&browser.begin_login("").await);
    assert_ne!(again["state"], *state);
    assert_ne!(again["code_challenge"], *challenge);
}

/// Pleo's Initiation-URI flow: the subject given to `/auth/login` reaches Pleo, and the session
/// ends up for that subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subject_hint_is_passed_through_to_pleo() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    let subject = "urn:pleo:company:0d6f2a4e-1b3c-4d5e-8f70-9a1b2c3d4e5f";
    let (callback, trip) = browser
        .login_with(&format!("urn_pleo_params_oauth_subject={subject}"))
        .await;
    assert_eq!(
        query_map(&trip.authorize_url)["urn_pleo_params_oauth_subject"],
        subject
    );
    assert_eq!(callback.status(), StatusCode::FOUND);
    let info = json_body(browser.send(browser.get("/auth/session")).await).await;
    assert_eq!(info["subject"], subject);

    // Anything that is not a Pleo subject URN is refused, not forwarded.
    let bad = browser
        .send(browser.get("/auth/login?urn_pleo_params_oauth_subject=javascript:alert(1)"))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.headers().get(header::LOCATION).is_none());
}

/// The mock checks the PKCE verifier against the challenge; a real login passes that check, and
/// a code presented with another login's verifier does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_passes_pkce_verification_and_a_foreign_verifier_fails() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    env.browser().login().await;
    let stats = env.mock.stats();
    assert_eq!(stats.authorization_code_grants, 1);
    assert_eq!(stats.token_requests, 1);

    // Two logins in flight; login A's state (and so its verifier) with login B's code.
    let browser = env.browser();
    let callback_a = browser.authorize(&browser.begin_login("").await).await;
    let callback_b = browser.authorize(&browser.begin_login("").await).await;
    let mut crossed = callback_a.clone();
    crossed
        .query_pairs_mut()
        .clear()
        .append_pair("code", &query_map(&callback_b)["code"])
        .append_pair("state", &query_map(&callback_a)["state"]);
    let response = browser.send(browser.get(crossed.as_str())).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(session_set_cookie(&response).is_none());
    assert_eq!(json_body(response).await["error"], "token_exchange_failed");
    let stats = env.mock.stats();
    assert_eq!(stats.token_requests, 2, "the crossed code was presented");
    assert_eq!(stats.authorization_code_grants, 1, "and refused");
}

/// A code altered on the way back fails with a clear error and no session cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_code_fails_without_a_session() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    let callback = browser.authorize(&browser.begin_login("").await).await;
    let params = query_map(&callback);
    let mut tampered = callback.clone();
    tampered
        .query_pairs_mut()
        .clear()
        .append_pair("code", &format!("{}x", params["code"]))
        .append_pair("state", &params["state"]);
    let response = browser.send(browser.get(tampered.as_str())).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(session_set_cookie(&response).is_none());
    let body = json_body(response).await;
    assert_eq!(body["error"], "token_exchange_failed");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("login")),
        "the message tells the user what to do: {body}"
    );
    assert_eq!(env.mock.stats().authorization_code_grants, 0);
    assert_eq!(browser.cookie(SESSION_COOKIE), None);
}

/// Errors of the callback are an HTML page for a browser navigation, JSON otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callback_errors_are_html_for_navigations_and_json_otherwise() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    let forged = format!("/auth/callback?code=c&state={}", "A".repeat(43));

    let page = browser
        .send(
            browser
                .get(&forged)
                .header("Sec-Fetch-Mode", "navigate")
                .header("Sec-Fetch-Dest", "document")
                .header(header::ACCEPT, "text/html"),
        )
        .await;
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    let content_type = page.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.unwrap();
    assert!(
        html.to_ascii_lowercase().starts_with("<!doctype html"),
        "{html}"
    );
    assert!(html.contains("invalid_state"), "{html}");

    let api = browser
        .send(browser.get(&forged).header("Sec-Fetch-Mode", "cors"))
        .await;
    assert_eq!(api.status(), StatusCode::BAD_REQUEST);
    let content_type = api.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body = json_body(api).await;
    assert_eq!(body["error"], "invalid_state");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// The user (or Pleo) refuses: 403 `access_denied`, no token request, no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_denied_callback_is_403_without_a_session() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    let state = query_map(&browser.begin_login("").await)["state"].clone();
    let mut url = browser.url("/auth/callback");
    url.query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("error_description", "The user denied the request")
        .append_pair("state", &state);
    let response = browser.send(browser.get(url.as_str())).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(session_set_cookie(&response).is_none());
    let body = json_body(response).await;
    assert_eq!(body["error"], "access_denied");
    assert_eq!(env.mock.stats().token_requests, 0);
    assert_eq!(
        browser.send(browser.get("/auth/session")).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Logging in again issues a new session id and ends the old session (no fixation).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_again_rotates_the_session_id() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    let first = browser.cookie(SESSION_COOKIE).expect("first cookie");
    browser.login().await;
    let second = browser.cookie(SESSION_COOKIE).expect("second cookie");
    assert_ne!(first, second, "a new id at every login");
    let old = browser
        .send(
            browser
                .get("/auth/session")
                .header(header::COOKIE, format!("{SESSION_COOKIE}={first}")),
        )
        .await;
    assert_eq!(
        old.status(),
        StatusCode::UNAUTHORIZED,
        "the pre-login session ended"
    );
    let current = browser.send(browser.get("/auth/session")).await;
    assert_eq!(current.status(), StatusCode::OK);
}

/// `return_to` survives the round trip when it is a local path, and falls back to `/` otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn return_to_is_kept_only_for_same_origin_paths() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let local = env.browser();
    let (response, _) = local.login_with("return_to=%2Freports%3Fyear%3D2024").await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let target = response.headers()[header::LOCATION].to_str().unwrap();
    assert_eq!(target, "/reports?year=2024");

    for evil in [
        "https%3A%2F%2Fevil.example%2F",
        "%2F%2Fevil.example",
        "%2F%5Cevil.example",
    ] {
        let browser = env.browser();
        let (response, _) = browser.login_with(&format!("return_to={evil}")).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        let target = response.headers()[header::LOCATION].to_str().unwrap();
        assert_eq!(target, "/", "{evil} must not be a redirect target");
    }
}

/// A public client (no secret) logs in with PKCE alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_client_logs_in_with_pkce_only() {
    let env = TestEnv::start(Options::new(StoreKind::Memory).public_client()).await;
    assert!(env.client_secret.is_none());
    let browser = env.browser();
    browser.login().await;
    assert_eq!(env.mock.stats().authorization_code_grants, 1);
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
}

/// Session fixation: a cookie planted in the victim's browser before login (here, the attacker's
/// own live session) is replaced by a new id at login and is worthless afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_session_cookie_is_replaced_at_login() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let attacker = env.browser();
    attacker.login().await;
    let planted = attacker.cookie(SESSION_COOKIE).expect("attacker's cookie");

    let victim = env.browser();
    victim.set_cookie(SESSION_COOKIE, &planted);
    victim.login().await;
    let issued = victim.cookie(SESSION_COOKIE).expect("victim's cookie");
    assert_ne!(issued, planted, "the victim got a brand-new session id");
    assert_eq!(
        attacker.send(attacker.get("/auth/session")).await.status(),
        StatusCode::UNAUTHORIZED,
        "the planted session no longer opens anything"
    );
    assert_eq!(
        victim.send(victim.get("/auth/session")).await.status(),
        StatusCode::OK
    );
}

/// Login CSRF (RFC 6749 §10.12): an attacker starts a login with their own Pleo account and
/// sends the victim the callback URL. The victim's browser lacks the login-binding cookie set at
/// `/auth/login`, so the callback is refused — no session for the attacker's account, and the
/// code is never exchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callback_from_a_browser_that_did_not_start_the_login_is_refused() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let attacker = env.browser();
    let authorize_url = attacker.begin_login("return_to=/").await;
    let callback_url = attacker.authorize(&authorize_url).await;

    let victim = env.browser();
    let response = victim.send(victim.get(callback_url.as_str())).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        session_set_cookie(&response).is_none(),
        "no session for the victim"
    );
    assert_eq!(json_body(response).await["error"], "invalid_state");
    assert_eq!(
        env.mock.stats().authorization_code_grants,
        0,
        "the code was never exchanged"
    );
    let info = victim.send(victim.get("/auth/session")).await;
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);

    // Only the browser that started the login holds its pending-login cookie: the attacker's
    // own browser can finish it (into the attacker's own account), nobody else's can.
    let own = attacker.send(attacker.get(callback_url.as_str())).await;
    assert_eq!(own.status(), StatusCode::FOUND);
    assert!(session_set_cookie(&own).is_some());
}
