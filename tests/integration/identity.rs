//! The signed identity (`X-Pleo-Identity`) the app receives, and the internal listener the
//! app's server side calls Pleo through with it. The app here is a real HTTP server behind the
//! gateway: on a browser request it calls the internal listener with the assertion it was
//! given, as a server-rendered page or an API handler that enriches Pleo data would.

use std::sync::{Arc, OnceLock};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode as AxumStatus},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use pleo_gateway::{
    config::SigningKeyMaterial,
    identity::{jws, keys::SigningKeys},
};
use reqwest::StatusCode;
use tokio::net::TcpListener;
use url::Url;

use crate::support::{Browser, Options, StoreKind, TestEnv, bearer_seen_by_pleo, json_body};

/// The gateway's signing key in these tests, so a test can sign what a forger would.
const SEED: [u8; 32] = [42; 32];
const AUDIENCE: &str = "integration-app";

/// The app behind the gateway: `/whoami` shows the headers it got; `/server-side` calls Pleo
/// through the internal listener with the assertion it got and shows what Pleo saw.
struct App {
    internal: Arc<OnceLock<Url>>,
    http: reqwest::Client,
}

async fn whoami(headers: HeaderMap) -> Json<serde_json::Value> {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    Json(serde_json::Value::Object(map))
}

