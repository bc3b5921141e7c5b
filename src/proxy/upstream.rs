//! Everything that is not `/auth`, `/pleo`, health or metrics: the internal app behind the
//! gateway (`proxy.upstream`), with the session checked and the user's identity attached.
//!
//! The app-facing contract:
//!
//! - Paths in `proxy.public_paths` (see [`super::path`] for how they are matched) are forwarded
//!   without a session and without identity. Every other path needs a live session; without one,
//!   a browser navigation gets 302 to `/auth/login?return_to=<path and query>` and anything else
//!   401 JSON carrying the login URL (never a redirect an XHR would follow to Pleo).
//! - The app sees the path exactly as the browser sent it; only the access decision uses the
//!   normalised form. It receives `X-Pleo-Subject`, `X-Pleo-Scopes`, the signed
//!   `X-Pleo-Identity` (see [`crate::identity`]), `X-Request-Id` and
//!   `X-Forwarded-For/-Proto/-Host`, `X-Real-IP` (see [`rewrite`] and [`crate::forwarded`]).
//! - Unsafe methods (POST, PUT, PATCH, DELETE) on protected paths follow the CSRF rule (see
//!   [`crate::auth::csrf`]) in a form an ordinary app passes unchanged: the request is accepted
//!   with `X-CSRF`, or when the browser vouches it is same-origin (`Sec-Fetch-Site: same-origin`/`none`, or an `Origin`
//!   equal to `server.public_url`). Plain HTML forms and `fetch` from the app's own pages work;
//!   a cross-site or sibling-subdomain form gets 403. (`SameSite=Lax` already keeps the cookie
//!   off cross-site POSTs; this also covers same-site attackers.) The app may add its own CSRF.
//! - WebSocket upgrades are checked like navigations, must come from the public origin, and are
//!   closed when the session ends (see [`super::websocket`]).
//! - Bodies stream both ways over a pooled HTTP/1.1 client built once. The app must send its
//!   response head within `proxy.upstream_timeout` of receiving the whole request (504
//!   otherwise); a refused connection is 502. See [`crate::upstream`] for the client and the
//!   limits on request bodies.

mod rewrite;
#[cfg(test)]
mod tests;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{Method, StatusCode, Version, header, request::Parts},
    response::Response,
};
use hyper::upgrade::OnUpgrade;
use tracing::Instrument;

use super::{
    path::{PathAccess, path_access},
    websocket,
};
use crate::{
    auth::{
        csrf::{is_unsafe, origin_allowed, same_origin_or_csrf_header},
        guard::current_session,
        subject::require_subject,
    },
    error::{GatewayError, is_navigation},
    forwarded::{self, peer::Peer},
    request_id::X_REQUEST_ID,
    session::{Session, now_ms},
    state::AppState,
    telemetry::{self, Call, CallResult},
    upstream::body,
};

