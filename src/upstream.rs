//! The app behind the gateway (`proxy.upstream`): a pooled HTTP/1.1 client built once, with a
//! bounded number of connections in use (`proxy.upstream_max_connections`), and the limits on
//! request bodies on their way to it ([`body`]). The route that uses it is
//! `proxy::proxy_to_upstream`; open WebSockets are tracked in [`websockets`].

pub mod body;
pub mod websockets;

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use http::{
    Request, Uri,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::LengthLimitError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use url::Url;

use crate::{
    config::CaBundle,
    error::{GatewayError, caused_by},
    http_client::{self, Pool, PoolError, PooledBody},
};

pub use websockets::WebSocketRegistry;

/// Longest wait for a TCP connection to the app (capped by `proxy.upstream_timeout`). The app
/// runs beside the gateway: if it does not accept quickly, it is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a free app connection (`proxy.upstream_max_connections`) before 503.
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// Idle keep-alive connections to the app are closed after this. A burst opens as many
/// connections as it needs (up to `proxy.upstream_max_connections`), each holding about
/// 40 KiB of buffers; they go soon after it. (Capping the idle count instead, as nginx's
/// `keepalive N` does, closed and reopened connections under sustained load: c256 through the
/// app path lost 40% of its throughput with 32 per worker.)
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The pooled HTTP/1.1 client for the app, and where the app lives. Built once at start-up.
#[derive(Debug)]
pub struct UpstreamClient {
    client: Pool,
    /// `scheme://host:port` of the app.
    origin: String,
    /// The scheme and `host:port` of `origin`, parsed once.
    scheme: Scheme,
    authority: Authority,
    /// The app's base path without a trailing slash (`""` at the root).
    base_path: String,
    /// `proxy.upstream_timeout`.
    pub timeout: Duration,
    /// One permit per app connection in use (`proxy.upstream_max_connections`).
    slots: Arc<Semaphore>,
}

impl UpstreamClient {
    /// Builds the client for `upstream`. `http://` is the usual sidecar case (the app is on the
    /// same pod or host); `https://` works too, verified against the Mozilla root set and the
    /// CAs of `proxy.ca_file` ([`crate::tls`]).
    pub fn new(
        upstream: &Url,
        timeout: Duration,
        max_connections: usize,
        ca_file: Option<&CaBundle>,
    ) -> anyhow::Result<Self> {
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
        let connector = http_client::connector(CONNECT_TIMEOUT.min(timeout), ca_file)?;
        let host = match upstream.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            _ => host.to_owned(),
        };
        let origin = format!("{scheme}://{host}:{port}");
        let client = http_client::pool(connector, &origin, POOL_IDLE_TIMEOUT, max_connections)?;
        let authority: Authority = format!("{host}:{port}").parse()?;
        Ok(Self {
            client,
            origin,
            scheme: scheme.parse()?,
            authority,
            base_path: upstream.path().trim_end_matches('/').to_owned(),
            timeout,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
        })
    }

    /// The same app behind a pool of its own, sharing this client's connection limit: each
    /// worker runtime (`workers.rs`) keeps its app connections to itself, so a request
    /// and its app connection are served by the same thread.
    pub fn with_own_pool(&self) -> Self {
        Self {
            client: self.client.with_own_connections(),
            origin: self.origin.clone(),
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            base_path: self.base_path.clone(),
            timeout: self.timeout,
            slots: Arc::clone(&self.slots),
        }
    }

    /// `{origin}{base_path}{path}?{query}` with the path and query exactly as received.
    pub fn uri(&self, original: &Uri) -> Result<Uri, GatewayError> {
        let path_and_query = original.path_and_query().map_or("/", |pq| pq.as_str());
        if !path_and_query.starts_with('/') {
            // `OPTIONS *` and the like: nothing an app behind a gateway serves.
            return Err(GatewayError::BadRequest(
                "the request path is not valid".into(),
            ));
        }
        if self.base_path.is_empty() {
            // The usual sidecar: the app at its root. The parts are put together without
            // formatting and parsing the whole URI again (they are shared, not copied).
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(
                original
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            );
            return Uri::from_parts(parts)
                .map_err(|_| GatewayError::BadRequest("the request path is not valid".into()));
        }
        format!("{}{}{}", self.origin, self.base_path, path_and_query)
            .parse()
            .map_err(|_| GatewayError::BadRequest("the request path is not valid".into()))
    }

    /// Sends `request` and waits for the response head: while the body is still uploading
    /// (`body_sent` pending) the client's pace decides, then the app has `timeout` to answer.
    /// The response body holds its connection slot (`proxy.upstream_max_connections`) until it
    /// has been passed on.
    pub async fn send(
        &self,
        request: Request<Body>,
        body_sent: Option<oneshot::Receiver<()>>,
    ) -> Result<hyper::Response<SlotBody>, GatewayError> {
        let slot = http_client::slot(&self.slots, SLOT_WAIT.min(self.timeout)).await;
        let slot = slot.ok_or_else(|| {
            tracing::warn!("every connection to the app is busy (proxy.upstream_max_connections)");
            GatewayError::UpstreamBusy
        })?;
        let response = self.client.request(request);
        tokio::pin!(response);
        if let Some(sent) = body_sent {
            tokio::select! {
                // An app may answer before reading the whole body (a 413 or 401 of its own).
                result = &mut response => return result.map(|r| with_slot(r, slot)).map_err(|e| classify(&e)),
                _ = sent => {}
            }
        }
        match tokio::time::timeout(self.timeout, response).await {
            Ok(result) => result.map(|r| with_slot(r, slot)).map_err(|e| classify(&e)),
            Err(_) => Err(GatewayError::UpstreamTimeout),
        }
    }
}

