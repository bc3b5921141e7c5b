//! Test-only API endpoints: `/echo` shows exactly what a proxy forwarded, `/big` streams a
//! large response. Both stream their bodies so multi-gigabyte tests stay flat in memory.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Size of each chunk `/big` sends.
const BIG_CHUNK_BYTES: usize = 64 * 1024;
/// Largest body `/big` agrees to send.
const BIG_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// `ANY /echo/{*path}`: method, path, query, headers and a digest of the body, as received.
///
/// `headers` maps each lower-cased name to its value (repeated headers joined with `", "`);
/// `header_list` keeps every `[name, value]` pair in order for tests that care about repeats.
pub(super) async fn echo(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut header_list: Vec<[String; 2]> = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.clone());
        header_list.push([name.as_str().to_owned(), value]);
    }

    // Hash chunk by chunk: the body may be far larger than memory should hold.
    let mut hasher = Sha256::new();
    let mut body_bytes: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                body_bytes += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Err(error) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "message": format!("failed to read the request body: {error}") })),
                )
                    .into_response();
            }
        }
    }
    let body_sha256: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();

    Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "header_list": header_list,
        "body_bytes": body_bytes,
        "body_sha256": body_sha256,
    }))
    .into_response()
}

/// Query of `/big`.
#[derive(Debug, Deserialize)]
pub(super) struct BigQuery {
    bytes: Option<u64>,
}

/// `GET /big?bytes=N`: N bytes where byte `i` is `i % 256`, streamed in 64 KiB chunks.
///
/// Every chunk is the same 64 KiB buffer (64 KiB is a multiple of 256, so the pattern lines
/// up), shared by reference count: memory use does not depend on N.
pub(super) async fn big(query: Result<Query<BigQuery>, QueryRejection>) -> Response {
    let total = match query {
        Ok(Query(BigQuery { bytes: Some(n) })) => n,
        _ => return bad_request("bytes must be a non-negative integer"),
    };
    if total > BIG_MAX_BYTES {
        return bad_request("bytes must be at most 1073741824");
    }
    let chunk = Bytes::from(pattern_chunk());
    let stream = futures_util::stream::unfold(total, move |remaining| {
        let chunk = chunk.clone();
        async move {
            if remaining == 0 {
                return None;
            }
            let len =
                usize::try_from(remaining).map_or(BIG_CHUNK_BYTES, |r| r.min(BIG_CHUNK_BYTES));
            Some((
                Ok::<_, Infallible>(chunk.slice(..len)),
                remaining - len as u64,
            ))
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    response
}

/// One chunk of the `/big` pattern.
fn pattern_chunk() -> Vec<u8> {
    (0..BIG_CHUNK_BYTES).map(|i| (i % 256) as u8).collect()
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "message": message }))).into_response()
}