async fn server_side(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> (AxumStatus, Json<serde_json::Value>) {
    let assertion = headers
        .get("x-pleo-identity")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let internal = app.internal.get().expect("the internal URL is known");
    let response = app
        .http
        .get(internal.join("/pleo/echo/from-the-app").unwrap())
        .bearer_auth(assertion)
        .send()
        .await
        .expect("the internal listener answers");
    let status = AxumStatus::from_u16(response.status().as_u16()).unwrap();
    (status, Json(response.json().await.unwrap_or_default()))
}

/// A gateway (with `store`) in front of the app, the app knowing the internal listener.
async fn gateway_with_app(store: StoreKind) -> TestEnv {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", listener.local_addr().unwrap());
    let app = Arc::new(App {
        internal: Arc::default(),
        http: reqwest::Client::new(),
    });
    let router = Router::new()
        .route("/whoami", get(whoami))
        .route("/server-side", get(server_side))
        .with_state(Arc::clone(&app));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let env = TestEnv::start(
        Options::new(store)
            .env("PROXY__UPSTREAM", &app_url)
            .env("IDENTITY__SIGNING_KEYS", &URL_SAFE_NO_PAD.encode(SEED))
            .env("IDENTITY__AUDIENCE", AUDIENCE),
    )
    .await;
    app.internal.set(env.internal_url.clone()).unwrap();
    env
}

/// The assertion the app receives with a request from `browser`.
async fn assertion_for(browser: &Browser) -> String {
    let response = browser.send(browser.get("/whoami")).await;
    assert_eq!(response.status(), StatusCode::OK);
    json_body(response).await["x-pleo-identity"]
        .as_str()
        .expect("the app receives X-Pleo-Identity")
        .to_owned()
}

fn claims(assertion: &str) -> jws::Claims {
    let payload = assertion.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// `claims` signed with `seed`, as someone holding that key would.
fn signed(claims: &jws::Claims, seed: [u8; 32]) -> String {
    let keys = SigningKeys::new(&[SigningKeyMaterial::from_seed(seed)]).unwrap();
    jws::sign(&keys, claims)
}

/// `GET {internal}/pleo/echo/x` with `Authorization: Bearer <assertion>`.
async fn internal_call(env: &TestEnv, assertion: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(env.internal_url.join("/pleo/echo/x").unwrap())
        .bearer_auth(assertion)
        .send()
        .await
        .unwrap()
}

async fn refused_with(response: reqwest::Response, code: &str) -> serde_json::Value {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = json_body(response).await;
    assert_eq!(body["error"], code, "{body}");
    body
}

for_each_store! {
    /// While handling a browser request, the app's server side calls Pleo through the internal
    /// listener with the assertion it was given: Pleo sees that user's bearer token and no
    /// cookie, and the app gets Pleo's answer.
    async fn the_apps_server_side_calls_pleo_as_the_user(store) {
        let env = gateway_with_app(store).await;
        let browser = env.browser();
        browser.login().await;
        let response = browser.send(browser.get("/server-side")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let echo = json_body(response).await;
        assert_eq!(echo["path"], "/echo/from-the-app", "{echo}");
        let bearer = bearer_seen_by_pleo(&browser).await;
        assert_eq!(echo["headers"]["authorization"], format!("Bearer {bearer}"));
        let headers = echo["headers"].as_object().unwrap();
        assert!(!headers.contains_key("cookie"), "{echo}");
        assert!(
            headers.keys().all(|name| !name.starts_with("x-pleo-")),
            "no identity header reaches Pleo: {echo}"
        );

        // The assertion also works as the X-Pleo-Identity header passed on unchanged, and
        // beside the other identity headers the app received.
        let assertion = assertion_for(&browser).await;
        let response = reqwest::Client::new()
            .get(env.internal_url.join("/pleo/echo/x").unwrap())
            .bearer_auth(&assertion)
            .header("X-Pleo-Subject", claims(&assertion).sub)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = reqwest::Client::new()
            .get(env.internal_url.join("/pleo/echo/x").unwrap())
            .header("X-Pleo-Identity", &assertion)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// What the assertion says: issuer, audience, subject, scopes, a session reference that is
    /// neither the cookie nor anything the app could replay, a 60 s life.
    async fn the_app_receives_a_signed_identity(store) {
        let env = gateway_with_app(store).await;
        let browser = env.browser();
        browser.login().await;
        let response = browser.send(browser.get("/whoami")).await;
        let headers = json_body(response).await;
        let assertion = headers["x-pleo-identity"].as_str().unwrap();
        let claims = claims(assertion);
        assert_eq!(claims.iss, env.gateway_url.as_str().trim_end_matches('/'));
        assert_eq!(claims.aud, AUDIENCE);
        assert_eq!(claims.sub, headers["x-pleo-subject"].as_str().unwrap());
        assert_eq!(claims.scope, headers["x-pleo-scopes"].as_str().unwrap());
        assert_eq!(claims.exp - claims.iat, 60);
        let cookie = browser.cookie(crate::support::SESSION_COOKIE).unwrap();
        assert!(!assertion.contains(&cookie) && !claims.sid.contains(&cookie));
        assert_eq!(
            claims.sid,
            self::claims(&assertion_for(&browser).await).sid,
            "the reference is stable for the session"
        );
        let other = env.browser();
        other.login().await;
        assert_ne!(claims.sid, self::claims(&assertion_for(&other).await).sid);
    }

    /// Forged (another key, or a changed payload), expired and wrong-audience assertions are
    /// 401 in the gateway's error format, and Pleo is never called.
    async fn forged_expired_and_wrong_audience_assertions_are_refused(store) {
        let env = gateway_with_app(store).await;
        let browser = env.browser();
        browser.login().await;
        let genuine = assertion_for(&browser).await;
        let api_before = env.mock.stats().api_requests;

        let another_key = signed(&claims(&genuine), [7; 32]);
        let body = refused_with(internal_call(&env, &another_key).await, "invalid_assertion").await;
        assert!(body["message"].as_str().unwrap().contains("not a valid assertion"), "{body}");

        let parts: Vec<&str> = genuine.split('.').collect();
        let mut other_company = claims(&genuine);
        other_company.sub = "urn:pleo:company:00000000-0000-0000-0000-000000000666".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other_company).unwrap()),
            parts[2]
        );
        refused_with(internal_call(&env, &tampered).await, "invalid_assertion").await;

        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        refused_with(internal_call(&env, &unsigned).await, "invalid_assertion").await;

        let mut expired = claims(&genuine);
        expired.iat -= 3600;
        expired.exp = expired.iat + 60;
        let body = refused_with(internal_call(&env, &signed(&expired, SEED)).await, "invalid_assertion").await;
        assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");

        let mut elsewhere = claims(&genuine);
        elsewhere.aud = "some-other-app".into();
        let body = refused_with(internal_call(&env, &signed(&elsewhere, SEED)).await, "invalid_assertion").await;
        assert!(body["message"].as_str().unwrap().contains("audience"), "{body}");

        assert_eq!(env.mock.stats().api_requests, api_before, "Pleo was never called");
        // The genuine one still works: nothing above was refused by accident.
        assert_eq!(internal_call(&env, &genuine).await.status(), StatusCode::OK);
    }

    /// After logout (or disconnect) the session's assertions are worthless: 401.
    async fn a_logged_out_sessions_assertion_is_refused(store) {
        let env = gateway_with_app(store).await;
        let browser = env.browser();
        browser.login().await;
        let assertion = assertion_for(&browser).await;
        assert_eq!(internal_call(&env, &assertion).await.status(), StatusCode::OK);
        let logout = browser.send(browser.post("/auth/logout").header("X-CSRF", "1")).await;
        assert_eq!(logout.status(), StatusCode::OK);
        refused_with(internal_call(&env, &assertion).await, "session_ended").await;

        let other = env.browser();
        other.login().await;
        let assertion = assertion_for(&other).await;
        let disconnect = other.send(other.post("/auth/disconnect").header("X-CSRF", "1")).await;
        assert_eq!(disconnect.status(), StatusCode::OK);
        refused_with(internal_call(&env, &assertion).await, "session_ended").await;
    }

    /// An assertion is never a substitute for the cookie on the public listener, in either
    /// header, and the internal listener serves nothing without a credential.
    async fn an_assertion_is_not_a_cookie_and_nothing_is_served_without_one(store) {
        let env = gateway_with_app(store).await;
        let browser = env.browser();
        browser.login().await;
        let assertion = assertion_for(&browser).await;
        let anonymous = reqwest::Client::new();
        let public = env.gateway_url.join("/pleo/echo/x").unwrap();
        for request in [
            anonymous.get(public.clone()).bearer_auth(&assertion),
            anonymous.get(public.clone()).header("X-Pleo-Identity", &assertion),
        ] {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(json_body(response).await["error"], "not_authenticated");
        }
        let internal = env.internal_url.join("/pleo/echo/x").unwrap();
        refused_with(anonymous.get(internal.clone()).send().await.unwrap(), "credentials_missing").await;
        let basic = anonymous.get(internal).basic_auth("user", Some("password")).send().await.unwrap();
        refused_with(basic, "credentials_missing").await;
        for path in ["/", "/auth/session", "/whoami", "/healthz"] {
            let response = anonymous
                .get(env.internal_url.join(path).unwrap())
                .bearer_auth(&assertion)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }
}

/// The JWKS verifies the assertion with implementations other than the gateway's: ring used
/// directly, Node's `crypto` (OpenSSL) and the README's PyJWT example, as an app in another
/// language would. The last two are skipped, saying so, when not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_verifies_the_assertion_with_an_independent_implementation() {
    let env = gateway_with_app(StoreKind::Memory).await;
    let browser = env.browser();
    browser.login().await;
    let assertion = assertion_for(&browser).await;
    let jwks = json_body(browser.send(browser.get("/auth/jwks.json")).await).await;
    let internal_jwks: serde_json::Value =
        reqwest::get(env.internal_url.join("/auth/jwks.json").unwrap())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(jwks, internal_jwks, "both listeners publish the same keys");
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);

    // Verification from the JWKS alone, with ring directly (not the gateway's jws module).
    let key = &jwks["keys"][0];
    let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
    let (signed_part, signature) = assertion.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &x)
        .verify(
            signed_part.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .expect("the JWKS key verifies the assertion");

    let Ok(node) = which("node") else {
        eprintln!("SKIPPED the Node cross-check: `node` is not installed");
        return;
    };
    let script = r#"
const crypto = require('crypto');
const [jwks, token] = [JSON.parse(process.argv[1]), process.argv[2]];
const [h, p, s] = token.split('.');
const header = JSON.parse(Buffer.from(h, 'base64url'));
const jwk = jwks.keys.find(k => k.kid === header.kid);
const ok = !!jwk && header.alg === 'EdDSA' && crypto.verify(null, Buffer.from(h + '.' + p),
  crypto.createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x }, format: 'jwk' }),
  Buffer.from(s, 'base64url'));