fn with_slot(
    response: hyper::Response<PooledBody>,
    slot: OwnedSemaphorePermit,
) -> hyper::Response<SlotBody> {
    response.map(|body| SlotBody::new(body, slot))
}

/// The app's response body, holding its connection slot until it is done.
pub type SlotBody = http_client::SlotBody;

/// The client's own body failing is the client's fault (413, 408 or 400, see [`body`]);
/// otherwise 502 (a refused or broken connection to the app).
fn classify(error: &PoolError) -> GatewayError {
    // The client's own body failing is the client's fault, not the app's.
    if caused_by::<LengthLimitError>(error)
        || caused_by::<body::BodyStalled>(error)
        || caused_by::<body::BodyBroken>(error)
    {
        return body::rejection(error);
    }
    let hint = crate::tls::is_untrusted_certificate(error).then_some(crate::tls::UNTRUSTED_HINT);
    tracing::warn!(error = %crate::error::chain(error), connect = error.is_connect(), hint, "request to the app behind the gateway failed");
    GatewayError::UpstreamUnreachable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(upstream: &str) -> UpstreamClient {
        let url = Url::parse(upstream).unwrap();
        UpstreamClient::new(&url, Duration::from_secs(1), 4, None).unwrap()
    }

    #[test]
    fn the_app_uri_keeps_path_and_query_exactly() {
        for (upstream, incoming, expected) in [
            ("http://127.0.0.1:3000", "/", "http://127.0.0.1:3000/"),
            (
                "http://app",
                "/a%2Fb/../c?x=1&y=%20",
                "http://app:80/a%2Fb/../c?x=1&y=%20",
            ),
            (
                "http://app:3000",
                "http://evil.example/p?q",
                "http://app:3000/p?q",
            ),
            (
                "https://[::1]:8443/base/",
                "/x?y",
                "https://[::1]:8443/base/x?y",
            ),
            ("http://app:3000/base", "/", "http://app:3000/base/"),
        ] {
            let uri = client(upstream).uri(&incoming.parse().unwrap()).unwrap();
            assert_eq!(uri.to_string(), expected, "{upstream} + {incoming}");
        }
        for upstream in ["http://app:3000", "http://app:3000/base"] {
            let asterisk = client(upstream).uri(&"*".parse().unwrap());
            assert!(
                matches!(asterisk, Err(GatewayError::BadRequest(_))),
                "{upstream}"
            );
        }
    }
}