/// Proxies one request (or WebSocket handshake) to the internal app.
pub async fn proxy_to_upstream(
    State(state): State<AppState>,
    Peer(peer): Peer,
    request: Request,
) -> Result<Response, GatewayError> {
    let Some(upstream) = state.upstream.clone() else {
        return Err(GatewayError::NotFound);
    };
    telemetry::access_log::note_route("app");
    let (mut parts, body) = request.into_parts();
    let websocket = websocket::is_websocket_upgrade(&parts.method, &parts.headers);
    // A handshake is a GET without a body (RFC 6455 §4.1). One that declares a body would
    // reach the app with that framing but none of the bytes (the gateway sends the upgrade
    // without a body), and whatever came next on the pooled connection would be read as the
    // missing body: another user's request. Refused before anything is sent.
    if websocket && has_body_framing(&parts.headers) {
        return Err(GatewayError::BadRequest(
            "a WebSocket handshake must not carry a body".into(),
        ));
    }
    if websocket {
        telemetry::access_log::note_route("app_websocket");
    }
    let session = match admit(&state, &parts, websocket).await? {
        Admission::Public => {
            if !websocket {
                telemetry::access_log::note_route("app_public");
            }
            None
        }
        Admission::Session(session) => Some(session),
        Admission::LogIn(redirect) => return Ok(redirect),
    };
    let websocket_slot = if websocket {
        let slot = state.websockets.slot().ok_or_else(|| {
            tracing::warn!("every WebSocket slot is in use; upgrade refused");
            GatewayError::UpstreamBusy
        })?;
        Some(slot)
    } else {
        None
    };
    // The body deadline starts now: time spent on the gateway's own checks (a refresh, an
    // introspection) is not the client's.
    let started = tokio::time::Instant::now();

    let limit = state.config.proxy.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge);
    }

    let forwarding = forwarded::resolve(
        peer.ip(),
        &state.config.server.trusted_proxies,
        &parts.headers,
        &state.public_origin,
    );
    // The edge layer, in front of this handler on the public listener (its only listener),
    // put the request's id in the header: a trusted proxy's, or a fresh one, never a client's.
    let request_id = parts.headers.get(X_REQUEST_ID).cloned();
    let assertion = session
        .as_ref()
        .and_then(|session| state.identity.header_value(session, now_ms()));
    let headers = rewrite::request_headers(
        std::mem::take(&mut parts.headers),
        &rewrite::RequestRewrite {
            gateway_cookies: &state.cookies,
            identity: session.as_ref(),
            assertion: assertion.as_ref(),
            request_id: request_id.as_ref(),
            forwarding: &forwarding,
            websocket,
        },
    );
    let client_upgrade = parts.extensions.remove::<OnUpgrade>();
    let body = if websocket {
        body::Outgoing {
            body: Body::empty(),
            sent: None,
        }
    } else {
        body::prepare(
            body,
            body::BodyLimits {
                max_bytes: limit,
                buffer_bytes: state.config.proxy.body_buffer_bytes,
                idle: upstream.timeout,
                deadline: started + state.config.proxy.body_timeout,
            },
        )
        .await?
    };
    let mut outgoing = Request::new(body.body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = upstream.uri(&parts.uri)?;
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = headers;

    let call = Call::app(outgoing.method());
    call.inject(outgoing.headers_mut());
    let sent = upstream
        .send(outgoing, body.sent)
        .instrument(call.span())
        .await;
    match &sent {
        Ok(response) => call.finish(CallResult::Status(response.status().as_u16())),
        Err(GatewayError::UpstreamTimeout) => call.finish(CallResult::Timeout),
        Err(GatewayError::UpstreamUnreachable | GatewayError::UpstreamBusy) => {
            call.finish(CallResult::Error);
        }
        Err(_) => call.abandon(),
    }
    let response = sent?;
    let (mut parts, body) = response.into_parts();
    let upgraded = websocket && parts.status == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        let (Some(client), Some(app)) = (client_upgrade, parts.extensions.remove::<OnUpgrade>())
        else {
            return Err(GatewayError::Internal(
                "a WebSocket upgrade could not be taken over".into(),
            ));
        };
        let Some(slot) = websocket_slot else {
            return Err(GatewayError::Internal(
                "an upgrade without a WebSocket slot".into(),
            ));
        };
        websocket::splice(&state, session.map(|s| s.key), client, app, slot);
    }
    rewrite::response_headers(&mut parts.headers, &state.cookies, upgraded);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Whether the headers announce a body: a non-zero `Content-Length` or any `Transfer-Encoding`.
fn has_body_framing(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0")
}

/// Whether a request may go to the app, and as whom.
enum Admission {
    /// A public path: forwarded without identity.
    Public,
    /// A protected path with a live session (and, for unsafe methods, passing the CSRF rule).
    Session(Session),
    /// A browser navigation without a session: this 302 sends it to log in.
    LogIn(Response),
}

/// Checks the path, the WebSocket origin, the session and the CSRF rule, in that order.
async fn admit(
    state: &AppState,
    parts: &Parts,
    websocket: bool,
) -> Result<Admission, GatewayError> {
    if parts.method == Method::CONNECT {
        return Err(GatewayError::BadRequest("CONNECT is not supported".into()));
    }
    let access = path_access(parts.uri.path(), &state.config.proxy.public_paths)
        .ok_or_else(|| GatewayError::BadRequest("the request path is not valid".into()))?;
    let public_url = &state.config.server.public_url;
    if websocket && !origin_allowed(&parts.headers, public_url) {
        return Err(GatewayError::OriginNotAllowed);
    }
    if access == PathAccess::Public {
        return Ok(Admission::Public);
    }
    let Some(session) = current_session(state, &parts.headers).await? else {
        let return_to = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let login_url = state.login_url(return_to);
        if is_navigation(&parts.headers) {
            return Ok(Admission::LogIn(crate::error::redirect(&login_url)));
        }
        return Err(GatewayError::NotAuthenticated { login_url });
    };
    if is_unsafe(&parts.method) {
        same_origin_or_csrf_header(&parts.headers, public_url)?;
    }
    // Never forward to the app on behalf of an unknown company.
    let session = require_subject(state, session).await?;
    Ok(Admission::Session(session))
}
