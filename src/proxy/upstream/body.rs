//! The request body on its way to the app: streamed, never buffered, and bounded in size and
//! in pace.
//!
//! Size: a body without `Content-Length` is cut off at `proxy.max_body_bytes` while it streams
//! (the declared length is checked before anything is sent). Pace: the client may not pause
//! longer than `proxy.upstream_timeout` between chunks, so a stalled upload cannot hold an app
//! connection forever. And the app's own deadline starts only once it has the whole request
//! ([`Outgoing::sent`]): a large upload over a slow link is not the app being slow.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use tokio::sync::oneshot;

/// The client paused its upload for longer than allowed.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
pub struct BodyStalled;

/// A request body ready to go to the app.
#[derive(Debug)]
pub struct Outgoing {
    /// What to send.
    pub body: Body,
    /// Resolves once the whole body has been handed to the app; `None` when there is no body.
    pub sent: Option<oneshot::Receiver<()>>,
}

/// Wraps `body` with the size limit, the idle limit and the end-of-body signal.
pub fn outgoing(body: Body, limit: u64, idle: Duration) -> Outgoing {
    if body.is_end_stream() {
        // Keeps "no body" visible to the client, which then sends no chunked framing for it.
        return Outgoing {
            body: Body::empty(),
            sent: None,
        };
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let (done, sent) = oneshot::channel();
    let chunks = Limited::new(body, limit).into_data_stream();
    let paced = futures_util::stream::unfold(
        (Some(chunks), Some(done)),
        move |(mut chunks, mut done)| async move {
            let next = tokio::time::timeout(idle, chunks.as_mut()?.next()).await;
            match next {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), (chunks, done))),
                Ok(Some(Err(error))) => Some((Err(error), (None, done))),
                Ok(None) => {
                    if let Some(done) = done.take() {
                        let _ = done.send(());
                    }
                    None
                }
                Err(_) => Some((Err(BodyStalled.into()), (None, done))),
            }
        },
    );
    Outgoing {
        body: Body::from_stream(paced),
        sent: Some(sent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use http_body_util::LengthLimitError;

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

    fn caused_by<T: std::error::Error + 'static>(error: &axum::Error) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cause) = source {
            if cause.is::<T>() {
                return true;
            }
            source = cause.source();
        }
        false
    }

    #[tokio::test]
    async fn a_complete_body_passes_and_reports_it_was_sent() {
        let out = outgoing(
            chunks(vec![b"ab", b"cd"], false),
            10,
            Duration::from_secs(5),
        );
        let mut sent = out.sent.unwrap();
        assert!(sent.try_recv().is_err(), "nothing sent yet");
        let bytes = out.body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcd");
        assert!(sent.await.is_ok());
    }

    #[tokio::test]
    async fn an_empty_body_stays_empty() {
        let out = outgoing(Body::empty(), 10, Duration::from_secs(5));
        assert!(out.body.is_end_stream());
        assert!(out.sent.is_none());
    }

    #[tokio::test]
    async fn too_much_or_too_slow_is_an_error() {
        let out = outgoing(
            chunks(vec![b"abcdef", b"ghijkl"], false),
            8,
            Duration::from_secs(5),
        );
        let error = out.body.collect().await.unwrap_err();
        assert!(caused_by::<LengthLimitError>(&error), "{error:?}");

        let out = outgoing(chunks(vec![b"ab"], true), 8, Duration::from_millis(50));
        let error = out.body.collect().await.unwrap_err();
        assert!(caused_by::<BodyStalled>(&error), "{error:?}");
        assert!(out.sent.unwrap().await.is_err(), "never reported as sent");
    }
}
