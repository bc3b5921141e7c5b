//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! WebSockets through the upstream proxy, with a hand-written RFC 6455 client (a handshake and
//! small frames are all these tests need).

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::Harness;

/// Opens a socket to `path`; returns the status code and, on 101, the connection.
async fn connect(
    h: &Harness,
    path: &str,
    origin: Option<&str>,
    cookie: Option<&str>,
) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        h.addr
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read the response head byte by byte so no frame is consumed with it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.unwrap();
        head.push(byte);
    }
    let head = String::from_utf8(head).unwrap();
    (head[9..12].parse().unwrap(), stream)
}

/// Sends a masked text frame (clients must mask).
async fn send_text(stream: &mut TcpStream, text: &str) {
    assert!(text.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
}

/// Reads one small unmasked frame; returns its opcode and payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, String) {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.unwrap();
    let len = usize::from(header[1] & 0x7f);
    assert!(len < 126 && header[1] & 0x80 == 0);
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    (header[0] & 0x0f, String::from_utf8(payload).unwrap())
}

/// Whether the server closed the connection within a few seconds.
async fn closed_soon(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn websocket_echo_works_and_is_closed_on_logout() {
    let h = Harness::start().await;
    let cookie = h.login().await;
    let other_cookie = h.login().await;
    let origin = h.origin();
    let (status, mut socket) = connect(&h, "/ws", Some(&origin), Some(&cookie)).await;
    assert_eq!(status, 101);
    let (status, mut other) = connect(&h, "/ws", Some(&origin), Some(&other_cookie)).await;
    assert_eq!(status, 101);

    for message in ["hello", "second message"] {
        send_text(&mut socket, message).await;
        assert_eq!(read_frame(&mut socket).await, (0x1, message.to_owned()));
    }
    assert_eq!(h.state.websockets.open_sessions(), 2);

    let response = h
        .http
        .post(h.url("/auth/logout"))
        .header("cookie", &cookie)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert!(
        closed_soon(&mut socket).await,
        "socket still open after logout"
    );

    // The other session's socket is untouched.
    send_text(&mut other, "still here").await;
    assert_eq!(read_frame(&mut other).await, (0x1, "still here".to_owned()));

    // And the logged-out cookie cannot open a new one.
    let (status, _) = connect(&h, "/ws", Some(&origin), Some(&cookie)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn websocket_from_another_origin_is_refused() {
    let h = Harness::start().await;
    let cookie = h.login().await;
    for origin in [Some("https://evil.example"), Some("null"), None] {
        let (status, _) = connect(&h, "/ws", origin, Some(&cookie)).await;
        assert_eq!(status, 403, "{origin:?}");
    }
}

#[tokio::test]
async fn websocket_without_session_is_refused() {
    let h = Harness::start().await;
    let (status, _) = connect(&h, "/ws", Some(&h.origin()), None).await;
    assert_eq!(status, 401);
}
