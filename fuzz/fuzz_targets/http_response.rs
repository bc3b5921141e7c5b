//! The pool's HTTP/1.1 reader: `http_client::wire::{parse_response_head, ChunkedDecoder}` on
//! arbitrary bytes from the app or Pleo, which arrive over connections that are used again.
//!
//! Input: the first byte picks the request method (odd: HEAD, even: GET) and the read sizes
//! (its value seeds a small generator of 1..=64-byte reads); the rest is what the server sent.
//!
//! Invariants:
//! - Neither parser panics or loops: each read either completes a head, asks for more, or
//!   fails.
//! - Reading is the same however the bytes are split: the head, the framing, the error (if
//!   any) and the decoded body are equal whether the input arrives at once or in small reads.
//! - A head is never larger than `MAX_HEAD_BYTES` and has at most `MAX_HEADERS` fields.
//! - The framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; a response that
//!   ends with the connection is never reusable; a `Length` is what every `Content-Length`
//!   field says; a response with `Transfer-Encoding` keeps no `Content-Length`.
//! - The chunked decoder yields no more bytes than it was given, and once `Done` it has
//!   consumed exactly up to the end of the trailer section (what follows is left for the next
//!   response).
#![no_main]

use bytes::BytesMut;
use http::{Method, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use pleo_gateway::http_client::wire::{
    ChunkedDecoder, Decoded, MAX_HEAD_BYTES, MAX_HEADERS, ResponseFraming, ResponseHead,
    WireError, parse_response_head,
};

/// What reading the input came to: the head's outcome, and for a chunked body its outcome,
/// the decoded bytes, and how many bytes were left after it.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    head: Result<Option<HeadSummary>, WireError>,
    body: Option<(Result<bool, WireError>, Vec<u8>, usize)>,
}

#[derive(Debug, PartialEq, Eq)]
struct HeadSummary {
    status: StatusCode,
    framing: ResponseFraming,
    reusable: bool,
    fields: Vec<(String, Vec<u8>)>,
    head_len: usize,
}

/// Reads `input` in reads of the sizes `sizes` yields.
fn read(input: &[u8], method: &Method, mut sizes: impl FnMut() -> usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let head = loop {
        let take = sizes().min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + take]);
        fed += take;
        let before = buf.len();
        match parse_response_head(&mut buf, method) {
            Ok(Some(head)) => {
                let head_len = before - buf.len();
                break Ok(Some((check_head(&head, method, head_len), head)));
            }
            Ok(None) if fed == input.len() => break Ok(None),
            Ok(None) => assert_eq!(buf.len(), before, "an incomplete head consumed bytes"),
            Err(error) => break Err(error),
        }
    };
    let body = match &head {
        Ok(Some((_, head))) if head.framing == ResponseFraming::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            let mut data = Vec::new();
            let body_start = fed - buf.len();
            let result = loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(bytes)) => {
                        assert!(!bytes.is_empty(), "an empty data frame");
                        data.extend_from_slice(&bytes);
                    }
                    Ok(Decoded::Done) => break Ok(true),
                    Ok(Decoded::NeedMore) if fed == input.len() => break Ok(false),
                    Ok(Decoded::NeedMore) => {
                        assert!(buf.is_empty(), "NeedMore with bytes left");
                        let take = sizes().min(input.len() - fed);
                        buf.extend_from_slice(&input[fed..fed + take]);
                        fed += take;
                    }
                    Err(error) => break Err(error),
                }
            };
            assert!(data.len() <= input.len() - body_start);
            // What is left over: unread input plus the buffer. Only meaningful once Done.
            let left = if result == Ok(true) { input.len() - fed + buf.len() } else { 0 };
            Some((result, data, left))
        }
        _ => None,
    };
    Outcome {
        head: head.map(|parsed| parsed.map(|(summary, _)| summary)),
        body,
    }
}

fn check_head(head: &ResponseHead, method: &Method, head_len: usize) -> HeadSummary {
    assert!(head_len <= MAX_HEAD_BYTES);
    assert!(head.headers.len() <= MAX_HEADERS);
    let bodiless = *method == Method::HEAD
        || head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    match head.framing {
        ResponseFraming::Empty => assert!(bodiless),
        ResponseFraming::UntilClose => assert!(!head.reusable && !bodiless),
        ResponseFraming::Chunked => {
            assert!(!bodiless);
            assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
        }
        ResponseFraming::Length(n) => {
            assert!(!bodiless);
            assert!(!head.headers.contains_key(header::TRANSFER_ENCODING));
            for value in head.headers.get_all(header::CONTENT_LENGTH) {
                for element in value.as_bytes().split(|&b| b == b',') {
                    let text = std::str::from_utf8(element.trim_ascii()).expect("digits");
                    assert_eq!(text.parse::<u64>().ok(), Some(n));
                }
            }
        }
    }
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH) || bodiless);
    }
    HeadSummary {
        status: head.status,
        framing: head.framing,
        reusable: head.reusable,
        fields: head
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect(),
        head_len,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let method = if first & 1 == 1 { Method::HEAD } else { Method::GET };
    let whole = read(input, &method, || usize::MAX);
    // A small linear congruential generator: reproducible splits from the first byte.
    let mut state = u32::from(first) | 1;
    let split = read(input, &method, || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (state >> 16) as usize % 64
    });
    assert_eq!(whole, split, "the outcome depends on how the bytes were split");
});
