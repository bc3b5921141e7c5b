//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! Hostile clients: trickled and malformed uploads, connection hoarding, chosen request ids,
//! address and URL claims, path tricks and the gateway's own namespaces.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{Request, State},
    routing::get,
    serve::ListenerExt,
};
use reqwest::{StatusCode, header};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};

use super::{Harness, echo_app, echoed, echoed_headers, serve};

/// Reads one response (head, then a `Content-Length` body, or everything up to EOF without
/// one) and returns its status and body. A reset after the response counts as its end.
async fn read_response<R: AsyncRead + Unpin>(reader: &mut R) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| buf.len() >= head_end + 4 + n) {
                break;
            }
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.len() >= 12, "no response: {text:?}");
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends `request` as written on a fresh connection and reads the response.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer (and close) before it has read everything.
    let _ = stream.write_all(request).await;
    read_response(&mut stream).await
}

/// The `error` code of a gateway JSON error body.
fn error_code(body: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    json["error"].as_str().unwrap_or_default().to_owned()
}

/// A request id the gateway made: a hyphenated UUID.
fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The echo app on an ephemeral port, counting the TCP connections it accepts.
async fn counting_echo_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, echo_app()).await });
    (addr, accepted)
}

/// An app that records every request target it receives and answers "app".
async fn recording_app() -> (String, Arc<Mutex<Vec<String>>>) {
    async fn record(State(seen): State<Arc<Mutex<Vec<String>>>>, request: Request) -> &'static str {
        seen.lock().unwrap().push(request.uri().to_string());
        "app"
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new().fallback(record).with_state(Arc::clone(&seen));
    (format!("http://{}", serve(app).await), seen)
}

/// Polls `counter` until it has not changed for half a second (at most `limit`), and returns
/// its value then.
async fn settled(counter: &AtomicUsize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut last = counter.load(Ordering::SeqCst);
    let mut unchanged_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        } else if unchanged_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    last
}

/// Sends `head`, 1 KiB of body and then one byte every 300 ms (never a pause the idle limit
/// of 60 s would catch); returns the answer and how long it took, or `None` after 4 s.
async fn trickle(addr: SocketAddr, head: String) -> Option<(u16, String, Duration)> {
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let started = Instant::now();
    writer.write_all(head.as_bytes()).await.unwrap();
    writer.write_all(&[b'x'; 1024]).await.unwrap();
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tick.tick().await;
            if writer.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(4), read_response(&mut reader)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    answer.ok().map(|(status, body)| (status, body, elapsed))
}

#[tokio::test]
async fn a_trickled_upload_is_cut_at_the_body_deadline_with_408() {
    // Read first: 1 KiB is below `body_buffer_bytes`, the app is not contacted yet.
    let buffered = Harness::start_with(&[("PROXY__BODY_TIMEOUT", "2s")]).await;
    // Streaming: past a 512-byte buffer the body is on its way to an app that reads it.
    let streamed = Harness::start_with(&[
        ("PROXY__BODY_TIMEOUT", "2s"),
        ("PROXY__BODY_BUFFER_BYTES", "512"),
    ])
    .await;
    let cookie = streamed.login().await;
    let (buffered_answer, streamed_answer) = tokio::join!(
        trickle(
            buffered.addr,
            format!(
                "POST /static/upload HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n",
                buffered.addr
            ),
        ),
        trickle(
            streamed.addr,
            format!(
                "POST /upload HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nX-CSRF: 1\r\nContent-Length: 1000000\r\n\r\n",
                streamed.addr
            ),
        ),
    );
    for (phase, answer) in [("buffered", buffered_answer), ("streamed", streamed_answer)] {
        let (status, body, elapsed) = answer.unwrap_or_else(|| {
            panic!(
                "{phase}: no answer within 4 s: the trickle was not cut at the 2 s body deadline"
            )
        });
        assert_eq!(status, 408, "{phase}: {body}");
        assert_eq!(error_code(&body), "body_timeout", "{phase}: {body}");
        assert!(
            elapsed >= Duration::from_millis(1800) && elapsed <= Duration::from_millis(3500),
            "{phase}: answered after {elapsed:?}, not at the 2 s body deadline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploaders_hold_no_app_connections() {
    const UPLOADERS: usize = 500;
    let (app, accepted) = counting_echo_app().await;
    let h = Harness::in_front_of(&format!("http://{app}"), &[]).await;
    let head = format!(
        "POST /static/upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000000\r\n\r\n",
        h.addr
    );
    let mut stalled = Vec::with_capacity(UPLOADERS);
    for _ in 0..UPLOADERS {
        let mut stream = TcpStream::connect(h.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b'x'; 1024]).await.unwrap();
        stalled.push(stream);
    }
    assert_eq!(
        settled(&accepted, Duration::from_secs(4)).await,
        0,
        "{UPLOADERS} clients that sent 1 KiB and stalled made the app accept connections"
    );

    // Everyone else is still served, over one new app connection.
    let response = tokio::time::timeout(
        Duration::from_secs(3),
        h.http.get(h.url("/static/x")).send(),
    )
    .await
    .expect("a normal request hung behind the stalled uploads")
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["target"], "/static/x");
    assert_eq!(
        settled(&accepted, Duration::from_secs(2)).await,
        1,
        "only the normal request reached the app"
    );
    drop(stalled);
}

