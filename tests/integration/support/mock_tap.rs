//! What passed through the mock Pleo's listener: every token pair it issued, the bytes of
//! `/echo` uploads it read and of `/big` downloads it produced, and a brake on `/big`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use tokio::sync::watch;

/// Observations of the mock's traffic: every token pair it issued, and control over `/big`.
#[derive(Debug)]
pub struct MockTap {
    issued: Mutex<Vec<IssuedPair>>,
    /// Bytes of `/big` response bodies handed to the socket so far.
    big_bytes_sent: AtomicU64,
    /// Bytes of `/echo` request bodies the mock has read so far.
    echo_bytes_received: AtomicU64,
    /// `Some(n)`: `/big` pauses after `n` bytes until [`MockTap::release_big`].
    big_hold_after: Mutex<Option<u64>>,
    big_release: watch::Sender<bool>,
}

impl Default for MockTap {
    fn default() -> Self {
        Self {
            issued: Mutex::new(Vec::new()),
            big_bytes_sent: AtomicU64::new(0),
            echo_bytes_received: AtomicU64::new(0),
            big_hold_after: Mutex::new(None),
            big_release: watch::channel(false).0,
        }
    }
}

/// One successful token response of the mock.
#[derive(Clone, Debug)]
pub struct IssuedPair {
    /// `access_token`.
    pub access_token: String,
    /// `refresh_token`.
    pub refresh_token: String,
    /// When the mock handed the response to its socket (after any `set_token_delay`): the
    /// gateway's clock for this token's expiry starts a moment later.
    pub issued_at: tokio::time::Instant,
}

impl MockTap {
    /// Every pair `/oauth/token` issued, oldest first.
    pub fn issued(&self) -> Vec<IssuedPair> {
        self.issued.lock().expect("tap lock").clone()
    }

    /// Makes `/big` stop after `bytes` bytes until [`MockTap::release_big`] is called.
    pub fn hold_big_after(&self, bytes: u64) {
        *self.big_hold_after.lock().expect("tap lock") = Some(bytes);
    }

    /// Lets a held `/big` stream carry on to the end.
    pub fn release_big(&self) {
        self.big_release.send_replace(true);
    }

    /// Bytes of `/big` produced so far.
    pub fn big_bytes_sent(&self) -> u64 {
        self.big_bytes_sent.load(Ordering::SeqCst)
    }

    /// Bytes of `/echo` request bodies read by the mock so far.
    pub fn echo_bytes_received(&self) -> u64 {
        self.echo_bytes_received.load(Ordering::SeqCst)
    }
}

/// Middleware around the mock's router: records token responses, counts `/echo` upload bytes as
/// the mock reads them, and meters (and optionally holds) `/big` downloads.
pub async fn observe_mock(
    State(tap): State<Arc<MockTap>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let request = if path.starts_with("/echo") {
        let (parts, body) = request.into_parts();
        Request::from_parts(parts, Body::from_stream(lingering(Arc::clone(&tap), body)))
    } else {
        request
    };
    let response = next.run(request).await;
    if path == "/oauth/token" && response.status() == StatusCode::OK {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .expect("token response body");
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let field = |name: &str| json[name].as_str().unwrap_or_default().to_owned();
            tap.issued.lock().expect("tap lock").push(IssuedPair {
                access_token: field("access_token"),
                refresh_token: field("refresh_token"),
                issued_at: tokio::time::Instant::now(),
            });
        }
        return Response::from_parts(parts, Body::from(bytes));
    }
    if path == "/big" && response.status() == StatusCode::OK {
        let hold_after = *tap.big_hold_after.lock().expect("tap lock");
        let (parts, body) = response.into_parts();
        let metered = metered_big(Arc::clone(&tap), body.into_data_stream(), hold_after);
        return Response::from_parts(parts, Body::from_stream(metered));
    }
    response
}

/// Hands an `/echo` upload to the mock chunk by chunk, counting what the mock reads. If the mock
/// answers without reading it all (the bearer check's 401 reads nothing), the rest is read and
/// dropped, as servers with a lingering close do: otherwise the connection is closed with
/// unread data, the kernel answers the gateway's next bytes with a reset, and the gateway may
/// lose the early answer to that reset — a race of the test server, not of the gateway.
fn lingering(
    tap: Arc<MockTap>,
    body: Body,
) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    let (to_mock, from_client) = tokio::sync::mpsc::channel::<Result<Bytes, axum::Error>>(1);
    tokio::spawn(async move {
        let mut body = body.into_data_stream();
        let mut mock_reading = true;
        while let Some(chunk) = body.next().await {
            if mock_reading && to_mock.send(chunk).await.is_err() {
                mock_reading = false;
            }
        }
    });
    futures_util::stream::unfold((from_client, tap), |(mut from_client, tap)| async move {
        let chunk = from_client.recv().await?;
        if let Ok(bytes) = &chunk {
            tap.echo_bytes_received
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        Some((chunk, (from_client, tap)))
    })
}

/// Passes `/big`'s chunks on, counting them, and waits for the release once `hold_after` bytes
/// have gone out.
fn metered_big(
    tap: Arc<MockTap>,
    inner: impl Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
    hold_after: Option<u64>,
) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    let release = tap.big_release.subscribe();
    futures_util::stream::unfold(
        (inner, tap, release, 0u64),
        move |(mut inner, tap, mut release, sent)| async move {
            if hold_after.is_some_and(|limit| sent >= limit) {
                let _ = release.wait_for(|go| *go).await;
            }
            let chunk = inner.next().await?;
            let len = chunk.as_ref().map_or(0, |bytes| bytes.len() as u64);
            tap.big_bytes_sent.fetch_add(len, Ordering::SeqCst);
            Some((chunk, (inner, tap, release, sent + len)))
        },
    )
}
