//! The pool against real sockets: a small HTTP/1.1 server that counts its connections.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use http::StatusCode;

use super::*;

/// How the test server treats a connection after its first response.
#[derive(Clone, Copy)]
enum After {
    /// Serves requests for as long as the client likes.
    KeepAlive,
    /// Closes the connection without saying so (no `Connection: close`), as a server whose
    /// keep-alive timeout ran out does.
    Close,
    /// Reads the next request and closes without answering it, as a server whose keep-alive
    /// timeout ran out just as the request arrived does.
    DropNext,
}

struct Server {
    origin: String,
    connections: Arc<AtomicUsize>,
    hosts: Arc<Mutex<Vec<String>>>,
}

/// A server answering every request with `body` (and its length), reading requests by hand
/// so that it can close a connection at the worst moment.
async fn server(after: After, body: &'static str) -> Server {
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    scripted(after, response.into_bytes()).await
}

/// A server answering every request head with the bytes of `response`, without reading any
/// request body.
async fn scripted(after: After, response: Vec<u8>) -> Server {
    let response = Arc::new(response);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (Arc::clone(&connections), Arc::clone(&hosts));
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&seen);
            let response = Arc::clone(&response);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut served = false;
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                    buffer.drain(..end + 4);
                    if matches!(after, After::DropNext) && served {
                        return;
                    }
                    served = true;
                    if let Some(host) = head.lines().find_map(|line| line.strip_prefix("host: ")) {
                        seen.lock().unwrap().push(host.to_owned());
                    }
                    if socket.write_all(&response).await.is_err() {
                        return;
                    }
                    if matches!(after, After::Close) {
                        return;
                    }
                }
            });
        }
    });
    Server {
        origin,
        connections,
        hosts,
    }
}

fn pool_for(origin: &str, idle_timeout: Duration) -> Pool {
    let connector = super::super::connector(Duration::from_secs(1), None).unwrap();
    super::super::pool(connector, origin, idle_timeout, 8).unwrap()
}

