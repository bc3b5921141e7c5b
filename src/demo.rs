//! `pleo-gateway demo`: the whole product on one machine with no setup — the gateway with an
//! in-memory store, an embedded mock Pleo on a loopback port, and a small internal app behind
//! the gateway's upstream proxy, to click through login → consent → a proxied Pleo API call →
//! logout. The app shows the identity headers the gateway sent it, exactly as a real app would
//! receive them.

use std::{collections::HashMap, future::Future, time::Duration};

use axum::{Router, http::HeaderMap, response::Html, routing::get};
use tokio::net::TcpListener;

use crate::{
    app::{self, AppState},
    config::Config,
    mock_pleo::{MockClient, MockPleo, MockPleoConfig},
    session::{Store, memory_store::MemoryStore},
};

/// The demo's OAuth client, registered with the embedded mock.
const DEMO_CLIENT_ID: &str = "demo-client";
const DEMO_CLIENT_SECRET: &str = "demo-secret";
/// Short enough that a visitor sees a refresh happen within a couple of minutes.
const DEMO_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(120);

/// Runs the demo on `127.0.0.1:port` until `shutdown` resolves.
pub async fn run(
    port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let gateway_listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let gateway_addr = gateway_listener.local_addr()?;
    let public_url = format!("http://{gateway_addr}");

    let app_listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let app_url = format!("http://{}", app_listener.local_addr()?);

    let mock_listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let mock_url = format!("http://{}", mock_listener.local_addr()?);
    let mock = MockPleo::new(MockPleoConfig {
        clients: vec![MockClient {
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: Some(DEMO_CLIENT_SECRET.into()),
            redirect_uris: vec![format!("{public_url}/auth/callback")],
        }],
        access_token_ttl: DEMO_ACCESS_TOKEN_TTL,
        auto_approve: false,
        ..MockPleoConfig::default()
    });

    // The demo is configured through the same loader and keys an operator uses.
    let env: HashMap<String, String> = [
        ("PLEO_GATEWAY__SERVER__LISTEN", gateway_addr.to_string()),
        ("PLEO_GATEWAY__SERVER__PUBLIC_URL", public_url.clone()),
        ("PLEO_GATEWAY__PLEO__AUTH_URL", mock_url.clone()),
        ("PLEO_GATEWAY__PLEO__API_URL", mock_url.clone()),
        ("PLEO_GATEWAY__PLEO__CLIENT_ID", DEMO_CLIENT_ID.into()),
        (
            "PLEO_GATEWAY__PLEO__CLIENT_SECRET",
            DEMO_CLIENT_SECRET.into(),
        ),
        (
            "PLEO_GATEWAY__PLEO__SCOPES",
            "users:read,export-jobs:read".into(),
        ),
        ("PLEO_GATEWAY__SESSION__STORE", "memory".into()),
        ("PLEO_GATEWAY__PROXY__UPSTREAM", app_url),
        ("PLEO_GATEWAY__PROXY__PUBLIC_PATHS", "/,/favicon.ico".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = Config::load_with_env(None, &env)
        .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    let state = AppState::new(config, Store::Memory(MemoryStore::new()))?;
    let router = app::app(state);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mock_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let mock_task = tokio::spawn(mock.serve(mock_listener, mock_stop));
    let app_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let app_task = tokio::spawn(app::run(app_listener, demo_app(), app_stop));

    println!(
        "pleo-gateway demo is running: open {public_url}/ in a browser (mock Pleo at {mock_url}; Ctrl-C stops)"
    );
    let result = app::run(gateway_listener, router, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = mock_task.await;
    let _ = app_task.await;
    result?;
    Ok(())
}

/// Runs only the demo's internal app on `127.0.0.1:port` until `shutdown` resolves: the stand-in
/// for an internal app in the compose stack, behind a gateway of its own.
pub async fn run_app(
    port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("demo app listening on http://{}", listener.local_addr()?);
    app::run(listener, demo_app(), shutdown).await?;
    Ok(())
}

/// The demo's internal app: a public landing page at `/`, and `/app`, which only logged-in users
/// reach (the gateway guarantees it) and which shows the identity headers it was given.
fn demo_app() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("demo/landing.html")) }),
        )
        .route("/app", get(app_page))
}

async fn app_page(headers: HeaderMap) -> Html<String> {
    let header = |name: &str| {
        let value = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(not sent)");
        crate::error::escape_html(value)
    };
    Html(
        include_str!("demo/app.html")
            .replace("{{SUBJECT}}", &header("x-pleo-subject"))
            .replace("{{SCOPES}}", &header("x-pleo-scopes"))
            .replace("{{REQUEST_ID}}", &header("x-request-id")),
    )
}
