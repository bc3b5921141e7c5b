//! The Pleo API client: the one place that joins Pleo API URLs, sends requests with a session's
//! bearer token, maps failures to responses, asks Pleo who a token belongs to
//! (`GET /v1/introspect`) and deletes the installation (`DELETE /v1/installations/me`).
//!
//! Built once at start-up, then once more per worker runtime. The proxied calls, one per
//! `{pleo_prefix}/…` request, go through a bare hyper pool ([`crate::http_client`], like the
//! app's): the request and response heads pass as they are, without the URL parsing and header
//! conversions of a general-purpose client. The gateway's own few calls (introspection, the
//! installation) keep reqwest for its JSON handling.

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Uri, header};
use http_body_util::LengthLimitError;
use reqwest::Method;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use url::Url;

use crate::{
    config::PleoConfig,
    error::{GatewayError, caused_by},
    http_client::{self, Pool, PoolError, PooledBody},
    telemetry::{Call, CallResult},
};

/// The pooled clients for `pleo.api_url`.
#[derive(Debug)]
pub struct PleoApi {
    /// The gateway's own calls.
    client: reqwest::Client,
    /// Proxied calls.
    pool: Pool,
    /// Sent when the caller sent no `User-Agent` of its own.
    user_agent: HeaderValue,
    /// `api_url` without a trailing slash, so paths starting with `/` can be appended.
    base: String,
    timeout: Duration,
    /// One permit per proxied call in flight (`pleo.max_connections`), shared by every
    /// worker's client.
    slots: Arc<Semaphore>,
}

/// What the gateway calls itself towards Pleo.
const USER_AGENT: &str = concat!("pleo-gateway/", env!("CARGO_PKG_VERSION"));

/// Longest wait for a free connection to Pleo (`pleo.max_connections`) before 503.
const SLOT_WAIT: Duration = Duration::from_secs(5);

/// Who a token belongs to, from `GET /v1/introspect`.
#[derive(Debug)]
pub struct Identity {
    /// The company or organisation URN.
    pub subject: String,
    /// The granted scopes.
    pub scopes: Vec<String>,
}

#[derive(Deserialize)]
struct IntrospectEnvelope {
    data: IntrospectData,
}

#[derive(Deserialize)]
struct IntrospectData {
    #[serde(rename = "subjectURN")]
    subject_urn: String,
    #[serde(default)]
    scope: String,
}

