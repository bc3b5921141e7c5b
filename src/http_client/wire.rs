//! HTTP/1.1 as the pool's connections write and read it (RFC 9112): the request head, the
//! response head and its framing, and the chunked coding. Pure functions over buffers, so that
//! every rule is tested (and fuzzed) without a socket.
//!
//! The responses come from the app or from Pleo, over connections that are used again for
//! other users' requests. So framing is strict: a response whose length cannot be told for
//! sure (conflicting `Content-Length`s, a malformed chunk) is an error, a response that is
//! framed by closing the connection is never followed by another, and a head larger than
//! [`MAX_HEAD_BYTES`] or with more than [`MAX_HEADERS`] fields is refused.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};

/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields a response head may have.
pub const MAX_HEADERS: usize = 100;
/// Header fields the gateway may add to a response it passes on.
const RESPONSE_FIELDS_ADDED: usize = 4;
/// Most bytes of chunk extensions on one chunk-size line, and of trailer fields in all.
const MAX_CHUNK_EXTRAS: usize = 16 * 1024;

/// A response the pool cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the response head is not HTTP/1.1: {0}")]
    Malformed(&'static str),
    #[error("the response head is larger than 64 KiB or has more than 100 fields")]
    TooLarge,
    #[error("the response has conflicting or invalid Content-Length fields")]
    BadLength,
    #[error("the chunked response body is malformed: {0}")]
    BadChunk(&'static str),
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no `Content-Length` (a GET, HEAD, DELETE... without one).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// How a request's body goes on the wire; the gateway chooses, whatever framing the client
/// used. `empty`: the body is known to hold nothing; `exact`: its length, if known;
/// `declared`: the request's `Content-Length`. An empty body is sent as `Content-Length: 0`
/// where the method expects a body or the client said so, and without any framing otherwise;
/// a body of unknown length is chunked.
pub fn request_framing(
    method: &Method,
    empty: bool,
    exact: Option<u64>,
    declared: Option<u64>,
) -> RequestFraming {
    if empty {
        let expects_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        if declared.is_some() || expects_body {
            RequestFraming::Length(0)
        } else {
            RequestFraming::None
        }
    } else if let Some(length) = exact.or(declared) {
        RequestFraming::Length(length)
    } else {
        RequestFraming::Chunked
    }
}

/// Writes `METHOD path HTTP/1.1`, the fields of `headers` and the framing field. `headers`
/// must hold no `Content-Length` or `Transfer-Encoding` of its own; names and values are valid
/// already (the `http` types hold no CR or LF), so nothing here can split the head.
pub fn encode_request_head(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        // `rest % 10` is below 10.
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes the chunk-size line of a chunk of `len` bytes.
pub fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut rest = len;
    loop {
        at -= 1;
        digits[at] = HEX[rest & 0xf];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// How a response body is framed (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: a response to HEAD, a 1xx, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// The chunked coding.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// Whether the connection can carry another request once this body has been read.
    pub reusable: bool,
}

/// Takes a complete response head off the front of `buf`: `Ok(None)` while it is incomplete.
/// `method` is the request's (a response to HEAD has no body whatever it says).
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, WireError> {
    // Offsets into `buf`, so that the values can share the head's bytes once it is split off.
    let mut fields = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let (len, code, minor, count) = {
        // Slots httparse fills as it parses: filling a hundred empty headers first, on every
        // poll of every response, cost a sixth as much again as parsing a small head.
        let mut parsed = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut parsed,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(WireError::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooLarge),
            Err(error) => return Err(WireError::Malformed(parse_error(error))),
        };
        if len > MAX_HEAD_BYTES {
            return Err(WireError::TooLarge);
        }
        let start = buf.as_ptr() as usize;
        let count = response.headers.len();
        for (slot, field) in fields.iter_mut().zip(response.headers.iter()) {
            let name = field.name.as_ptr() as usize - start;
            let value = field.value.as_ptr() as usize - start;
            *slot = (
                name,
                name + field.name.len(),
                value,
                value + field.value.len(),
            );
        }
        let code = response
            .code
            .ok_or(WireError::Malformed("no status code"))?;
        let minor = response.version.ok_or(WireError::Malformed("no version"))?;
        (len, code, minor, count)
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Malformed("status code"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Room for the few fields the gateway adds on the way out (`Cache-Control`, the request
    // id...), so that adding them does not regrow the map.
    let mut headers = HeaderMap::with_capacity(count + RESPONSE_FIELDS_ADDED);
    for &(name_start, name_end, value_start, value_end) in &fields[..count] {
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| WireError::Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| WireError::Malformed("header value"))?;
        headers.append(name, value);
    }
    let mut reusable = version == Version::HTTP_11 && !has_token(&headers, "close");
    let framing = if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        ResponseFraming::Empty
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        // Transfer-Encoding overrides Content-Length; a response carrying both may be an
        // attempt at desynchronising the connection, so it is not used again (§6.3 item 3).
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            reusable = false;
        }
        if last_coding_is_chunked(&headers) {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        }
    } else if headers.contains_key(header::CONTENT_LENGTH) {
        ResponseFraming::Length(content_length(&headers)?)
    } else {
        ResponseFraming::UntilClose
    };
    if framing == ResponseFraming::UntilClose {
        reusable = false;
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        reusable,
    }))
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line end",
        httparse::Error::Status => "invalid status",
        httparse::Error::Version => "invalid version",
        _ => "invalid response head",
    }
}

