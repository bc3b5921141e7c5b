//! `ANY {pleo_prefix}/{*path}`: the Pleo API with a fresh bearer token attached — for the
//! browser on the public listener ([`proxy_to_pleo`]), and for the app's server side on the
//! internal listener, which finds the session its own way and then shares
//! [`forward_to_pleo`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header, request::Parts},
    response::Response,
};
use http_body_util::Limited;
use hyper::body::{Frame, SizeHint};
use secrecy::ExposeSecret;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tracing::Instrument;

use super::headers;
use crate::{
    auth::{
        csrf::{is_unsafe, require_csrf_header},
        guard::{fresh_session, refresh_error, require_session},
    },
    error::GatewayError,
    http_client::{PooledBody, SlotBody},
    session::{Session, SessionKey},
    state::AppState,
    telemetry::{Call, CallResult},
    token::RefreshError,
};

/// Bodies up to this size are buffered so the request can be replayed once after a 401 (a token
/// Pleo revoked early). Larger bodies stream through and are never replayed.
const REPLAYABLE_BODY_LIMIT: usize = 64 * 1024;

/// Proxies one request from the browser to the Pleo API: the cookie's session, the CSRF rule.
pub async fn proxy_to_pleo(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, GatewayError> {
    crate::telemetry::access_log::note_route("pleo");
    let (parts, body) = request.into_parts();
    if is_unsafe(&parts.method) {
        require_csrf_header(&parts.headers)?;
    }
    let session = require_session(&state, &parts.headers, "/").await?;
    let session = fresh_session(&state, session).await?;
    forward_to_pleo(&state, session, parts, body, &|key, e| {
        refresh_error(&state, key, e)
    })
    .await
}

/// How a refresh failure after Pleo's 401 becomes a response: the listeners differ (a cookie
/// to clear on the public one, none on the internal one).
pub type OnRefreshError<'a> = &'a (dyn Fn(&SessionKey, RefreshError) -> GatewayError + Send + Sync);

/// Sends one request under `{pleo_prefix}` to the Pleo API with `session`'s bearer token
/// (fresh, as the caller made sure) and streams the answer back. Both listeners end here, so
/// the path checks, the body limits and the one refresh-and-retry after a 401 are the same for
/// a browser, the app's server side and a background job.
pub async fn forward_to_pleo(
    state: &AppState,
    session: Session,
    parts: Parts,
    body: Body,
    on_refresh_error: OnRefreshError<'_>,
) -> Result<Response, GatewayError> {
    let prefix = &state.config.proxy.pleo_prefix;
    let path = parts
        .uri
        .path()
        .strip_prefix(prefix.as_str())
        .unwrap_or("/");
    // `/pleo/../v2/x` would resolve outside `api_url`'s path, with the bearer attached.
    if super::path::has_dot_segment(path) {
        return Err(GatewayError::BadRequest(
            "the Pleo API path must not contain `.` or `..` segments".into(),
        ));
    }
    let uri = state.pleo_api.uri(path, parts.uri.query())?;
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if content_length.is_some_and(|n| n > state.config.proxy.max_body_bytes) {
        return Err(GatewayError::BodyTooLarge);
    }
    // Decided before the headers are cleaned: `to_pleo` drops Transfer-Encoding (hop-by-hop).
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let outgoing = headers::to_pleo(parts.headers);
    let method = parts.method;

    let replayable = match content_length {
        Some(n) => n <= REPLAYABLE_BODY_LIMIT as u64,
        None => !chunked && method_has_no_body(&method),
    };
    if !replayable {
        // A body without a declared length is held to the same limit while it streams: the
        // Content-Length check above cannot see it.
        let limit = usize::try_from(state.config.proxy.max_body_bytes).unwrap_or(usize::MAX);
        let body = Body::new(Limited::new(body, limit));
        let response = send(state, &method, &uri, outgoing, body, &session).await?;
        return Ok(into_response(response));
    }

    let bytes = axum::body::to_bytes(body, REPLAYABLE_BODY_LIMIT)
        .await
        .map_err(|_| GatewayError::BadRequest("the request body could not be read".into()))?;
    // The body is kept for the one retry after a 401 (a `Bytes` clone shares it); the headers
    // come back from the pool with the answer, so nothing per header is copied.
    let body = Body::from(bytes.clone());
    let answer = send(state, &method, &uri, outgoing, body, &session).await?;
    if answer.response.status() != StatusCode::UNAUTHORIZED {
        return Ok(into_response(answer));
    }
    // The rejected answer's connection and slot go back before the retry takes them; its
    // headers go out again.
    let Answer {
        response,
        slot,
        sent_headers: outgoing,
        ..
    } = answer;
    drop((response, slot));
    // Pleo rejected a token we believed valid (revoked or expired early): refresh once, retry
    // once. If another request already refreshed, the coordinator hands back that token.
    tracing::info!(
        session = session.key.short(),
        "Pleo answered 401; refreshing once and retrying"
    );
    let rejected = session.data.access_token.expose_secret().to_owned();
    let session = state
        .refresher
        .refresh_after_rejection(session.key.clone(), rejected)
        .await
        .map_err(|e| on_refresh_error(&session.key, e))?;
    let response = send(state, &method, &uri, outgoing, Body::from(bytes), &session).await?;
    Ok(into_response(response))
}

fn method_has_no_body(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    )
}