console.log(JSON.stringify({ ok, alg: header.alg, claims: JSON.parse(Buffer.from(p, 'base64url')) }));
"#;
    let run = |token: &str| {
        let output = std::process::Command::new(&node)
            .args(["-e", script, &jwks.to_string(), token])
            .output()
            .expect("run node");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let verdict = run(&assertion);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["alg"], "EdDSA");
    assert_eq!(verdict["claims"]["aud"], AUDIENCE);
    let forged = signed(&claims(&assertion), [7; 32]);
    assert_eq!(
        run(&forged)["ok"],
        false,
        "another key's signature fails there too"
    );
    readme_python_verifies(&env, &assertion, &forged).await;
}

/// The README's PyJWT example, taken from the README as written, against the live gateway:
/// it accepts the assertion and refuses the forgery. Skipped, saying so, without PyJWT.
async fn readme_python_verifies(env: &TestEnv, assertion: &str, forged: &str) {
    let has_pyjwt = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_pyjwt {
        eprintln!(
            "SKIPPED the README's Python example: python3 with PyJWT and cryptography is not installed (pip install \"pyjwt[crypto]\")"
        );
        return;
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a Python example");
    let driver = format!(
        "{example}\nimport sys, json\nJWKS = jwt.PyJWKClient(sys.argv[1])\nGATEWAY, AUDIENCE = sys.argv[2], sys.argv[3]\nprint(json.dumps(pleo_identity({{'X-Pleo-Identity': sys.argv[4]}})))\n"
    );
    let run = async |token: &str| {
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(&driver)
            .arg(env.internal_url.join("/auth/jwks.json").unwrap().as_str())
            .arg(env.gateway_url.as_str().trim_end_matches('/'))
            .arg(AUDIENCE)
            .arg(token)
            .output()
            .await
            .expect("run python3")
    };
    let accepted = run(assertion).await;
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let (subject, scopes): (String, Vec<String>) =
        serde_json::from_slice(&accepted.stdout).unwrap();
    assert_eq!(subject, claims(assertion).sub);
    assert_eq!(scopes.join(" "), claims(assertion).scope);
    let refused = run(forged).await;
    assert!(!refused.status.success(), "the forgery is refused");
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
        .ok_or(())
}
