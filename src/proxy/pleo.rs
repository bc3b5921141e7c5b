//! `ANY {pleo_prefix}/{*path}`: the Pleo API with a fresh bearer token attached — for the
//! browser on the public listener ([`proxy_to_pleo`]), and for the app's server side on the
//! internal listener, which finds the session its own way and then shares
//! [`forward_to_pleo`].

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, header, request::Parts},
    response::Response,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::ExposeSecret;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;
use url::Url;

use super::headers;
use crate::{
    auth::{
        csrf::{is_unsafe, require_csrf_header},
        guard::{fresh_session, refresh_error, require_session},
    },
    error::{GatewayError, caused_by},
    pleo_api,
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
    let url = state.pleo_api.url(path, parts.uri.query())?;
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
        let body = reqwest::Body::wrap_stream(Limited::new(body, limit).into_data_stream());
        let response = send(state, &method, &url, &outgoing, body, &session).await?;
        return Ok(into_response(response));
    }

    let bytes = axum::body::to_bytes(body, REPLAYABLE_BODY_LIMIT)
        .await
        .map_err(|_| GatewayError::BadRequest("the request body could not be read".into()))?;
    let answer = send(state, &method, &url, &outgoing, bytes.clone(), &session).await?;
    if answer.response.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(into_response(answer));
    }
    // The rejected answer's connection goes back before the retry takes one.
    drop(answer);
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
    let response = send(state, &method, &url, &outgoing, bytes, &session).await?;
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
    url: &Url,
    headers: &HeaderMap,
    body: impl Into<reqwest::Body>,
    session: &Session,
) -> Result<Answer, GatewayError> {
    state.pleo_budget.admit(session).await?;
    let answer = send_now(state, method, url, headers, body, session).await?;
    if answer.response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let retry_after = answer.response.headers().get(header::RETRY_AFTER);
        state.pleo_budget.pleo_refused(session, retry_after).await;
    }
    Ok(answer)
}

/// Pleo's response, with the connection slot (`pleo.max_connections`) it holds until its body
/// has been passed on.
struct Answer {
    response: reqwest::Response,
    slot: OwnedSemaphorePermit,
}

async fn send_now(
    state: &AppState,
    method: &Method,
    url: &Url,
    headers: &HeaderMap,
    body: impl Into<reqwest::Body>,
    session: &Session,
) -> Result<Answer, GatewayError> {
    let slot = state.pleo_api.slot().await?;
    let call = Call::pleo("api", method);
    let mut headers = headers.clone();
    call.inject(&mut headers);
    let request = state
        .pleo_api
        .request(
            method.clone(),
            url.clone(),
            session.data.access_token.expose_secret(),
        )
        .headers(headers)
        .body(body);
    // The whole exchange up to the response head is bounded; the body then streams, bounded by
    // the client's read timeout between chunks.
    let sent = tokio::time::timeout(state.pleo_api.timeout(), request.send())
        .instrument(call.span())
        .await;
    call.finish(match &sent {
        Ok(result) => CallResult::of(result),
        Err(_) => CallResult::Timeout,
    });
    match sent {
        Ok(Err(e)) if caused_by::<LengthLimitError>(&e) => Err(GatewayError::BodyTooLarge),
        Ok(result) => result
            .map(|response| Answer { response, slot })
            .map_err(pleo_api::map_error),
        Err(_) => Err(GatewayError::PleoTimeout),
    }
}

fn into_response(answer: Answer) -> Response {
    // Taken apart rather than copied: the head moves over as it is, the body streams through
    // (bounded by the client's read timeout between chunks) and holds the connection slot.
    let (parts, body) = http::Response::from(answer.response).into_parts();
    let headers = headers::from_pleo(parts.headers);
    let mut response = Response::new(Body::new(SlotBody {
        body,
        _slot: answer.slot,
    }));
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

pin_project_lite::pin_project! {
    /// Pleo's response body, holding its connection slot until it is done.
    struct SlotBody {
        #[pin]
        body: reqwest::Body,
        _slot: OwnedSemaphorePermit,
    }
}

impl hyper::body::Body for SlotBody {
    type Data = axum::body::Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
