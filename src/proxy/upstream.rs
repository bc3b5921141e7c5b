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
//!   normalised form. It receives `X-Pleo-Subject`, `X-Pleo-Scopes`, `X-Request-Id` and
//!   `X-Forwarded-For/-Proto/-Host`, `X-Real-IP` (see [`rewrite`] and [`super::forwarded`]).
//! - Unsafe methods (POST, PUT, PATCH, DELETE) on protected paths follow PRODUCT.md's CSRF rule
//!   in a form an ordinary app passes unchanged: the request is accepted with `X-CSRF`, or when
//!   the browser vouches it is same-origin (`Sec-Fetch-Site: same-origin`/`none`, or an `Origin`
//!   equal to `server.public_url`). Plain HTML forms and `fetch` from the app's own pages work;
//!   a cross-site or sibling-subdomain form gets 403. (`SameSite=Lax` already keeps the cookie
//!   off cross-site POSTs; this also covers same-site attackers.) The app may add its own CSRF.
//! - WebSocket upgrades are checked like navigations, must come from the public origin, and are
//!   closed when the session ends (see [`super::websocket`]).
//! - Bodies stream both ways over a pooled HTTP/1.1 client built once. The app must send its
//!   response head within `proxy.upstream_timeout` of receiving the whole request (504
//!   otherwise); a refused connection is 502. See [`body`] for the limits on request bodies.

mod body;
mod rewrite;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, Method, StatusCode, Uri, Version, header, request::Parts},
    response::Response,
};
use http_body_util::LengthLimitError;
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tower_http::request_id::RequestId;
use url::Url;

use super::{
    forwarded,
    path::{PathAccess, path_access},
    websocket,
};
use crate::{
    app::AppState,
    auth::{current_session, is_unsafe, require_csrf_header, require_subject},
    error::{GatewayError, is_navigation},
    session::Session,
};

/// Longest wait for a TCP connection to the app (capped by `proxy.upstream_timeout`). The app
/// runs beside the gateway: if it does not accept quickly, it is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a free app connection (`proxy.upstream_max_connections`) before 503.
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// Idle keep-alive connections to the app are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The pooled HTTP/1.1 client for the app, and where the app lives. Built once at start-up.
#[derive(Debug)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// `scheme://host:port` of the app.
    origin: String,
    /// The app's base path without a trailing slash (`""` at the root).
    base_path: String,
    timeout: Duration,
    /// One permit per app connection in use (`proxy.upstream_max_connections`).
    slots: Arc<Semaphore>,
}

impl UpstreamClient {
    /// Builds the client for `upstream`. `http://` is the usual sidecar case (the app is on the
    /// same pod or host); `https://` works too, verified against the Mozilla root set.
    pub fn new(upstream: &Url, timeout: Duration, max_connections: usize) -> anyhow::Result<Self> {
        let scheme = upstream.scheme();
        if scheme != "http" && scheme != "https" {
            anyhow::bail!(
                "proxy.upstream: only http:// and https:// apps are supported ({upstream})"
            );
        }
        let host = upstream
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("proxy.upstream has no host"))?;
        let port = upstream.port_or_known_default().unwrap_or(80);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT.min(timeout)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_connections)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let host = match upstream.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            _ => host.to_owned(),
        };
        Ok(Self {
            client,
            origin: format!("{scheme}://{host}:{port}"),
            base_path: upstream.path().trim_end_matches('/').to_owned(),
            timeout,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
        })
    }

    /// `{origin}{base_path}{path}?{query}` with the path and query exactly as received.
    fn uri(&self, original: &Uri) -> Result<Uri, GatewayError> {
        let path_and_query = original.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{}{}{}", self.origin, self.base_path, path_and_query)
            .parse()
            .map_err(|_| GatewayError::BadRequest("the request path is not valid".into()))
    }

    /// Sends `request` and waits for the response head: while the body is still uploading
    /// (`body_sent` pending) the client's pace decides, then the app has `timeout` to answer.
    /// The returned slot counts against `proxy.upstream_max_connections` until it is dropped.
    async fn send(
        &self,
        request: Request,
        body_sent: Option<oneshot::Receiver<()>>,
    ) -> Result<(hyper::Response<Incoming>, OwnedSemaphorePermit), GatewayError> {
        let slot = tokio::time::timeout(
            SLOT_WAIT.min(self.timeout),
            Arc::clone(&self.slots).acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            tracing::warn!("every connection to the app is busy (proxy.upstream_max_connections)");
            GatewayError::UpstreamBusy
        })?;
        let response = self.client.request(request);
        tokio::pin!(response);
        if let Some(sent) = body_sent {
            tokio::select! {
                // An app may answer before reading the whole body (a 413 or 401 of its own).
                result = &mut response => return result.map(|r| (r, slot)).map_err(|e| classify(&e)),
                _ = sent => {}
            }
        }
        match tokio::time::timeout(self.timeout, response).await {
            Ok(result) => result.map(|r| (r, slot)).map_err(|e| classify(&e)),
            Err(_) => Err(GatewayError::UpstreamTimeout),
        }
    }
}