/// One call to Pleo, within the shared rate budget: it waits for its turn or is refused (429)
/// before anything is sent; a 429 from Pleo pauses the budget and is passed on.
async fn send(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Body,
    session: &Session,
) -> Result<Answer, GatewayError> {
    state.pleo_budget.admit(session).await?;
    let answer = send_now(state, method, uri, headers, body, session).await?;
    if answer.response.status() == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = answer.response.headers().get(header::RETRY_AFTER);
        state.pleo_budget.pleo_refused(session, retry_after).await;
    }
    Ok(answer)
}

/// Pleo's response, with the connection slot (`pleo.max_connections`) it holds until its body
/// has been passed on.
struct Answer {
    response: hyper::Response<PooledBody>,
    slot: OwnedSemaphorePermit,
    /// `pleo.request_timeout`: the longest pause in the body.
    quiet_limit: Duration,
    /// The request's headers as they went out, for the one retry after a 401.
    sent_headers: HeaderMap,
}

async fn send_now(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Body,
    session: &Session,
) -> Result<Answer, GatewayError> {
    let slot = state.pleo_api.slot().await?;
    let call = Call::pleo("api", method);
    let mut request = http::Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers;
    call.inject(request.headers_mut());
    let token = session.data.access_token.expose_secret();
    // The whole exchange up to the response head is bounded; the body then streams, bounded by
    // `pleo.request_timeout` between chunks (`QuietBody`).
    let sent = tokio::time::timeout(
        state.pleo_api.timeout(),
        state.pleo_api.forward(request, token),
    )
    .instrument(call.span())
    .await;
    match sent {
        Ok(Ok((response, sent_headers))) => {
            call.finish(CallResult::Status(response.status().as_u16()));
            Ok(Answer {
                response,
                slot,
                quiet_limit: state.pleo_api.timeout(),
                sent_headers,
            })
        }
        // The caller's own body: not Pleo's doing, not counted against it.
        Ok(Err(GatewayError::BodyTooLarge)) => {
            call.abandon();
            Err(GatewayError::BodyTooLarge)
        }
        Ok(Err(error)) => {
            call.finish(if matches!(error, GatewayError::PleoTimeout) {
                CallResult::Timeout
            } else {
                CallResult::Error
            });
            Err(error)
        }
        Err(_) => {
            call.finish(CallResult::Timeout);
            Err(GatewayError::PleoTimeout)
        }
    }
}

