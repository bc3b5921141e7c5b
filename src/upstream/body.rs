//! The request body on its way to the app: small bodies read whole first, larger ones
//! streamed; bounded in size, in pace and in total time.
//!
//! - **Read first.** A body of up to `proxy.body_buffer_bytes` is read completely before a
//!   connection to the app is taken (as nginx does with `client_body_buffer_size`), so a client
//!   that trickles a small upload holds no app connection at all.
//! - **Size.** A body without `Content-Length` is cut off at `proxy.max_body_bytes` (the
//!   declared length is checked before anything is read): 413.
//! - **Time.** The whole body must arrive within `proxy.body_timeout` of the request's start, and
//!   the client may not pause longer than `proxy.upstream_timeout` between chunks: 408. So one
//!   byte every few seconds cannot hold a connection open indefinitely.
//! - **Framing.** A body the client framed wrongly (a malformed chunk) or broke off is the
//!   client's fault: 400, not a 502 blamed on the app.
//!
//! The app's own deadline starts only once it has the whole request ([`Outgoing::sent`]): a
//! large upload over a slow link is not the app being slow.

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use futures_util::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::{sync::oneshot, time::Instant};

use crate::error::{GatewayError, caused_by};

/// The client paused its upload for longer than allowed, or ran past the body deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
pub struct BodyStalled;

/// The client's body failed to arrive intact (bad framing, or the client broke off).
#[derive(Debug, thiserror::Error)]
#[error("the request body was malformed or cut off: {0}")]
pub struct BodyBroken(axum::Error);

/// A request body ready to go to the app.
#[derive(Debug)]
pub struct Outgoing {
    /// What to send.
    pub body: Body,
    /// Resolves once the whole body has been handed to the app; `None` when the body is
    /// already complete (absent, or read whole).
    pub sent: Option<oneshot::Receiver<()>>,
}

/// The bounds a request body is held to.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest body accepted (`proxy.max_body_bytes`).
    pub max_bytes: u64,
    /// Bodies up to this size are read whole before the app is contacted.
    pub buffer_bytes: usize,
    /// Longest pause between two chunks.
    pub idle: Duration,
    /// When the whole body must have arrived.
    pub deadline: Instant,
}

/// Reads up to `buffer_bytes` of `body`; returns it whole if it ended by then, and otherwise
/// a stream of what was read followed by the rest, each chunk held to the limits.
pub async fn prepare(body: Body, limits: BodyLimits) -> Result<Outgoing, GatewayError> {
    if body.is_end_stream() {
        // Keeps "no body" visible to the client, which then sends no chunked framing for it.
        return Ok(Outgoing {
            body: Body::empty(),
            sent: None,
        });
    }
    let max = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
    let mut chunks = Limited::new(body, max).into_data_stream();
    let mut head: Vec<Bytes> = Vec::new();
    let mut read = 0usize;
    while read <= limits.buffer_bytes {
        match next_chunk(&mut chunks, limits).await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                head.push(chunk);
            }
            Ok(None) => {
                let whole: Bytes = match head.len() {
                    1 => head.pop().unwrap_or_default(),
                    _ => head.concat().into(),
                };
                return Ok(Outgoing {
                    body: Body::from(whole),
                    sent: None,
                });
            }
            Err(e) => return Err(rejection(&e)),
        }
    }
    let (done, sent) = oneshot::channel();
    let rest = futures_util::stream::unfold(
        (Some(chunks), Some(done)),
        move |(mut chunks, mut done)| async move {
            match next_chunk(chunks.as_mut()?, limits).await {
                Ok(Some(chunk)) => Some((Ok(chunk), (chunks, done))),
                Ok(None) => {
                    if let Some(done) = done.take() {
                        let _ = done.send(());
                    }
                    None
                }
                Err(error) => Some((Err(error), (None, done))),
            }
        },
    );
    let head = futures_util::stream::iter(head.into_iter().map(Ok::<_, axum::Error>));
    Ok(Outgoing {
        body: Body::from_stream(head.chain(rest)),
        sent: Some(sent),
    })
}