/// The app's response body, holding its connection slot until it is done.
struct SlotBody {
    body: Incoming,
    _slot: OwnedSemaphorePermit,
}

impl HttpBody for SlotBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Proxies one request (or WebSocket handshake) to the internal app.
pub async fn proxy_to_upstream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, GatewayError> {
    let started = tokio::time::Instant::now();
    let Some(upstream) = state.upstream.clone() else {
        return Err(GatewayError::NotFound);
    };
    let (mut parts, body) = request.into_parts();
    let websocket = websocket::is_websocket_upgrade(&parts.method, &parts.headers);
    let session = match admit(&state, &parts, websocket).await? {
        Admission::Public => None,
        Admission::Session(session) => Some(session),
        Admission::LogIn(redirect) => return Ok(redirect),
    };

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
        &state.config.server.public_url,
    );
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(RequestId::header_value);
    let headers = rewrite::request_headers(
        std::mem::take(&mut parts.headers),
        &rewrite::RequestRewrite {
            gateway_cookies: &state.cookies,
            identity: session.as_ref(),
            request_id,
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

    let (response, slot) = upstream.send(outgoing, body.sent).await?;
    let (mut parts, body) = response.into_parts();
    let upgraded = websocket && parts.status == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        let (Some(client), Some(app)) = (client_upgrade, parts.extensions.remove::<OnUpgrade>())
        else {
            return Err(GatewayError::Internal(
                "a WebSocket upgrade could not be taken over".into(),
            ));
        };
        websocket::splice(&state, session.map(|s| s.key), client, app);
    }
    rewrite::response_headers(&mut parts.headers, &state.cookies, upgraded);
    // The app connection stays counted until its response body has been passed on.
    Ok(Response::from_parts(
        parts,
        Body::new(SlotBody { body, _slot: slot }),
    ))
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
    if websocket && !websocket::origin_allowed(&parts.headers, public_url) {
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

/// PRODUCT.md §4's CSRF rule, satisfied by `X-CSRF` or by the browser's own word that the
/// request is same-origin. A request with neither `Sec-Fetch-Site` nor `Origin` is not from a
/// current browser, and must carry `X-CSRF`.
pub fn same_origin_or_csrf_header(
    headers: &HeaderMap,
    public_url: &Url,
) -> Result<(), GatewayError> {
    if require_csrf_header(headers).is_ok() {
        return Ok(());
    }
    let same_origin = match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none"),
        None => websocket::origin_allowed(headers, public_url),
    };
    if same_origin {
        Ok(())
    } else {
        Err(GatewayError::CsrfHeaderMissing)
    }
}

/// 413 when the body outgrew the limit mid-stream, 400 when the client stalled its upload,
/// otherwise 502 (a refused or broken connection to the app).
fn classify(error: &hyper_util::client::legacy::Error) -> GatewayError {
    // The client's own body failing is the client's fault, not the app's.
    if body::caused_by::<LengthLimitError>(error)
        || body::caused_by::<body::BodyStalled>(error)
        || body::caused_by::<body::BodyBroken>(error)
    {
        return body::rejection(error);
    }
    tracing::warn!(error = %error, connect = error.is_connect(), "request to the app behind the gateway failed");
    GatewayError::UpstreamUnreachable
}

#[cfg(test)]
mod csrf_tests {
    use super::*;
    use crate::test_support::header_map as headers;

    #[test]
    fn same_origin_pages_pass_and_other_sites_do_not() {
        let url = Url::parse("https://app.example.com").unwrap();
        let ok = |pairs| same_origin_or_csrf_header(&headers(pairs), &url).is_ok();
        assert!(ok(&[("x-csrf", "1")]));
        assert!(ok(&[("sec-fetch-site", "same-origin")]));
        assert!(ok(&[("origin", "https://app.example.com")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        assert!(!ok(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://app.example.com")
        ]));
        assert!(!ok(&[("origin", "https://evil.example")]));
        assert!(!ok(&[("origin", "null")]));
        assert!(!ok(&[]));
    }
}
