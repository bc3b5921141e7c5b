//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! The upstream proxy against a real app on an ephemeral port: the gateway is served by the
//! production accept loop, sessions are created directly in its memory store.

mod access;
mod hostile;
mod http;
mod websocket;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Request, WebSocketUpgrade, ws::Message},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use futures_util::StreamExt;
use secrecy::SecretString;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    app::{self, AppState},
    config::Config,
    session::{SessionData, Store, memory_store::MemoryStore, now_ms},
};

/// Public paths every harness is configured with.
const PUBLIC_PATHS: &str = "/favicon.ico,/static/*";
/// The subject of sessions the harness creates.
const SUBJECT: &str = "urn:pleo:company:00000000-0000-0000-0000-000000000042";
/// The Pleo access token of those sessions: it must never reach the app.
const PLEO_TOKEN: &str = "pleo-access-token-never-for-the-app";

/// A gateway in front of the test app.
struct Harness {
    state: AppState,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Harness {
    /// Gateway + app with default settings.
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Gateway + app, with extra `PLEO_GATEWAY__…` settings.
    async fn start_with(extra: &[(&str, &str)]) -> Self {
        let app = serve(echo_app()).await;
        Self::in_front_of(&format!("http://{app}"), extra).await
    }

    /// A gateway whose upstream is `upstream` (which may be down).
    async fn in_front_of(upstream: &str, extra: &[(&str, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut env: HashMap<String, String> = [
            ("SERVER__LISTEN", addr.to_string()),
            ("SERVER__PUBLIC_URL", format!("http://{addr}")),
            ("PLEO__AUTH_URL", "http://127.0.0.1:9".into()),
            ("PLEO__API_URL", "http://127.0.0.1:9".into()),
            ("PLEO__CLIENT_ID", "upstream-tests".into()),
            ("PLEO__SCOPES", "users:read,export-jobs:read".into()),
            ("SESSION__STORE", "memory".into()),
            ("PROXY__UPSTREAM", upstream.into()),
            ("PROXY__PUBLIC_PATHS", PUBLIC_PATHS.into()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("PLEO_GATEWAY__{k}"), v))
        .collect();
        for (k, v) in extra {
            env.insert(format!("PLEO_GATEWAY__{k}"), (*v).to_owned());
        }
        let config = Config::load_with_env(None, &env).unwrap();
        let state = AppState::new(config, Store::Memory(MemoryStore::new())).unwrap();
        tokio::spawn(app::run(
            listener,
            app::app(state.clone()),
            std::future::pending(),
        ));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { state, addr, http }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a live session and returns its `Cookie` pair.
    async fn login(&self) -> String {
        let now = now_ms();
        let (id, _) = self
            .state
            .sessions
            .create(SessionData {
                access_token: SecretString::from(PLEO_TOKEN),
                refresh_token: Some(SecretString::from("pleo-refresh-token")),
                access_expires_at_ms: now + 3_600_000,
                access_lifetime_ms: 3_600_000,
                subject: Some(SUBJECT.into()),
                scopes: vec!["users:read".into(), "export-jobs:read".into()],
                created_at_ms: now,
            })
            .await
            .unwrap();
        format!("{}={}", self.state.cookies.name, id.as_str())
    }

    /// Sends a request line exactly as written (no client-side path clean-up) and returns the
    /// status and body.
    async fn raw_get(&self, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

/// Serves `router` on an ephemeral loopback port.
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// The app behind the gateway: echoes what it received, sets cookies, streams, stalls, and
/// echoes WebSocket messages.
fn echo_app() -> Router {
    Router::new()
        .route("/set-cookies", get(set_cookies))
        .route("/upload", post(count_upload))
        .route("/download/{bytes}", get(download))
        .route("/slow", get(slow))
        .route("/ws", any(websocket_echo))
        .fallback(echo)
}

async fn echo(request: Request) -> Json<serde_json::Value> {
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    Json(serde_json::json!({
        "method": request.method().as_str(),
        "target": request.uri().to_string(),
        "headers": headers,
    }))
}

async fn set_cookies() -> Response {
    let mut headers = HeaderMap::new();
    for cookie in [
        "app-pref=compact; Path=/",
        "pleo-session=planted-by-app; Path=/",
        "__Host-pleo-session=planted-by-app; Path=/; Secure",
    ] {
        headers.append(header::SET_COOKIE, HeaderValue::from_static(cookie));
    }
    (headers, "cookies").into_response()
}

async fn count_upload(body: Body) -> String {
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        total += chunk.len();
    }
    total.to_string()
}

async fn download(Path(bytes): Path<usize>) -> Body {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = bytes.div_ceil(chunk.len());
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let len = (bytes - i * chunk.len()).min(chunk.len());
        Ok::<_, std::io::Error>(chunk.slice(..len))
    }));
    Body::from_stream(stream)
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

async fn websocket_echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) || socket.send(message).await.is_err() {
                break;
            }
        }
    })
}

/// The headers the app echoed, as (name, value) pairs.
fn echoed_headers(echo: &serde_json::Value) -> Vec<(String, String)> {
    serde_json::from_value(echo["headers"].clone()).unwrap()
}

/// The single value of `name` the app received, if any.
fn echoed(echo: &serde_json::Value, name: &str) -> Option<String> {
    let values: Vec<String> = echoed_headers(echo)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect();
    assert!(values.len() <= 1, "{name} arrived {} times", values.len());
    values.into_iter().next()
}
