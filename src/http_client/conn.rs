//! One connection of the pool: a request written and its response read by the task that sent
//! it, and the response body read straight off the socket.
//!
//! hyper's client runs every connection as a task of its own, fed through a channel: each
//! request crossed two tasks and two channels, and each pooled connection held a channel
//! block of about 17 KiB. Here the request's own task writes the head and body and reads the
//! response ([`Conn::send`]); the body ([`ConnBody`]) reads on as the server-side connection
//! asks for it. The rules of the bytes on the wire are in [`super::wire`].

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use axum::body::Body;
use bytes::BytesMut;
use http::Method;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::wire::{RequestFraming, ResponseHead, WireError, parse_response_head, push_chunk_size};

mod body;

pub use body::{BodyError, ConnBody};

/// What the connector hands over: TCP, or TLS over TCP.
pub type Io = TokioIo<hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// The first read of a response, and the smallest of a body.
const READ_SIZE: usize = 8 * 1024;
/// Request body bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// Why an exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("writing the request failed")]
    Write(#[source] io::Error),
    #[error("reading the response failed")]
    Read(#[source] io::Error),
    #[error("the connection closed before a response arrived")]
    Closed,
    #[error("the response could not be read")]
    Wire(#[from] WireError),
    #[error("the request body could not be read")]
    Body(#[source] axum::BoxError),
    #[error("the request body did not match its Content-Length")]
    BodyLength,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedSwitch,
}

/// A failed [`Conn::send`].
#[derive(Debug)]
pub struct SendError {
    pub error: ExchangeError,
    /// Whether any byte of a response arrived.
    pub answered: bool,
    /// The request head and body, if nothing of the body was taken: the request can go out
    /// again (a request without a body always can).
    pub unsent: Option<(Vec<u8>, Body)>,
}

/// One HTTP/1.1 connection and what has been read from it beyond the last response.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// The buffer the last request head was written from, kept for the next.
    out: Vec<u8>,
}

impl Conn {
    pub fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// An empty buffer to write the next request head into: the last one's, if it is back.
    pub fn head_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether the connection is still open with nothing unasked-for on it: a connection the
    /// server closed (or wrote to) while it sat idle is not used again.
    pub fn is_fresh(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        self.buf.is_empty()
            && Pin::new(&mut self.io)
                .poll_read(&mut cx, &mut probe)
                .is_pending()
    }

    /// Gives back the buffers of a connection that has been idle for a while, so that it
    /// holds only its socket. A connection in use keeps them from one request to the next:
    /// taking new ones cost two allocations a request.
    pub fn shed_buffers(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.out = Vec::new();
    }

    /// Whether the connection holds a read or write buffer (for tests).
    #[cfg(test)]
    pub fn holds_buffers(&self) -> bool {
        self.buf.capacity() > 0 || self.out.capacity() > 0
    }

    /// Writes `head` and `body` (framed as `framing` says) and reads the response head,
    /// skipping interim (1xx) responses. The app may answer before it has the whole body; the
    /// rest is then not sent, and the connection not used again. Returns the head, and whether
    /// the whole request went out.
    pub async fn send(
        &mut self,
        head: Vec<u8>,
        body: Body,
        framing: RequestFraming,
        method: &Method,
    ) -> Result<(ResponseHead, bool), SendError> {
        let left = match framing {
            RequestFraming::Length(n) => n,
            _ => 0,
        };
        let mut exchange = Exchange {
            out: head,
            written: 0,
            body: (!body.is_end_stream()).then_some(body),
            body_touched: false,
            chunked: framing == RequestFraming::Chunked,
            left,
            unflushed: false,
            answered: false,
        };
        if exchange.body.is_none() && left != 0 {
            return Err(exchange.fail(ExchangeError::BodyLength));
        }
        self.buf.reserve(READ_SIZE);
        match poll_fn(|cx| exchange.poll(self, cx, method)).await {
            Ok(head) => {
                let complete = exchange.is_complete();
                exchange.out.clear();
                self.out = exchange.out;
                Ok((head, complete))
            }
            Err(error) => Err(exchange.fail(error)),
        }
    }
}

/// A request on its way out, and its response on its way in.
struct Exchange {
    /// Bytes to write, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// The request body, until its end has been read.
    body: Option<Body>,
    /// Whether anything of the body was taken (or written): until then `out` holds the head
    /// alone, and the request can go out again.
    body_touched: bool,
    chunked: bool,
    /// `Content-Length` bytes still to come from the body.
    left: u64,
    /// Whether bytes were written since the last flush.
    unflushed: bool,
    answered: bool,
}

impl Exchange {
    fn is_complete(&self) -> bool {
        self.body.is_none() && self.written == self.out.len()
    }

    fn fail(self, error: ExchangeError) -> SendError {
        SendError {
            error,
            answered: self.answered,
            // Until a body frame arrives, `out` holds the head and nothing else.
            unsent: (!self.body_touched).then(|| (self.out, self.body.unwrap_or_else(Body::empty))),
        }
    }

    fn poll(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        loop {
            let wrote = self.poll_write(&mut conn.io, cx)?;
            let read = match poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(ExchangeError::Closed)),
                Poll::Ready(Ok(_)) => true,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(ExchangeError::Read(error))),
                Poll::Pending => false,
            };
            if read {
                self.answered = true;
                while let Some(head) = parse_response_head(&mut conn.buf, method)? {
                    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Poll::Ready(Err(ExchangeError::UnaskedSwitch));
                    }
                    if !head.status.is_informational() {
                        return Poll::Ready(Ok(head));
                    }
                    // 100 Continue, 103 Early Hints: the final response follows.
                }
                conn.buf.reserve(READ_SIZE);
            }
            if !wrote && !read {
                return Poll::Pending;
            }
        }
    }

    /// Moves the request along as far as the socket and the body allow; whether it moved.
    fn poll_write(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Result<bool, ExchangeError> {
        let mut moved = false;
        loop {
            moved |= self.gather(cx)?;
            if self.written < self.out.len() {
                match Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Err(ExchangeError::Write(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.unflushed = true;
                        moved = true;
                        // The head stays until body bytes follow it, so that a request the
                        // server never saw can go out again ([`SendError::unsent`]).
                        if self.written == self.out.len() && self.body_touched {
                            self.out.clear();
                            self.written = 0;
                        }
                        continue;
                    }
                    Poll::Ready(Err(error)) => return Err(ExchangeError::Write(error)),
                    Poll::Pending => return Ok(moved),
                }
            }
            // All written so far: flush it, also while the body is still to come, so that the
            // server sees the head of a request whose body waits on the client (TLS buffers).
            if self.unflushed {
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        moved = true;
                    }
                    Poll::Ready(Err(error)) => return Err(ExchangeError::Write(error)),
                    Poll::Pending => {}
                }
            }
            // Sent, waiting for the socket, or waiting for the body (its waker is registered).
            return Ok(moved);
        }
    }

    /// Appends what the body has ready (up to [`WRITE_BATCH`]) to the bytes to write, framed.
    fn gather(&mut self, cx: &mut Context<'_>) -> Result<bool, ExchangeError> {
        let mut moved = false;
        while let Some(body) = self.body.as_mut() {
            if self.out.len() - self.written >= WRITE_BATCH {
                break;
            }
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.body_touched = true;
                    moved = true;
                    // Trailers are not passed on.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        push_chunk_size(&mut self.out, data.len());
                        self.out.extend_from_slice(&data);
                        self.out.extend_from_slice(b"\r\n");
                    } else {
                        let len = data.len() as u64;
                        if len > self.left {
                            return Err(ExchangeError::BodyLength);
                        }
                        self.left -= len;
                        self.out.extend_from_slice(&data);
                    }
                }
                Poll::Ready(None) => {
                    self.body = None;
                    moved = true;
                    if self.chunked {
                        self.body_touched = true;
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    } else if self.left != 0 {
                        return Err(ExchangeError::BodyLength);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    self.body_touched = true;
                    return Err(ExchangeError::Body(error.into()));
                }
                Poll::Pending => break,
            }
        }
        Ok(moved)
    }
}