fn into_response(answer: Answer) -> Response {
    // Taken apart rather than copied: the head moves over as it is, the body streams through
    // and holds the connection slot.
    let (parts, body) = answer.response.into_parts();
    let headers = headers::from_pleo(parts.headers);
    let mut response = Response::new(Body::new(QuietBody::new(
        SlotBody::new(body, answer.slot),
        answer.quiet_limit,
    )));
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    if !response.headers().contains_key(header::CACHE_CONTROL) {
        // Responses are per-user: no shared cache may keep them.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
    response
}

/// Pleo went quiet in the middle of a response body for longer than `pleo.request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("Pleo sent no part of the response body for longer than pleo.request_timeout")]
struct BodyStalled;

pin_project_lite::pin_project! {
    /// Pleo's response body (holding its connection slot, see [`SlotBody`]), cut off when Pleo
    /// sends nothing for `pleo.request_timeout`.
    struct QuietBody {
        #[pin]
        body: SlotBody,
        #[pin]
        quiet: tokio::time::Sleep,
        quiet_limit: Duration,
    }
}

impl QuietBody {
    fn new(body: SlotBody, quiet_limit: Duration) -> Self {
        Self {
            body,
            quiet: tokio::time::sleep(quiet_limit),
            quiet_limit,
        }
    }
}

impl hyper::body::Body for QuietBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let mut this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(frame) => {
                let quiet_limit = *this.quiet_limit;
                this.quiet.as_mut().reset(Instant::now() + quiet_limit);
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => match this.quiet.poll(cx) {
                Poll::Ready(()) => {
                    tracing::warn!("{BodyStalled}; the response is cut off");
                    Poll::Ready(Some(Err(BodyStalled.into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::Semaphore,
    };

    use super::*;
    use crate::pleo_api::PleoApi;

    /// A Pleo stand-in on a real socket: answers the first request with `head` and `body`, then
    /// holds the connection open without another byte. Hands back what it received.
    async fn pleo_once(
        head: &'static str,
        body: &'static str,
    ) -> (String, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (received, seen) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buffer).await.unwrap();
                assert!(n > 0, "the client closed before its request head ended");
                request.extend_from_slice(&buffer[..n]);
            }
            let _ = received.send(String::from_utf8_lossy(&request).into_owned());
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(body.as_bytes()).await.unwrap();
            // Quiet, but connected: only the gateway's limit can end this.
            let _ = socket.read(&mut buffer).await;
        });
        (base, seen)
    }

    async fn call(base: &str) -> hyper::Response<PooledBody> {
        let config = crate::config::Config::load_with_env(
            None,
            &[
                ("PLEO_GATEWAY__PLEO__API_URL", base),
                ("PLEO_GATEWAY__PLEO__CLIENT_ID", "id"),
                ("PLEO_GATEWAY__PLEO__CLIENT_SECRET", "secret"),
                ("PLEO_GATEWAY__PLEO__SCOPES", "users:read"),
                ("PLEO_GATEWAY__SESSION__STORE", "memory"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        )
        .unwrap();
        let api = PleoApi::new(&config.pleo).unwrap();
        let mut request = http::Request::new(Body::empty());
        *request.uri_mut() = api.uri("/v2/employees", Some("limit=1")).unwrap();
        api.forward(request, "the-access-token").await.unwrap().0
    }

    #[tokio::test]
    async fn a_proxied_call_carries_the_bearer_and_a_body_that_goes_quiet_is_cut_off() {
        let (base, seen) =
            pleo_once("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", "half!").await;
        let response = call(&base).await;
        let request = seen.await.unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("get /v2/employees?limit=1 http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("authorization: bearer the-access-token\r\n"),
            "{request}"
        );
        assert!(request.contains("user-agent: pleo-gateway/"), "{request}");

        let slots = Arc::new(Semaphore::new(1));
        let slot = Arc::clone(&slots).try_acquire_owned().unwrap();
        let body = QuietBody::new(
            SlotBody::new(response.into_body(), slot),
            Duration::from_millis(200),
        );
        // Without the limit this would wait for ever; the outer bound turns that into a failure.
        let error = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the quiet body was not cut off")
            .unwrap_err();
        assert!(error.is::<BodyStalled>(), "{error}");
        // The connection slot went with the body.
        assert_eq!(slots.available_permits(), 1);
    }
}