/// Idle keep-alive connections to Pleo's API are closed after this.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl PleoApi {
    /// The client for `config.api_url`: no redirects followed, connect and read timeouts, the
    /// CAs of `pleo.ca_file` trusted besides the built-in roots.
    pub fn new(config: &PleoConfig) -> anyhow::Result<Self> {
        Self::with_slots(
            config,
            Arc::new(Semaphore::new(config.max_connections.max(1))),
        )
    }

    /// The same API behind a pool of its own (for one worker runtime, see
    /// `AppState::with_own_pools` in `state.rs`), sharing this client's connection limit.
    pub fn with_own_pool(&self, config: &PleoConfig) -> anyhow::Result<Self> {
        Self::with_slots(config, Arc::clone(&self.slots))
    }

    fn with_slots(config: &PleoConfig, slots: Arc<Semaphore>) -> anyhow::Result<Self> {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.request_timeout)
            // Long enough to spare a TLS handshake between calls of one page, short enough
            // that a burst's connections (about 40 KiB each) do not outstay it for long.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(USER_AGENT);
        let client = crate::tls::trust_in_reqwest(builder, config.ca_file.as_ref())?.build()?;
        let connector = http_client::connector(config.connect_timeout, config.ca_file.as_ref())?;
        Ok(Self {
            client,
            pool: http_client::pool(
                connector,
                config.api_url.origin().ascii_serialization().as_str(),
                POOL_IDLE_TIMEOUT,
                config.max_connections,
            )?,
            user_agent: HeaderValue::from_static(USER_AGENT),
            base: config.api_url.as_str().trim_end_matches('/').to_owned(),
            timeout: config.request_timeout,
            slots,
        })
    }

    /// A connection slot for one proxied call (`pleo.max_connections`), to hold until its
    /// response body has been passed on. Each in-flight call holds a connection and about
    /// 57 KiB with it, so the bound is what keeps a burst of `/pleo` calls within the memory
    /// a replica is given. A call that finds none free within 5 s gets 503 with Retry-After.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, GatewayError> {
        http_client::slot(&self.slots, SLOT_WAIT)
            .await
            .ok_or_else(|| {
                tracing::warn!("every connection to Pleo is busy (pleo.max_connections)");
                GatewayError::PleoUnavailable {
                    retry_after: Duration::from_secs(1),
                }
            })
    }

    /// `{api_url}{path}?{query}`. `path` starts with `/` (anything else becomes `/`); the query
    /// is passed through as sent.
    pub fn url(&self, path: &str, query: Option<&str>) -> Result<Url, GatewayError> {
        let path = if path.starts_with('/') { path } else { "/" };
        let mut url = Url::parse(&format!("{}{path}", self.base))
            .map_err(|_| GatewayError::BadRequest("the Pleo API path is not valid".into()))?;
        url.set_query(query);
        Ok(url)
    }

    /// The request URI of a proxied call: `{api_url}{path}?{query}`, with `path` (what followed
    /// the prefix, starting with `/`) and the query as received.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, GatewayError> {
        let path = if path.starts_with('/') { path } else { "/" };
        let mut uri =
            String::with_capacity(self.base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        uri.push_str(&self.base);
        uri.push_str(path);
        if let Some(query) = query {
            uri.push('?');
            uri.push_str(query);
        }
        Uri::try_from(uri)
            .map_err(|_| GatewayError::BadRequest("the Pleo API path is not valid".into()))
    }

    /// Sends one proxied call with `access_token` as the bearer (and the gateway's
    /// `User-Agent` if the caller sent none) and waits for the response head. The caller bounds
    /// the wait ([`timeout`](Self::timeout)) and classifies a failure ([`map_proxy_error`]).
    /// Gives back the request's headers as they went out, for a retry with a new token
    /// ([`crate::http_client::Pool::request_keeping_headers`]).
    pub async fn forward(
        &self,
        mut request: http::Request<Body>,
        access_token: &str,
    ) -> Result<(http::Response<PooledBody>, HeaderMap), GatewayError> {
        let mut bearer = HeaderValue::try_from(format!("Bearer {access_token}"))
            .map_err(|_| GatewayError::Internal("the access token is not a header value".into()))?;
        bearer.set_sensitive(true);
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, bearer);
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, self.user_agent.clone());
        }
        self.pool
            .request_keeping_headers(request)
            .await
            .map_err(|e| map_proxy_error(&e))
    }

    /// A request with `access_token` as the bearer; the caller adds headers and body.
    pub fn request(&self, method: Method, url: Url, access_token: &str) -> reqwest::RequestBuilder {
        self.client.request(method, url).bearer_auth(access_token)
    }

    /// Deadline for a whole call up to the response head (`pleo.request_timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks Pleo who `access_token` belongs to.
    pub async fn introspect(&self, access_token: &str) -> anyhow::Result<Identity> {
        let url = self
            .url("/v1/introspect", None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let response = self
            .send("introspect", Method::GET, url, access_token)
            .await?
            .error_for_status()?;
        let envelope: IntrospectEnvelope = response.json().await?;
        Ok(Identity {
            subject: envelope.data.subject_urn,
            scopes: envelope
                .data
                .scope
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        })
    }

    /// `DELETE /v1/installations/me`: Pleo's only revocation.
    pub async fn delete_installation(
        &self,
        access_token: &str,
    ) -> Result<reqwest::Response, GatewayError> {
        let url = self.url("/v1/installations/me", None)?;
        self.send("installation", Method::DELETE, url, access_token)
            .await
            .map_err(map_error)
    }

    /// One call of the gateway's own to the API (`endpoint` names it in the metrics), bounded
    /// by `pleo.request_timeout`, carrying the trace context.
    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        access_token: &str,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let call = Call::pleo(endpoint, &method);
        let mut headers = reqwest::header::HeaderMap::new();
        call.inject(&mut headers);
        let result = self
            .request(method, url, access_token)
            .headers(headers)
            .timeout(self.timeout)
            .send()
            .instrument(call.span())
            .await;
        call.finish(CallResult::of(&result));
        result
    }
}

