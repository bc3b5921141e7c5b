//! The wire rules on their own: heads split at every byte, chunked bodies cut anywhere.

use proptest::prelude::*;

use super::*;

fn head(text: &str) -> Result<Option<ResponseHead>, WireError> {
    parse_response_head(&mut BytesMut::from(text), &Method::GET)
}

fn parsed(text: &str) -> ResponseHead {
    head(text).unwrap().unwrap()
}

#[test]
fn the_request_head_is_the_method_path_fields_and_framing() {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("app:3000"));
    headers.append("x-a", HeaderValue::from_static("1"));
    headers.append("x-a", HeaderValue::from_static("2"));
    let mut out = Vec::new();
    encode_request_head(
        &Method::POST,
        "/p?q=1",
        &headers,
        RequestFraming::Length(1234567),
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /p?q=1 HTTP/1.1\r\nhost: app:3000\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 1234567\r\n\r\n"
    );
    for (framing, field) in [
        (RequestFraming::None, ""),
        (RequestFraming::Length(0), "content-length: 0\r\n"),
        (RequestFraming::Chunked, "transfer-encoding: chunked\r\n"),
    ] {
        let mut out = Vec::new();
        encode_request_head(&Method::GET, "/", &HeaderMap::new(), framing, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("GET / HTTP/1.1\r\n{field}\r\n")
        );
    }
}

#[test]
fn the_request_framing_is_the_gateways_choice() {
    use RequestFraming::{Chunked, Length, None};
    // Empty: no framing for a GET, an explicit zero where a body is expected or was declared.
    assert_eq!(
        request_framing(&Method::GET, true, Some(0), Option::None),
        None
    );
    assert_eq!(
        request_framing(&Method::GET, true, Some(0), Some(0)),
        Length(0)
    );
    assert_eq!(
        request_framing(&Method::POST, true, Some(0), Option::None),
        Length(0)
    );
    assert_eq!(
        request_framing(&Method::PATCH, true, Option::None, Option::None),
        Length(0)
    );
    // The body's own exact length wins over the declared one; without either, chunks.
    assert_eq!(
        request_framing(&Method::PUT, false, Some(5), Some(9)),
        Length(5)
    );
    assert_eq!(
        request_framing(&Method::PUT, false, Option::None, Some(9)),
        Length(9)
    );
    assert_eq!(
        request_framing(&Method::POST, false, Option::None, Option::None),
        Chunked
    );
}

#[test]
fn chunk_sizes_are_lower_case_hex() {
    for (len, line) in [
        (0, "0\r\n"),
        (9, "9\r\n"),
        (255, "ff\r\n"),
        (65536, "10000\r\n"),
    ] {
        let mut out = Vec::new();
        push_chunk_size(&mut out, len);
        assert_eq!(out, line.as_bytes());
    }
}

#[test]
fn a_sized_response_is_reusable_and_its_fields_kept() {
    let head = parsed("HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello");
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.framing, ResponseFraming::Length(5));
    assert!(head.reusable);
    let values: Vec<_> = head.headers.get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
}

#[test]
fn the_head_is_taken_off_the_buffer_and_the_body_left() {
    let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi");
    parse_response_head(&mut buf, &Method::GET)
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..], b"hi");
}

#[test]
fn a_head_split_anywhere_parses_once_complete() {
    let text = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-b: y\r\n\r\n";
    for cut in 0..text.len() {
        assert!(head(&text[..cut]).unwrap().is_none(), "complete at {cut}?");
    }
    assert!(head(text).unwrap().is_some());
}

#[test]
fn bodiless_responses_have_no_body_whatever_they_say() {
    for (method, text) in [
        (
            Method::HEAD,
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
        ),
        (Method::GET, "HTTP/1.1 204 No Content\r\n\r\n"),
        (
            Method::GET,
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
        ),
        (Method::GET, "HTTP/1.1 100 Continue\r\n\r\n"),
    ] {
        let head = parse_response_head(&mut BytesMut::from(text), &method)
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, ResponseFraming::Empty, "{text}");
        assert!(head.reusable, "{text}");
    }
}

