//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! The whole stack against the stack with axum's router alone ([`routed_only`]): the same
//! requests, written to real sockets byte for byte, must get the same answers, so that the
//! proxies' direct paths (`dispatch.rs`) answer exactly as routing did.

use std::{collections::HashMap, convert::Infallible, net::SocketAddr};

use axum::{Router, body::Body, extract::Request, response::IntoResponse};
use proptest::prelude::*;
use secrecy::SecretString;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{AppState, app, routed_only, run};
use crate::{
    config::Config,
    session::{SessionData, Store, memory_store::MemoryStore, now_ms},
};

/// The app and Pleo stand-in: answers with what it received, headers sorted; streamed (no
/// length, so chunked) when the path has a `chunk` segment.
fn echo() -> Router {
    Router::new().fallback(|request: Request| async move {
        let streamed = request.uri().path().split('/').any(|s| s == "chunk");
        let mut headers: Vec<String> = request
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.sort();
        let text = format!(
            "{} {}\n{}\n",
            request.method(),
            request.uri(),
            headers.join("\n")
        );
        if streamed {
            let parts = [Ok::<_, Infallible>(text), Ok("and more\n".to_owned())];
            Body::from_stream(futures_util::stream::iter(parts)).into_response()
        } else {
            text.into_response()
        }
    })
}

/// How the gateway under test is configured.
#[derive(Clone, Copy, Debug)]
struct Setup {
    pleo_prefix: &'static str,
    /// Whether an app is configured (without one, what is not Pleo's is a 404).
    app: bool,
}

const SETUPS: [Setup; 2] = [
    Setup {
        pleo_prefix: "/pleo",
        app: true,
    },
    Setup {
        pleo_prefix: "/api/pleo",
        app: false,
    },
];

/// Two listeners on one state: the gateway's stack, and the same with the router alone.
struct Pair {
    direct: SocketAddr,
    routed: SocketAddr,
    cookie: String,
}

async fn serve(listener: TcpListener, service: impl crate::server::Served) {
    tokio::spawn(run(listener, service, std::future::pending()));
}

async fn pair(setup: Setup) -> Pair {
    let echo_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_url = format!("http://{}", echo_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(echo_listener, echo()).await });
    let mut env: HashMap<String, String> = [
        ("SERVER__LISTEN", "127.0.0.1:0"),
        ("SERVER__PUBLIC_URL", "http://gateway.test"),
        // So the request id a test sends is kept: answers must not differ by a random id.
        ("SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
        ("PLEO__AUTH_URL", "http://127.0.0.1:9"),
        ("PLEO__API_URL", &echo_url),
        ("PLEO__CLIENT_ID", "dispatch-tests"),
        ("PLEO__SCOPES", "users:read"),
        ("SESSION__STORE", "memory"),
        ("PROXY__PLEO_PREFIX", setup.pleo_prefix),
        ("PROXY__PUBLIC_PATHS", "/static/*"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("PLEO_GATEWAY__{k}"), v.to_owned()))
    .collect();
    if setup.app {
        env.insert("PLEO_GATEWAY__PROXY__UPSTREAM".into(), echo_url.clone());
    }
    let config = Config::load_with_env(None, &env).unwrap();
    let state = AppState::new(config, Store::Memory(MemoryStore::new())).unwrap();
    let now = now_ms();
    let (id, _) = state
        .sessions
        .create(SessionData {
            access_token: SecretString::from("dispatch-access-token"),
            refresh_token: Some(SecretString::from("dispatch-refresh-token")),
            access_expires_at_ms: now + 3_600_000,
            access_lifetime_ms: 3_600_000,
            subject: Some("urn:pleo:company:00000000-0000-0000-0000-000000000007".into()),
            scopes: vec!["users:read".into()],
            created_at_ms: now,
        })
        .await
        .unwrap();
    let cookie = format!("{}={}", state.cookies.name, id.as_str());
    let direct = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let routed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pair = Pair {
        direct: direct.local_addr().unwrap(),
        routed: routed.local_addr().unwrap(),
        cookie,
    };
    serve(direct, app(state.clone())).await;
    serve(routed, routed_only(state)).await;
    pair
}

/// Sends `request` as written and returns the answer with its `Date` left out, and cookie
/// values (sealed with a fresh nonce each time) and a login redirect's `state` and
/// `code_challenge` (fresh random values each time) blanked.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // Bounded, so that a connection left open fails the comparison instead of hanging it.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        answer.extend_from_slice(b"\r\n[no end within 10 s]");
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let head: Vec<String> = head
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .map(|line| match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("set-cookie") => {
                let attributes = value.split_once(';').map_or("", |(_, a)| a);
                format!("{name}: …;{attributes}")
            }
            Some((name, value)) if name.eq_ignore_ascii_case("location") => {
                let blanked: Vec<String> = value
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((key, _)) if key == "state" || key == "code_challenge" => {
                            format!("{key}=…")
                        }
                        _ => pair.to_owned(),
                    })
                    .collect();
                format!("{name}:{}", blanked.join("&"))
            }
            _ => line.to_owned(),
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

