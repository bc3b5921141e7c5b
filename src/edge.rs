//! What every request on the public listener gets on its way in and out, as one tower layer
//! around the rest (the request span and access log, panic catching, the router):
//!
//! - **In:** an inbound `X-Request-Id` and trace context are kept only from a trusted proxy
//!   ([`crate::request_id`]); a request without an id gets a fresh UUID v4 in the header,
//!   which the app and Pleo calls pass on (no extension: one would cost the request a map of
//!   them); cookies,
//!   credentials and the identity assertion are marked sensitive before anything could log a
//!   header.
//! - **Out:** the response carries the request id; an error answering a browser navigation
//!   becomes an HTML page ([`crate::error::html`]); `Set-Cookie` is marked sensitive.
//!
//! This was five layers (`from_fn` twice, tower-http's request-id pair and sensitive-headers
//! pair). Each `from_fn` boxed its future and cloned the inner service on every request, and
//! the UUIDs cost a `getrandom` system call each; together about 45% of a proxied request's
//! allocations. Here nothing is boxed and ids come from the thread's CSPRNG.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::Response,
};
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::{
    error::{is_navigation, render_error_page},
    forwarded::peer,
    identity::IDENTITY_HEADER,
    request_id::{X_REQUEST_ID, drop_untrusted_ids},
};

/// Request headers no log line may show.
const SENSITIVE_REQUEST: [HeaderName; 4] = [
    header::COOKIE,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static(IDENTITY_HEADER),
];

/// The layer; `trusted_proxies` is `server.trusted_proxies`.
#[derive(Clone, Debug)]
pub struct EdgeLayer {
    trusted_proxies: Arc<Vec<IpNet>>,
}

impl EdgeLayer {
    /// The layer for a listener behind `trusted_proxies`.
    pub fn new(trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            trusted_proxies: Arc::new(trusted_proxies),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            trusted_proxies: Arc::clone(&self.trusted_proxies),
        }
    }
}

/// See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
    trusted_proxies: Arc<Vec<IpNet>>,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let peer_trusted = peer::of(&request).is_some_and(|peer| {
            let peer = peer.ip().to_canonical();
            self.trusted_proxies.iter().any(|net| net.contains(&peer))
        });
        let headers = request.headers_mut();
        drop_untrusted_ids(headers, peer_trusted);
        mark_sensitive(headers, &SENSITIVE_REQUEST);
        let request_id = match headers.get(X_REQUEST_ID) {
            Some(kept) => kept.clone(),
            None => {
                let fresh = new_request_id();
                headers.insert(X_REQUEST_ID, fresh.clone());
                fresh
            }
        };
        let navigation = is_navigation(headers);
        EdgeFuture {
            inner: self.inner.call(request),
            request_id: Some(request_id),
            navigation,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response, finished on its way out (see [`Edge`]).
    pub struct EdgeFuture<F> {
        #[pin]
        inner: F,
        request_id: Option<HeaderValue>,
        navigation: bool,
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let mut response = if *this.navigation {
            render_error_page(response)
        } else {
            response
        };
        let headers = response.headers_mut();
        if let Some(id) = this.request_id.take()
            && !headers.contains_key(X_REQUEST_ID)
        {
            headers.insert(X_REQUEST_ID, id);
        }
        mark_sensitive(headers, &[header::SET_COOKIE]);
        Poll::Ready(Ok(response))
    }
}

/// Marks every value of `names` sensitive (hyper and `Debug` print them as `Sensitive`).
///
/// One pass over the headers present, comparing names (a standard name compares as a number),
/// rather than an entry per name: an entry hashes the name and first makes room for an insert
/// it will not do, which cost more than the pass for a browser's dozen headers.
fn mark_sensitive(headers: &mut HeaderMap, names: &[HeaderName]) {
    for (name, value) in headers.iter_mut() {
        if names.contains(name) {
            value.set_sensitive(true);
        }
    }
}

/// A UUID v4 (RFC 9562) from the thread's CSPRNG, lower-case hex with hyphens.
fn new_request_id() -> HeaderValue {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    // Shared, not copied: the id goes into the request, the response and the app's request,
    // and a copied value would be copied again the first time it is cloned. Always valid:
    // hex digits and hyphens only.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36);
        let parsed: Vec<&str> = text.split('-').collect();
        assert_eq!(
            parsed.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parsed[2].starts_with('4'), "{text}");
        assert!(matches!(&parsed[3][..1], "8" | "9" | "a" | "b"), "{text}");
        assert!(crate::request_id::is_plain_request_id(text.as_bytes()));
    }

    #[test]
    fn every_value_of_a_sensitive_header_is_marked() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        mark_sensitive(&mut headers, &SENSITIVE_REQUEST);
        assert!(
            headers
                .get_all(header::COOKIE)
                .iter()
                .all(HeaderValue::is_sensitive)
        );
        assert!(!headers[header::ACCEPT].is_sensitive());
    }
}