/// Whether a `Connection` field lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|listed| listed.trim().eq_ignore_ascii_case(token))
}

fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// The one length every `Content-Length` field (and list element) agrees on (RFC 9110 §8.6).
fn content_length(headers: &HeaderMap) -> Result<u64, WireError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for element in value.as_bytes().split(|&b| b == b',') {
            let digits = element.trim_ascii();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(WireError::BadLength);
            }
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|seen| seen != n) {
                return Err(WireError::BadLength);
            }
            length = Some(n);
        }
    }
    length.ok_or(WireError::BadLength)
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The buffer ended inside the coding: read more.
    NeedMore,
    /// The last chunk and the trailer section are read; the connection is at the next response.
    Done,
}

/// Decodes the chunked coding (RFC 9112 §7.1) from a buffer that fills as bytes arrive.
/// Extensions and trailer fields are read past (bounded), not passed on. Line ends must be
/// CRLF: a bare LF, a missing CRLF after a chunk or a size that is not hex is an error.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of extensions on this size line, or of trailer fields so far.
    extras: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In the chunk size: its value and digit count so far.
    Size(u64, u8),
    /// In the chunk extensions of a chunk of this size, up to the CR.
    Extension(u64),
    /// After the CR of the size line of a chunk of this size.
    SizeLf(u64),
    /// In the chunk data, with this many bytes to go.
    Data(u64),
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line, up to its CR.
    TrailerLine,
    /// After the CR of a trailer field line.
    TrailerLf,
    /// After the CR of the final empty line.
    FinalLf,
    Done,
}

impl Default for ChunkState {
    fn default() -> Self {
        Self::Size(0, 0)
    }
}

impl ChunkedDecoder {
    /// Decodes what `buf` holds, taking the bytes it uses off its front.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            if let ChunkState::Data(left) = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let rest = left - take as u64;
                self.state = if rest == 0 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data(rest)
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == ChunkState::Done {
                return Ok(Decoded::Done);
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
        }
    }

    fn step(&mut self, byte: u8) -> Result<ChunkState, WireError> {
        use ChunkState::*;
        Ok(match (self.state, byte) {
            (Size(value, digits), _) if byte.is_ascii_hexdigit() => {
                // 15 hex digits stay below u64::MAX / 16, so the next step cannot overflow.
                if digits == 15 {
                    return Err(WireError::BadChunk("chunk size too large"));
                }
                let digit = match byte {
                    b'0'..=b'9' => byte - b'0',
                    b'a'..=b'f' => byte - b'a' + 10,
                    _ => byte - b'A' + 10,
                };
                Size(value * 16 + u64::from(digit), digits + 1)
            }
            (Size(_, 0), _) => return Err(WireError::BadChunk("chunk size is not hex")),
            (Size(value, _), b'\r') => SizeLf(value),
            (Size(value, _), b';' | b' ' | b'\t') => {
                self.extras = 0;
                Extension(value)
            }
            (Size(..), _) => return Err(WireError::BadChunk("chunk size is not hex")),
            (Extension(value), b'\r') => SizeLf(value),
            (Extension(_), b'\n') => return Err(WireError::BadChunk("bare LF")),
            (Extension(value), _) => {
                self.extras += 1;
                if self.extras > MAX_CHUNK_EXTRAS {
                    return Err(WireError::BadChunk("chunk extensions too long"));
                }
                Extension(value)
            }
            (SizeLf(0), b'\n') => {
                self.extras = 0;
                TrailerStart
            }
            (SizeLf(value), b'\n') => Data(value),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size(0, 0),
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart | TrailerLine, b'\n') => return Err(WireError::BadChunk("bare LF")),
            (TrailerLine, b'\r') => TrailerLf,
            (TrailerStart | TrailerLine, _) => {
                self.extras += 1;
                if self.extras > MAX_CHUNK_EXTRAS {
                    return Err(WireError::BadChunk("trailer section too long"));
                }
                TrailerLine
            }
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            _ => return Err(WireError::BadChunk("missing CRLF")),
        })
    }
}

#[cfg(test)]
mod tests;