async fn get(pool: &Pool, path: &str) -> String {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = pool.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_connection_read_to_the_end_is_used_again() {
    let server = server(After::KeepAlive, "hello").await;
    let pool = pool_for(&server.origin, Duration::from_secs(30));
    for _ in 0..5 {
        assert_eq!(get(&pool, "/a?b=c").await, "hello");
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(), 1);
    // Host is the origin's host and port (not the scheme's default port).
    let port = server.origin.rsplit(':').next().unwrap().to_owned();
    assert!(
        server
            .hosts
            .lock()
            .unwrap()
            .iter()
            .all(|h| *h == format!("127.0.0.1:{port}"))
    );
}

#[tokio::test]
async fn a_body_dropped_half_way_takes_its_connection_with_it() {
    let server = server(After::KeepAlive, "a body that is never read").await;
    let pool = pool_for(&server.origin, Duration::from_secs(30));
    let request = Request::get("/").body(Body::empty()).unwrap();
    let response = pool.request(request).await.unwrap();
    drop(response);
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(get(&pool, "/").await, "a body that is never read");
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_not_an_error() {
    let server = server(After::Close, "fresh").await;
    let pool = pool_for(&server.origin, Duration::from_secs(30));
    for _ in 0..5 {
        assert_eq!(get(&pool, "/").await, "fresh");
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_request_the_server_dropped_unanswered_goes_again_only_if_idempotent() {
    let server = server(After::DropNext, "again").await;
    let pool = pool_for(&server.origin, Duration::from_secs(30));
    assert_eq!(get(&pool, "/").await, "again");
    // The idle connection is open; the server reads the GET and closes: it goes again on a
    // new connection.
    assert_eq!(get(&pool, "/").await, "again");
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    // A POST is not repeated, even without a body: it may have had its effect.
    let request = Request::post("/").body(Body::empty()).unwrap();
    let error = pool.request(request).await.unwrap_err();
    assert!(matches!(error, PoolError::Request(_)), "{error:?}");
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_chunked_response_is_decoded_and_its_connection_used_again() {
    let response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nhe\r\n3\r\nllo\r\n0\r\ntrailer: 1\r\n\r\n";
    let server = scripted(After::KeepAlive, response.to_vec()).await;
    let pool = pool_for(&server.origin, Duration::from_secs(30));
    assert_eq!(get(&pool, "/").await, "hello");
    assert_eq!(get(&pool, "/").await, "hello");
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_is_not_used_again_after_close_or_bytes_beyond_the_response() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ] {
        let server = scripted(After::KeepAlive, response.to_vec()).await;
        let pool = pool_for(&server.origin, Duration::from_secs(30));
        assert_eq!(get(&pool, "/").await, "ok");
        assert_eq!(get(&pool, "/").await, "ok");
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test]
async fn a_response_of_uncertain_length_is_an_error() {
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok";
    let server = scripted(After::KeepAlive, response.to_vec()).await;
    let pool = pool_for(&server.origin, Duration::from_secs(30));
    let request = Request::get("/").body(Body::empty()).unwrap();
    let error = pool.request(request).await.unwrap_err();
    assert!(matches!(error, PoolError::Request(_)), "{error:?}");
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn an_answer_before_the_whole_body_ends_the_connections_use() {
    // The server answers as soon as it has the head; the body never ends.
    let server = server(After::KeepAlive, "early").await;
    let pool = pool_for(&server.origin, Duration::from_secs(30));
    let chunks = futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("part")) })
        .chain(futures_util::stream::pending());
    let request = Request::post("/").body(Body::from_stream(chunks)).unwrap();
    let response = pool.request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "early");
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn an_expired_idle_connection_is_not_used() {
    let server = server(After::KeepAlive, "x").await;
    let pool = pool_for(&server.origin, Duration::ZERO);
    get(&pool, "/").await;
    get(&pool, "/").await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_bursts_surplus_closes_soon_and_a_few_stay_for_the_idle_timeout() {
    let server = server(After::KeepAlive, "x").await;
    let connector = super::super::connector(Duration::from_secs(1), None).unwrap();
    let pool = super::super::pool(connector, &server.origin, Duration::from_secs(30), 64).unwrap();
    // A burst: KEEP_IDLE + 4 requests in flight at once (each response unread holds its
    // connection), then every body read, so every connection comes back.
    let burst = KEEP_IDLE + 4;
    let mut responses = Vec::new();
    for _ in 0..burst {
        let request = Request::get("/").body(Body::empty()).unwrap();
        responses.push(pool.request(request).await.unwrap());
    }
    for response in responses {
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), burst);
    assert_eq!(pool.idle_count(), burst);
    assert_eq!(pool.idle_with_buffers(), burst);

    // Just back: nothing goes, and they keep their buffers for the next request.
    pool.inner.sweep(Instant::now());
    assert_eq!(pool.idle_count(), burst);
    assert_eq!(pool.idle_with_buffers(), burst);
    // Idle for SURPLUS_IDLE: the surplus goes, KEEP_IDLE stay (without their buffers) and are
    // used again.
    pool.inner.sweep(Instant::now() + SURPLUS_IDLE);
    assert_eq!(pool.idle_count(), KEEP_IDLE);
    assert_eq!(pool.idle_with_buffers(), 0);
    assert_eq!(get(&pool, "/").await, "x");
    assert_eq!(server.connections.load(Ordering::SeqCst), burst);
    // Past the idle timeout: all go.
    pool.inner.sweep(Instant::now() + Duration::from_secs(30));
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let pool = pool_for(&origin, Duration::from_secs(30));
    let request = Request::get("/").body(Body::empty()).unwrap();
    let error = pool.request(request).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
}

#[test]
fn the_host_header_leaves_out_the_default_port() {
    let host = |origin: &str| {
        let connector = super::super::connector(Duration::from_secs(1), None).unwrap();
        Pool::new(connector, origin.parse().unwrap(), Duration::ZERO, 1)
            .unwrap()
            .inner
            .host
            .clone()
    };
    assert_eq!(host("http://app:80"), "app");
    assert_eq!(host("https://api.example.com"), "api.example.com");
    assert_eq!(host("https://api.example.com:8443"), "api.example.com:8443");
    assert_eq!(host("http://[::1]:3000"), "[::1]:3000");
}