#[test]
fn transfer_encoding_wins_over_content_length_and_ends_reuse() {
    let head = parsed("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(head.framing, ResponseFraming::Chunked);
    assert!(head.reusable);
    let head = parsed("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(head.framing, ResponseFraming::Chunked);
    assert!(!head.reusable);
    assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    let head = parsed("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n");
    assert_eq!(head.framing, ResponseFraming::UntilClose);
    assert!(!head.reusable);
    let head =
        parsed("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: Chunked\r\n\r\n");
    assert_eq!(head.framing, ResponseFraming::Chunked);
}

#[test]
fn content_length_must_be_one_number() {
    assert_eq!(
        parsed("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n").framing,
        ResponseFraming::Length(7)
    );
    for bad in [
        "5, 6",
        "+5",
        "-1",
        "0x10",
        "",
        "1 2",
        "99999999999999999999",
        "5,",
    ] {
        let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
        assert_eq!(head(&text).unwrap_err(), WireError::BadLength, "{bad:?}");
    }
    let text = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n";
    assert_eq!(head(text).unwrap_err(), WireError::BadLength);
}

#[test]
fn only_a_framed_http_1_1_response_without_close_is_reusable() {
    let head = parsed("HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(head.framing, ResponseFraming::UntilClose);
    assert!(!head.reusable);
    assert!(
        !parsed("HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n")
            .reusable
    );
    assert!(!parsed("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").reusable);
}

#[test]
fn oversized_and_malformed_heads_are_refused() {
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
    assert_eq!(
        head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).unwrap_err(),
        WireError::TooLarge
    );
    let long = format!("HTTP/1.1 200 OK\r\nx-long: {}", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(head(&long).unwrap_err(), WireError::TooLarge);
    for bad in [
        "HTTP/1.1 200 OK\r\nx-a: b\nc\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
        "<html>\r\n\r\n",
    ] {
        assert!(matches!(head(bad), Err(WireError::Malformed(_))), "{bad:?}");
    }
}

fn decode_all(
    decoder: &mut ChunkedDecoder,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<bool, WireError> {
    loop {
        match decoder.decode(buf)? {
            Decoded::Data(data) => out.extend_from_slice(&data),
            Decoded::NeedMore => return Ok(false),
            Decoded::Done => return Ok(true),
        }
    }
}

fn decode(text: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::from(text);
    let mut out = Vec::new();
    if !decode_all(&mut decoder, &mut buf, &mut out)? {
        return Err(WireError::BadChunk("incomplete (test)"));
    }
    Ok((out, buf.to_vec()))
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_decode() {
    let (body, rest) =
        decode(b"5;a=b\r\nhello\r\n1 ; c\r\n!\r\n0\r\nx-t: 1\r\nx-u: 2\r\n\r\nHTTP/1.1").unwrap();
    assert_eq!(body, b"hello!");
    assert_eq!(rest, b"HTTP/1.1", "the next response stays in the buffer");
    let (body, _) = decode(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
    assert_eq!(body, b"0123456789");
}

#[test]
fn malformed_chunked_bodies_are_errors() {
    for bad in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\r\r0\r\n\r\n",
        b"g\r\n",
        b"\r\n",
        b";ext\r\n",
        b"1000000000000000\r\n",
        b"0\r\nx-t: 1\n\r\n",
        b"0\r\n\n",
        b"5;a\nb\r\n",
    ] {
        assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let endless_extension = [&b"1;"[..], &vec![b'a'; MAX_CHUNK_EXTRAS + 1]].concat();
    assert_eq!(
        decode(&endless_extension).unwrap_err(),
        WireError::BadChunk("chunk extensions too long")
    );
}

proptest! {
    #[test]
    fn chunked_bodies_decode_whatever_the_reads(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..8),
        cuts in prop::collection::vec(1usize..16, 1..64),
    ) {
        let mut wire = Vec::new();
        for chunk in &chunks {
            push_chunk_size(&mut wire, chunk.len());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\nNEXT");
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut cuts = cuts.into_iter().cycle();
        let mut done = false;
        while !done {
            let take = cuts.next().unwrap_or(1).min(wire.len() - fed);
            buf.extend_from_slice(&wire[fed..fed + take]);
            fed += take;
            done = decode_all(&mut decoder, &mut buf, &mut out).unwrap();
            prop_assert!(done || fed < wire.len(), "stalled with everything fed");
        }
        prop_assert_eq!(out, chunks.concat());
        let mut rest = buf.to_vec();
        rest.extend_from_slice(&wire[fed..]);
        prop_assert_eq!(rest, b"NEXT".to_vec());
    }
}
