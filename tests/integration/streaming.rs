//! Large bodies stream through the proxy in both directions instead of being buffered.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{StatusCode, header};
use sha2::{Digest, Sha256};

use crate::support::{Options, PATIENCE, StoreKind, TestEnv, eventually, json_body};

/// 20 MiB: far more than any buffer on the way should hold.
const TWENTY_MB: u64 = 20 * 1024 * 1024;
/// The mock holds `/big` after this much until the test has seen the first bytes.
const HELD_AFTER: u64 = 1024 * 1024;

/// A 20 MB download reaches the client while the upstream is still paused at 1 MiB, which is
/// only possible if the gateway forwards chunks as they come; the bytes all arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_download_streams_through_without_buffering() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;
    env.tap.hold_big_after(HELD_AFTER);

    let response = tokio::time::timeout(
        PATIENCE,
        browser.send(browser.get(&format!("/pleo/big?bytes={TWENTY_MB}"))),
    )
    .await
    .expect("the response head arrives while the upstream body is held");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    let mut stream = response.bytes_stream();

    // A gateway that buffered the body would sit here forever: the upstream is paused.
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the first chunk arrives while the upstream is held at 1 MiB")
        .expect("a first chunk")
        .expect("a readable chunk");
    let produced = env.tap.big_bytes_sent();
    assert!(
        produced <= HELD_AFTER,
        "the upstream had only produced {produced} bytes when the first chunk arrived"
    );
    assert!(!first.is_empty());

    let mut received = 0u64;
    check_pattern(&mut received, &first);
    // Everything the upstream produced before the pause can come through; then it is stuck.
    while received < produced {
        let chunk = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("held-back bytes already produced arrive")
            .expect("more chunks")
            .expect("a readable chunk");
        check_pattern(&mut received, &chunk);
    }

    env.tap.release_big();
    let mut chunks = 1u64;
    while let Some(chunk) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the rest of the body keeps coming")
    {
        check_pattern(&mut received, &chunk.expect("a readable chunk"));
        chunks += 1;
    }
    assert_eq!(received, TWENTY_MB, "every byte arrived exactly once");
    assert!(chunks > 1, "the body came in more than one chunk");
    assert_eq!(env.tap.big_bytes_sent(), TWENTY_MB);
}

/// Checks that `chunk`, starting at byte `received` of `/big`, follows the mock's pattern
/// (byte `i` is `i % 256`), and advances `received`.
fn check_pattern(received: &mut u64, chunk: &Bytes) {
    for (offset, byte) in chunk.iter().enumerate() {
        let position = *received + offset as u64;
        assert_eq!(
            u64::from(*byte),
            position % 256,
            "byte {position} corrupted"
        );
    }
    *received += chunk.len() as u64;
}

/// A 20 MB upload of unknown length streams to Pleo: the mock is reading it while the client is
/// still sending, and the digest of what arrived matches what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_upload_streams_through_intact() {
    let env = TestEnv::start(Options::new(StoreKind::Memory)).await;
    let browser = env.browser();
    browser.login().await;

    const CHUNK: usize = 64 * 1024;
    let chunks = (TWENTY_MB as usize) / CHUNK;
    let chunk_at = |index: usize| -> Bytes {
        (0..CHUNK)
            .map(|i| ((index * 7 + i * 13) % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    };
    let mut digest = Sha256::new();
    for index in 0..chunks {
        digest.update(chunk_at(index));
    }
    let expected: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    // Halfway through, the sender waits until the mock has read some of the body: a gateway that
    // collected the whole upload before forwarding it would never let that happen.
    let overlapped = Arc::new(AtomicBool::new(false));
    let tap = Arc::clone(&env.tap);
    let flag = Arc::clone(&overlapped);
    let body = futures_util::stream::iter(0..chunks).then(move |index| {
        let tap = Arc::clone(&tap);
        let flag = Arc::clone(&flag);
        async move {
            if index == chunks / 2 {
                let seen = tokio::time::timeout(Duration::from_secs(10), async {
                    // The check owns its `Arc`: this body stream must be `Send`, and rustc cannot
                    // yet prove that of a check that borrows from its closure.
                    let tap = Arc::clone(&tap);
                    let reading = move || std::future::ready(tap.echo_bytes_received() > 0);
                    eventually("the mock reads the upload", PATIENCE, reading).await;
                })
                .await;
                flag.store(seen.is_ok(), Ordering::SeqCst);
            }
            Ok::<Bytes, std::io::Error>(chunk_at(index))
        }
    });

    let response = browser
        .send(
            browser
                .post("/pleo/echo/uploads")
                .header("X-CSRF", "1")
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(reqwest::Body::wrap_stream(body)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let echo = json_body(response).await;
    assert_eq!(echo["body_bytes"], TWENTY_MB);
    assert_eq!(echo["body_sha256"], expected);
    assert!(
        overlapped.load(Ordering::SeqCst),
        "Pleo saw nothing of the upload before the client had finished sending"
    );
}

/// A declared body larger than `proxy.max_body_bytes` is refused before anything goes out.
/// (Small sizes, so the whole request is read with its head and closing the connection after
/// the early answer cannot turn into a reset that hides the response.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_over_the_size_limit_is_413() {
    let env =
        TestEnv::start(Options::new(StoreKind::Memory).env("PROXY__MAX_BODY_BYTES", "1000")).await;
    let browser = env.browser();
    browser.login().await;
    let before = env.mock.stats().api_requests;
    let response = browser
        .send(
            browser
                .post("/pleo/echo/uploads")
                .header("X-CSRF", "1")
                .body(vec![b'x'; 2000]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(response).await["error"], "body_too_large");
    assert_eq!(env.mock.stats().api_requests, before);
}

/// A body of unknown length (chunked) is held to the same limit: it cannot slip past
/// `proxy.max_body_bytes` just by not declaring its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_upload_over_the_size_limit_is_413() {
    let env =
        TestEnv::start(Options::new(StoreKind::Memory).env("PROXY__MAX_BODY_BYTES", "1000")).await;
    let browser = env.browser();
    browser.login().await;
    let chunks = futures_util::stream::iter(
        (0..3).map(|_| Ok::<Bytes, std::io::Error>(Bytes::from(vec![b'x'; 700]))),
    );
    let response = browser
        .send(
            browser
                .post("/pleo/echo/uploads")
                .header("X-CSRF", "1")
                .body(reqwest::Body::wrap_stream(chunks)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(response).await["error"], "body_too_large");
    assert!(
        env.tap.echo_bytes_received() <= 1000,
        "no more than the limit went to Pleo"
    );
}