/// Classifies a proxied call's failure: the caller's own body over the limit is 413, a connect
/// timeout 504, everything else 502.
pub fn map_proxy_error(error: &PoolError) -> GatewayError {
    if caused_by::<LengthLimitError>(error) {
        return GatewayError::BodyTooLarge;
    }
    let timed_out = error.is_connect()
        && std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
    if timed_out {
        return GatewayError::PleoTimeout;
    }
    unreachable(error)
}

/// Classifies an outbound failure: timeouts are 504, everything else 502.
pub fn map_error(error: reqwest::Error) -> GatewayError {
    if error.is_timeout() {
        GatewayError::PleoTimeout
    } else {
        unreachable(&error)
    }
}

/// 502: logged with its causes, and with a hint when the certificate was not trusted.
fn unreachable(error: &(dyn std::error::Error + 'static)) -> GatewayError {
    let hint = crate::tls::is_untrusted_certificate(error).then_some(crate::tls::UNTRUSTED_HINT);
    tracing::warn!(error = %crate::error::chain(error), hint, "Pleo API request failed");
    GatewayError::PleoUnreachable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(base: &str) -> PleoApi {
        let connector = http_client::connector(Duration::from_secs(1), None).unwrap();
        PleoApi {
            client: reqwest::Client::new(),
            pool: http_client::pool(
                connector,
                &Url::parse(base).unwrap().origin().ascii_serialization(),
                POOL_IDLE_TIMEOUT,
                1,
            )
            .unwrap(),
            user_agent: HeaderValue::from_static(USER_AGENT),
            base: base.trim_end_matches('/').to_owned(),
            timeout: Duration::from_secs(1),
            slots: Arc::new(Semaphore::new(1)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_max_connections_wait_for_a_slot_then_get_503() {
        let api = api("http://127.0.0.1:9"); // one slot
        let held = api.slot().await.unwrap();
        // Nobody frees it: after 5 s of (paused) waiting, 503 with Retry-After.
        assert!(matches!(
            api.slot().await,
            Err(GatewayError::PleoUnavailable { .. })
        ));
        // A waiter gets the slot as soon as the call holding it is done.
        let api = std::sync::Arc::new(api);
        let waiter = tokio::spawn({
            let api = std::sync::Arc::clone(&api);
            async move { api.slot().await.is_ok() }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn proxied_calls_join_the_same_uris() {
        let api = api("http://127.0.0.1:9/pleo-api/");
        for (path, query) in [
            ("/v2/employees", Some("limit=5&q=a%20b")),
            ("/v1/introspect", None),
            ("no-slash", None),
            ("/v2/x%2Fy", Some("")),
        ] {
            assert_eq!(
                api.uri(path, query).unwrap().to_string(),
                api.url(path, query).unwrap().as_str(),
                "{path} {query:?}"
            );
        }
    }

    #[test]
    fn paths_are_appended_to_the_base_path_and_queries_kept() {
        let api = api("https://external.pleo.io/");
        assert_eq!(
            api.url("/v2/employees", Some("limit=5")).unwrap().as_str(),
            "https://external.pleo.io/v2/employees?limit=5"
        );
        let nested = self::api("http://127.0.0.1:9/pleo-api");
        assert_eq!(
            nested.url("/v1/introspect", None).unwrap().as_str(),
            "http://127.0.0.1:9/pleo-api/v1/introspect"
        );
        assert_eq!(
            nested.url("no-slash", None).unwrap().as_str(),
            "http://127.0.0.1:9/pleo-api/"
        );
    }
}