/// The app of `upstream_connections_are_bounded`: every request waits for the gate to open.
#[derive(Clone)]
struct Gate {
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    open: watch::Receiver<bool>,
}

/// Counts a request in flight until dropped (also when the gateway gives up on it).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn gated(State(gate): State<Gate>) -> &'static str {
    let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight(Arc::clone(&gate.in_flight));
    gate.most.fetch_max(now, Ordering::SeqCst);
    let mut open = gate.open.clone();
    let _ = open.wait_for(|open| *open).await;
    "released"
}

#[tokio::test]
async fn upstream_connections_are_bounded() {
    const REQUESTS: usize = 10;
    let (release, open) = watch::channel(false);
    let gate = Gate {
        in_flight: Arc::new(AtomicUsize::new(0)),
        most: Arc::new(AtomicUsize::new(0)),
        open,
    };
    let app = serve(
        Router::new()
            .route("/block", get(gated))
            .with_state(gate.clone()),
    )
    .await;
    let h = Harness::in_front_of(
        &format!("http://{app}"),
        &[("PROXY__UPSTREAM_MAX_CONNECTIONS", "4")],
    )
    .await;
    let cookie = h.login().await;
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let request = h
                .http
                .get(h.url("/block"))
                .header(header::COOKIE, &cookie)
                .send();
            tokio::spawn(async move {
                let response = request.await.unwrap();
                let status = response.status();
                (status, response.text().await.unwrap())
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(3);
    while gate.in_flight.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A moment for any request beyond the limit to show up at the app.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let most = gate.most.load(Ordering::SeqCst);
    release.send(true).unwrap();
    assert_eq!(
        most, 4,
        "the app saw {most} requests at once with upstream_max_connections = 4"
    );

    let mut served = 0;
    for request in requests {
        let (status, body) = tokio::time::timeout(Duration::from_secs(8), request)
            .await
            .expect("a request never finished")
            .unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(body, "released");
                served += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => assert_eq!(error_code(&body), "upstream_busy"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(served >= 4, "only {served} requests were served");
    assert!(gate.most.load(Ordering::SeqCst) <= 4);
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_not_502() {
    let h = Harness::start().await;
    // A bad chunk-size line while the gateway is still reading the body before the app.
    let request = format!(
        "POST /static/upload HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        h.addr
    );
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        raw_exchange(h.addr, request.as_bytes()),
    )
    .await
    .expect("no answer to a malformed chunked body");
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "body_malformed", "{body}");

    // The same after more than `body_buffer_bytes` (64 KiB) went by: the body is already
    // streaming to an app that reads it, and the fault is still the client's.
    let cookie = h.login().await;
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nX-CSRF: 1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        h.addr,
        96 * 1024
    )
    .into_bytes();
    request.extend_from_slice(&[b'u'; 96 * 1024]);
    request.extend_from_slice(b"\r\nzz\r\nhello\r\n0\r\n\r\n");
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(5), raw_exchange(h.addr, &request))
            .await
            .expect("no answer to a malformed chunked body");
    assert_ne!(
        status, 502,
        "the client's framing was blamed on the app: {body}"
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "body_malformed", "{body}");
}

#[tokio::test]
async fn client_chosen_request_ids_never_reach_the_app() {
    let h = Harness::start().await;
    let cookie = h.login().await;
    for (path, cookie) in [("/static/x", ""), ("/api/x", cookie.as_str())] {
        for chosen in [
            "client-chosen-id",
            "../../etc/passwd",
            "<script>alert(1)</script>",
        ] {
            let response = h
                .http
                .get(h.url(path))
                .header(header::COOKIE, cookie)
                .header("x-request-id", chosen)
                .header("x_request_id", "underscore-chosen-id")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let returned = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(is_uuid(&returned), "{path} {chosen}: answered {returned}");
            let echo: serde_json::Value = response.json().await.unwrap();
            assert_eq!(echoed(&echo, "x-request-id"), Some(returned), "{path}");
            assert_eq!(echoed(&echo, "x_request_id"), None, "{path}");
            let all = echo.to_string();
            for id in [chosen, "underscore-chosen-id"] {
                assert!(!all.contains(id), "{id} reached the app: {all}");
            }
        }
    }
}

#[tokio::test]
async fn a_trusted_proxys_request_id_is_kept() {
    let h = Harness::start_with(&[("SERVER__TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let edge_id = "edge-7f3a:lb1.eu_west";
    let response = h
        .http
        .get(h.url("/static/x"))
        .header("x-request-id", edge_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], edge_id);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed(&echo, "x-request-id").as_deref(), Some(edge_id));

    // Not a plain token, or not one id: even a trusted proxy's is replaced.
    for ids in [
        &["../../etc/passwd"][..],
        &["a..b"][..],
        &["has space"][..],
        &[&*"a".repeat(129)][..],
        &["first-id", "second-id"][..],
    ] {
        let mut request = h.http.get(h.url("/static/x"));
        for id in ids {
            request = request.header("x-request-id", *id);
        }
        let response = request.send().await.unwrap();
        let returned = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(is_uuid(&returned), "{ids:?}: answered {returned}");
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echoed(&echo, "x-request-id"), Some(returned), "{ids:?}");
    }
}

#[tokio::test]
async fn client_address_claims_are_stripped() {
    const CLAIMS: &[(&str, &str)] = &[
        ("Client-IP", "203.0.113.66"),
        ("True-Client-IP", "203.0.113.66"),
        ("X-Client-IP", "203.0.113.66"),
        ("CF-Connecting-IP", "203.0.113.66"),
        ("X-Cluster-Client-IP", "203.0.113.66"),
        ("Fastly-Client-IP", "203.0.113.66"),
        ("X-Original-Forwarded-For", "203.0.113.66"),
        ("X-Original-URL", "/claimed/admin"),
        ("X-Rewrite-URL", "/claimed/admin"),
        ("X-HTTP-Method-Override", "CLAIMEDMETHOD"),
        ("true_client_ip", "203.0.113.66"),
        ("cf_connecting_ip", "203.0.113.66"),
        ("x_original_url", "/claimed/admin"),
        ("x_http_method_override", "CLAIMEDMETHOD"),
    ];
    let folded = |name: &str| name.to_ascii_lowercase().replace('_', "-");
    let claimed: Vec<String> = CLAIMS.iter().map(|(k, _)| folded(k)).collect();
    for trusted in [None, Some("127.0.0.1/32")] {
        let extra: Vec<(&str, &str)> = trusted
            .map(|t| ("SERVER__TRUSTED_PROXIES", t))
            .into_iter()
            .collect();
        let h = Harness::start_with(&extra).await;
        let cookie = h.login().await;
        for (path, cookie) in [("/static/x", ""), ("/api/x", cookie.as_str())] {
            let mut request = h
                .http
                .get(h.url(path))
                .header(header::COOKIE, cookie)
                .header("x-app-header", "kept");
            for (name, value) in CLAIMS {
                request = request.header(*name, *value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let echo: serde_json::Value = response.json().await.unwrap();
            assert_eq!(echoed(&echo, "x-app-header").as_deref(), Some("kept"));
            let arrived: Vec<String> = echoed_headers(&echo)
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| claimed.contains(&folded(k)))
                .collect();
            assert!(
                arrived.is_empty(),
                "trusted peer {trusted:?}, {path}: {arrived:?} reached the app"
            );
            let all = echo.to_string();
            for value in ["203.0.113.66", "/claimed/admin", "CLAIMEDMETHOD"] {
                assert!(!all.contains(value), "{value} reached the app: {all}");
            }
            assert_eq!(echoed(&echo, "x-real-ip").as_deref(), Some("127.0.0.1"));
        }
    }
}

#[tokio::test]
async fn an_encoded_semicolon_does_not_make_a_path_public() {
    let (app, seen) = recording_app().await;
    let h = Harness::in_front_of(&app, &[]).await;
    for target in [
        "/static/..%3B/admin",
        "/static/..%3b/admin",
        "/static/%2e%2e%3B/admin",
    ] {
        let (status, body) = h.raw_get(target, &[]).await;
        assert_eq!(status, 401, "{target}: {body}");
        assert_eq!(error_code(&body), "not_authenticated", "{target}");
    }
    // A real public path still is one, and reaches the app.
    let (status, body) = h.raw_get("/static/app.css", &[]).await;
    assert_eq!((status, body.as_str()), (200, "app"));
    assert_eq!(*seen.lock().unwrap(), ["/static/app.css"]);
}

#[tokio::test]
async fn the_gateways_namespaces_never_reach_the_app() {
    let (app, seen) = recording_app().await;
    let h = Harness::in_front_of(&app, &[]).await;
    let cookie = h.login().await;
    let with_session = [("Cookie", cookie.as_str())];
    for path in ["/auth", "/auth/", "/pleo", "/pleo/", "/metrics"] {
        for headers in [&[][..], &with_session[..]] {
            let (status, body) = h.raw_get(path, headers).await;
            assert_eq!(status, 404, "GET {path}: {body}");
            assert_eq!(error_code(&body), "not_found", "GET {path}");
        }
        let response = h
            .http
            .post(h.url(path))
            .header(header::COOKIE, &cookie)
            .header("x-csrf", "1")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "POST {path}");
        assert_eq!(error_code(&response.text().await.unwrap()), "not_found");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    // Names that merely start like them are the app's.
    for path in ["/authx", "/pleox", "/metricsx"] {
        let (status, body) = h.raw_get(path, &with_session).await;
        assert_eq!((status, body.as_str()), (200, "app"), "{path}");
    }
    assert_eq!(*seen.lock().unwrap(), ["/authx", "/pleox", "/metricsx"]);
}

#[tokio::test]
async fn dot_segments_cannot_climb_out_of_the_pleo_api_path() {
    let (app, seen) = recording_app().await;
    let h = Harness::in_front_of(&app, &[]).await;
    let cookie = h.login().await;
    let with_session = [("Cookie", cookie.as_str())];
    for target in [
        "/pleo/../v2/x",
        "/pleo/%2E%2E/x",
        "/pleo/%2e%2e/x",
        "/pleo/v1/../../v2/x",
        "/pleo/./v1/x",
    ] {
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), h.raw_get(target, &with_session))
                .await
                .unwrap_or_else(|_| panic!("{target}: no answer"));
        assert_eq!(status, 400, "{target} was not refused before Pleo: {body}");
        assert_eq!(error_code(&body), "bad_request", "{target}");
    }
    // A clean path does go to Pleo (a dead port here), so the 400s above were refusals.
    let (status, body) = h.raw_get("/pleo/v2/x", &with_session).await;
    assert!(status == 502 || status == 504, "{status}: {body}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

/// A WebSocket handshake that declares a body is refused before anything reaches the app: sent
/// on with its `Content-Length` but without the bytes, it would make the app read the next
/// request on that pooled connection (another user's) as the missing body.
#[tokio::test]
async fn a_websocket_handshake_with_a_body_is_refused() {
    let h = Harness::start().await;
    let origin = h.origin();
    for framing in [("content-length", "19"), ("transfer-encoding", "chunked")] {
        let (status, body) = h
            .raw_get(
                "/static/a",
                &[
                    ("upgrade", "websocket"),
                    ("connection", "Upgrade"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ("origin", &origin),
                    framing,
                ],
            )
            .await;
        assert_eq!(status, 400, "{framing:?}: {body}");
        assert!(body.contains("must not carry a body"), "{body}");
    }
}