/// One request: method, target, and what a client adds.
#[derive(Clone, Debug)]
struct Sent {
    method: &'static str,
    target: String,
    session: bool,
    csrf: bool,
    html: bool,
}

impl Sent {
    fn write(&self, cookie: &str, n: usize) -> String {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nX-Request-Id: dispatch-{n}\r\n",
            self.method, self.target
        );
        if self.session {
            out.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        if self.csrf {
            out.push_str("X-CSRF: 1\r\n");
        }
        if self.html {
            out.push_str("Accept: text/html\r\nSec-Fetch-Mode: navigate\r\n");
        }
        if matches!(self.method, "POST" | "PUT" | "DELETE") {
            out.push_str("Content-Length: 2\r\n\r\nhi");
        } else {
            out.push_str("\r\n");
        }
        out
    }
}

fn sent() -> impl Strategy<Value = Sent> {
    let segment = prop::sample::select(vec![
        "auth", "AUTH", "pleo", "pleo2", "api", "healthz", "readyz", "metrics", "login", "check",
        "x", "chunk", "static", "%2F", "a%20b", ".", "..", "",
    ]);
    let path = (prop::collection::vec(segment, 0..4), any::<bool>()).prop_map(|(s, slash)| {
        let mut path = format!("/{}", s.join("/"));
        if slash && !path.ends_with('/') {
            path.push('/');
        }
        path
    });
    let query = prop::sample::select(vec!["", "?q=1", "?return_to=/x"]);
    // Origin-form mostly; also absolute-form (RFC 9112 §3.2.2) and the asterisk of OPTIONS.
    let form = prop::sample::select(vec!["", "", "", "", "http://gateway.test", "*"]);
    let method = prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]);
    (
        method,
        (form, path, query),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(method, (form, path, query), session, csrf, html)| Sent {
            method,
            target: if form == "*" {
                "*".to_owned()
            } else {
                format!("{form}{path}{query}")
            },
            session,
            csrf,
            html,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_request_is_answered_as_the_router_alone_answers_it(
        setup in prop::sample::select(SETUPS.to_vec()),
        requests in prop::collection::vec(sent(), 1..6)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let pair = pair(setup).await;
            for (n, request) in requests.iter().enumerate() {
                let raw = request.write(&pair.cookie, n);
                let direct = exchange(pair.direct, &raw).await;
                let routed = exchange(pair.routed, &raw).await;
                prop_assert_eq!(&direct, &routed, "{:?} {:?}", setup, request);
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn both_proxies_and_the_gateways_routes_answer_through_the_stack() {
    let pair = pair(SETUPS[0]).await;
    let get = |target: &str, session: bool| Sent {
        method: "GET",
        target: target.into(),
        session,
        csrf: false,
        html: false,
    };
    // Through the direct paths: the app and Pleo (the stand-in echoes what it was sent).
    let app = exchange(pair.direct, &get("/x?q=1", true).write(&pair.cookie, 0)).await;
    assert!(app.starts_with("HTTP/1.1 200"), "{app}");
    assert!(app.contains("GET /x?q=1\n"), "{app}");
    assert!(app.contains("x-pleo-subject: urn:pleo:company:"), "{app}");
    let pleo = exchange(
        pair.direct,
        &get("/pleo/v1/users", true).write(&pair.cookie, 1),
    )
    .await;
    assert!(pleo.starts_with("HTTP/1.1 200"), "{pleo}");
    assert!(pleo.contains("GET /v1/users\n"), "{pleo}");
    assert!(
        pleo.contains("authorization: Bearer dispatch-access-token"),
        "{pleo}"
    );
    // The gateway's own routes are still the router's.
    let health = exchange(pair.direct, &get("/healthz", false).write(&pair.cookie, 2)).await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
        "{health}"
    );
    let session = exchange(
        pair.direct,
        &get("/auth/session", true).write(&pair.cookie, 3),
    )
    .await;
    assert!(session.contains("urn:pleo:company:"), "{session}");
    let prefix = exchange(pair.direct, &get("/pleo/", true).write(&pair.cookie, 4)).await;
    assert!(prefix.starts_with("HTTP/1.1 404"), "{prefix}");
    // The gateway's namespaces never reach the app, their roots with a slash included.
    for root in ["/metrics/", "/auth/"] {
        let answer = exchange(pair.direct, &get(root, true).write(&pair.cookie, 5)).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{root}: {answer}");
    }
}
