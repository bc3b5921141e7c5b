//! The innermost service of the public listener: the two proxies' paths go straight to their
//! handlers, everything else through axum's router.
//!
//! **Why.** Nearly every request the gateway serves is proxied, to the app (the router's
//! fallback) or to Pleo (`{proxy.pleo_prefix}/…`). For those the router did work no handler
//! reads: the original URI cloned into an extension, url params (the fallback is a catch-all
//! route) and a matched path inserted into a hash map the request allocates for them, the
//! route's boxed service cloned into a fresh box, and the handler's future boxed again inside
//! the route's own future. About a fifth of a proxied request's allocations.
//!
//! **Same answers.** A path goes straight to a proxy only when the router would route it
//! there: [`route`] is a pure function of the path and the configured prefix, and the
//! gateway's own routes are few and fixed (`/auth`, `/auth/…`, `/healthz`, `/readyz`,
//! `/metrics`, `/metrics/…`, the prefix itself and `prefix/`; `proxy.pleo_prefix` is validated
//! to stay clear of them). The response is finished as axum finishes a routed one
//! ([`finish_like_router`]). Anything unusual (a path not starting with `/`, a request without
//! a client address: [`crate::forwarded::peer`]) takes the router. A test sends the same
//! requests through both and compares the answers byte for byte.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, header},
    response::{IntoResponse, Response},
};
use hyper::body::Body as _;
use tower::Service;

use crate::{
    error::GatewayError,
    forwarded::peer::{self, Peer},
    proxy,
    state::AppState,
};

/// Where a path goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The app proxy (the router's fallback when an app is configured).
    App,
    /// The Pleo proxy (`{pleo_prefix}/{*path}`).
    Pleo,
    /// The router: the gateway's own routes, and anything [`route`] does not decide.
    Router,
}

/// Where the router would send `path`, for the paths that go to a proxy; [`Route::Router`] for
/// the rest. `pleo_prefix` is `proxy.pleo_prefix` (validated: `/name`, no trailing `/`, clear
/// of the gateway's routes); `app` whether an app is configured.
pub fn route(path: &str, pleo_prefix: &str, app: bool) -> Route {
    // The gateway's own routes: exact paths, and the namespaces under `/auth/` and
    // `/metrics/` (each a catch-all in the router).
    const EXACT: [&str; 4] = ["/auth", "/healthz", "/readyz", "/metrics"];
    const UNDER: [&str; 2] = ["/auth/", "/metrics/"];
    if !path.starts_with('/') || EXACT.contains(&path) || UNDER.iter().any(|u| path.starts_with(u))
    {
        return Route::Router;
    }
    if let Some(rest) = path
        .strip_prefix(pleo_prefix)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        // `prefix/` alone is the router's (a 404); the catch-all needs at least one byte.
        return if rest.is_empty() {
            Route::Router
        } else {
            Route::Pleo
        };
    }
    if path == pleo_prefix || !app {
        return Route::Router;
    }
    Route::App
}

/// What axum does to a routed handler's response at the top level (`RouteFuture`): a
/// successful answer to CONNECT loses any body; otherwise a body of known size gets its
/// `Content-Length` if the handler set none, and the answer to HEAD loses its body.
pub fn finish_like_router(method: &Method, mut response: Response) -> Response {
    if *method == Method::CONNECT && response.status().is_success() {
        let headers = response.headers();
        if headers.contains_key(header::CONTENT_LENGTH)
            || headers.contains_key(header::TRANSFER_ENCODING)
            || response.body().size_hint().lower() != 0
        {
            *response.body_mut() = Body::empty();
        }
        return response;
    }
    let size = response.body().size_hint().exact();
    set_content_length(size, response.headers_mut());
    if *method == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    response
}

fn set_content_length(size: Option<u64>, headers: &mut HeaderMap) {
    if headers.contains_key(header::CONTENT_LENGTH) {
        return;
    }
    if let Some(size) = size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
}

/// The service: [`route`], then the proxy's handler or the router.
#[derive(Clone)]
pub struct Dispatch {
    router: Router,
    state: AppState,
    /// False: every request is routed (what the direct paths are compared with in tests).
    direct: bool,
}

impl Dispatch {
    /// `router` is the gateway's router, built from `state`.
    pub fn new(router: Router, state: AppState) -> Self {
        Self {
            router,
            state,
            direct: true,
        }
    }

    /// Every request through `router`, none direct.
    #[cfg(test)]
    pub fn routed_only(router: Router, state: AppState) -> Self {
        Self {
            direct: false,
            ..Self::new(router, state)
        }
    }

    fn route(&self, request: &Request) -> Route {
        route(
            request.uri().path(),
            &self.state.config.proxy.pleo_prefix,
            self.state.upstream.is_some(),
        )
    }
}

type Boxed = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = Boxed;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready (axum's `Router::poll_ready` says so), the handlers too.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = || State(self.state.clone());
        match self.route(&request) {
            // Without a client address the router answers (its extractor: a 500).
            Route::App if self.direct => match peer::of(&request) {
                Some(peer) => {
                    let method = request.method().clone();
                    direct(
                        method,
                        proxy::proxy_to_upstream(state(), Peer(peer), request),
                    )
                }
                None => Box::pin(self.router.call(request)),
            },
            Route::Pleo if self.direct => {
                let method = request.method().clone();
                direct(method, proxy::proxy_to_pleo(state(), request))
            }
            _ => Box::pin(self.router.call(request)),
        }
    }
}

/// A proxy handler's answer, finished as the router would have finished it.
fn direct(
    method: Method,
    handler: impl Future<Output = Result<Response, GatewayError>> + Send + 'static,
) -> Boxed {
    Box::pin(async move { Ok(finish_like_router(&method, handler.await.into_response())) })
}

#[cfg(test)]
mod tests;