/// The next chunk within the pause and deadline limits. Errors are typed so that
/// [`rejection`] (and the app client's error classification) can tell whose fault it was.
async fn next_chunk<S>(chunks: &mut S, limits: BodyLimits) -> Result<Option<Bytes>, axum::Error>
where
    S: futures_util::Stream<Item = Result<Bytes, axum::BoxError>> + Unpin,
{
    let wait = tokio::time::timeout(limits.idle, chunks.next());
    match tokio::time::timeout_at(limits.deadline, wait).await {
        Ok(Ok(Some(Ok(chunk)))) => Ok(Some(chunk)),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(Err(error)))) if caused_by::<LengthLimitError>(&*error) => {
            Err(axum::Error::new(error))
        }
        Ok(Ok(Some(Err(error)))) => Err(axum::Error::new(BodyBroken(axum::Error::new(error)))),
        Ok(Err(_)) | Err(_) => Err(axum::Error::new(BodyStalled)),
    }
}

/// The response for a body that could not be read.
pub fn rejection(error: &(dyn std::error::Error + 'static)) -> GatewayError {
    if caused_by::<LengthLimitError>(error) {
        GatewayError::BodyTooLarge
    } else if caused_by::<BodyStalled>(error) {
        GatewayError::BodyTimeout
    } else {
        GatewayError::BodyMalformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: Vec<&'static [u8]>, then_stall: bool) -> Body {
        let head = futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p))),
        );
        if then_stall {
            Body::from_stream(head.chain(futures_util::stream::pending()))
        } else {
            Body::from_stream(head)
        }
    }

    fn limits(max_bytes: u64, buffer_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_bytes,
            buffer_bytes,
            idle: Duration::from_secs(5),
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_small_body_is_read_whole_before_anything_is_sent() {
        let out = prepare(chunks(vec![b"ab", b"cd"], false), limits(10, 8))
            .await
            .unwrap();
        assert!(out.sent.is_none(), "complete already");
        assert_eq!(out.body.size_hint().exact(), Some(4));
        let bytes = out.body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcd");
    }

    #[tokio::test]
    async fn a_large_body_streams_and_reports_when_it_was_sent() {
        let out = prepare(chunks(vec![b"abc", b"def", b"gh"], false), limits(100, 2))
            .await
            .unwrap();
        let mut sent = out.sent.unwrap();
        assert!(sent.try_recv().is_err(), "nothing sent yet");
        let bytes = out.body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcdefgh");
        assert!(sent.await.is_ok());
    }

    #[tokio::test]
    async fn an_empty_body_stays_empty() {
        let out = prepare(Body::empty(), limits(10, 8)).await.unwrap();
        assert!(out.body.is_end_stream());
        assert!(out.sent.is_none());
    }

    #[tokio::test]
    async fn too_much_is_413_before_and_after_the_buffer() {
        let early = prepare(chunks(vec![b"abcdef", b"ghijkl"], false), limits(8, 64)).await;
        assert!(matches!(early, Err(GatewayError::BodyTooLarge)));
        let out = prepare(chunks(vec![b"abcdef", b"ghijkl"], false), limits(8, 2))
            .await
            .unwrap();
        let error = out.body.collect().await.unwrap_err();
        assert!(matches!(rejection(&error), GatewayError::BodyTooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_408() {
        let mut slow = limits(100, 64);
        slow.idle = Duration::from_millis(50);
        let result = prepare(chunks(vec![b"ab"], true), slow).await;
        assert!(matches!(result, Err(GatewayError::BodyTimeout)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_at_the_deadline_even_if_it_never_pauses_long() {
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
        });
        let mut bounded = limits(1 << 20, 4);
        bounded.deadline = Instant::now() + Duration::from_secs(30);
        let out = prepare(Body::from_stream(trickle), bounded).await.unwrap();
        let started = Instant::now();
        let error = out.body.collect().await.unwrap_err();
        assert!(matches!(rejection(&error), GatewayError::BodyTimeout));
        assert!(started.elapsed() <= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_broken_body_is_400() {
        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("invalid chunk size")),
        ]);
        let result = prepare(Body::from_stream(broken), limits(100, 64)).await;
        assert!(matches!(result, Err(GatewayError::BodyMalformed)));
    }
}
