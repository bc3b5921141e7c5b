//! A response body read straight off its connection, as the server-side connection asks for
//! it, framed by its length, the chunked coding or the connection's close; the connection is
//! handed back ([`ConnBody::take_reusable`]) once the body has been read to its end.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::body::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio_util::io::poll_read_buf;

use super::{Conn, READ_SIZE};
use crate::http_client::wire::{ChunkedDecoder, Decoded, ResponseFraming, WireError};

/// The largest read of a body: reads grow up to it while they come back full.
const MAX_READ_SIZE: usize = 256 * 1024;

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the connection closed before the response body ended")]
    CutShort,
    #[error("reading the response body failed")]
    Read(#[source] io::Error),
    #[error("the response body is malformed")]
    Wire(#[from] WireError),
    #[error("the upgrade response failed")]
    Upgrade(#[source] hyper::Error),
}

/// A response body read from its connection, which it hands back once read to the end
/// ([`ConnBody::take_reusable`]).
#[derive(Debug)]
pub struct ConnBody {
    /// Boxed, as in the pool: a connection with its TLS state is over a kilobyte, and moves
    /// between the pool and the body on every request.
    conn: Option<Box<Conn>>,
    state: BodyState,
    reusable: bool,
    read_size: usize,
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl ConnBody {
    /// The body of a response with `framing` on `conn`; `reusable` if the connection may carry
    /// another request after it.
    pub fn new(conn: Box<Conn>, framing: ResponseFraming, reusable: bool) -> Self {
        let state = match framing {
            ResponseFraming::Empty | ResponseFraming::Length(0) => BodyState::Done,
            ResponseFraming::Length(n) => BodyState::Length(n),
            ResponseFraming::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            ResponseFraming::UntilClose => BodyState::UntilClose,
        };
        Self {
            conn: Some(conn),
            state,
            reusable,
            read_size: READ_SIZE,
        }
    }

    /// The connection, once the body has been read to its end, if it can carry another
    /// request: nothing beyond the body was received, and neither side asked to close.
    pub fn take_reusable(&mut self) -> Option<Box<Conn>> {
        if !self.is_end_stream() || !self.reusable {
            return None;
        }
        self.conn.take().filter(|conn| conn.buf.is_empty())
    }

    /// Reads more into the buffer: the number of bytes read (0 at the end of the stream).
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, BodyError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.buf.reserve(self.read_size);
        let n = ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf))
            .map_err(BodyError::Read)?;
        if n >= self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match &mut self.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) if !buf.is_empty() => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = BodyState::Done;
                    }
                    return Poll::Ready(Some(Ok(buf.split_to(take).freeze())));
                }
                BodyState::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::Done) => {
                        self.state = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(error) => return Poll::Ready(Some(Err(error.into()))),
                },
                BodyState::UntilClose if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(buf.split().freeze())));
                }
                BodyState::Length(_) | BodyState::UntilClose => {}
            }
            if ready!(self.fill(cx))? == 0 {
                if matches!(self.state, BodyState::UntilClose) {
                    self.state = BodyState::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(BodyError::CutShort)));
            }
        }
    }
}

impl hyper::body::Body for ConnBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = ready!(self.poll_data(cx));
        if let Some(Err(_)) = &polled {
            // A broken body leaves its connection in no state to be reused.
            self.conn = None;
            self.state = BodyState::Done;
            self.reusable = false;
        }
        Poll::Ready(polled.map(|data| data.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
