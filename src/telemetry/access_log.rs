//! The request middleware: one span per request (carrying the request id, so every log line the
//! request causes names it), the request metrics, and one access-log line per request.
//!
//! Two layers in `app.rs`: [`Observe`] wraps the router (it sees the final status, and turns
//! panics into 500s), and [`label_route`] sits inside the router where the matched route is
//! known. Handlers add what only they know — the route of a proxied call ([`note_route`]), the
//! session and subject ([`note_session`]) — into a task-local record the request owns, so
//! nothing is allocated or locked to pass it out.
//!
//! The access line (target `pleo_gateway::access_log`, level info): `method`, `route`, `status`,
//! `duration_ms` (to the response head), `request_id`, and when a session was found, `session`
//! (the 12-character prefix of its keyed hash, as in every other log line) and `subject`. Never a
//! path, query, header, cookie or token. `server.access_log = false` turns it off.

use std::{
    cell::{Cell, RefCell},
    convert::Infallible,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures_util::FutureExt;
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};

use super::{metrics, otel};
use crate::{
    error::{ErrorBody, GatewayError},
    session::{Session, SessionData},
};

/// The access log's settings, given to [`ObserveLayer`].
#[derive(Clone, Copy, Debug)]
pub struct AccessLog {
    /// `server.access_log`.
    pub enabled: bool,
}

/// Route label of requests no route matched (and of the gateway's own 404 namespaces).
pub const UNMATCHED: &str = "unmatched";

tokio::task_local! {
    static FACTS: Facts;
}

/// What handlers learn about a request that its log line and metrics want.
#[derive(Debug)]
struct Facts {
    route: Cell<&'static str>,
    session: Cell<Option<[u8; 12]>>,
    /// The session's data, for its subject; kept only while the access log is on. Shared, not
    /// copied: a copy of the URN would be an allocation per request.
    subject: RefCell<Option<Arc<SessionData>>>,
    keep_subject: bool,
}

/// [`Facts`] once the request is answered.
#[derive(Debug, Default)]
struct Finished {
    route: &'static str,
    session: Option<[u8; 12]>,
    subject: Option<Arc<SessionData>>,
}

impl Finished {
    fn session(&self) -> Option<&str> {
        self.session
            .as_ref()
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
    }

    fn subject(&self) -> Option<&str> {
        self.subject.as_ref()?.subject.as_deref()
    }
}

/// The layer around the router: span, metrics, access log, and panics caught (see [`Observe`]).
#[derive(Clone, Copy, Debug)]
pub struct ObserveLayer(pub AccessLog);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, log: self.0 }
    }
}

/// Wraps the router as a whole, not each route: a layer given to `Router::layer` is boxed once
/// per route and its service cloned into a new box on every request, which cost about ten
/// allocations a request for this layer and the panic catcher. The one box here is the
/// request's future.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    log: AccessLog,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone that was made ready is the one that serves this request.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(observe(self.log, request, inner).map(Ok))
    }
}

/// One request: span, metrics, access log around `inner`, which answers it. A panic in a
/// handler becomes a 500 in the gateway's JSON format (logged and counted like any other
/// answer) instead of a dropped connection.
async fn observe<S>(log: AccessLog, request: Request, inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let started = Instant::now();
    let method = method_label(request.method());
    // Kept for the access line: the response gets its copy of the id outside this layer.
    let request_id_value = request
        .headers()
        .get(crate::request_id::X_REQUEST_ID)
        .cloned();
    let request_id = request_id_value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id,
        method,
        otel.kind = Empty,
        otel.status_code = Empty,
    );
    if otel::enabled() {
        span.record("otel.kind", "server");
        otel::continue_trace(&span, request.headers());
        otel::attribute(&span, "url.path", request.uri().path().to_owned());
        otel::attribute(&span, "http.request.method", method);
    }
    let facts = Facts {
        route: Cell::new(UNMATCHED),
        session: Cell::new(None),
        subject: RefCell::new(None),
        keep_subject: log.enabled,
    };
    // The span goes into the future and is read back from it, not cloned into it (a clone
    // and a close in tracing's registry per request); it closes at the end of this block,
    // before the access line.
    let (response, finished, took, status) = {
        let mut answering =
            std::pin::pin!(FACTS.scope(facts, answer(inner, request)).instrument(span));
        let (response, finished) = answering.as_mut().await;
        let took = started.elapsed();
        let status = response.status().as_u16();
        let route = finished.route;
        metrics::http_request(route, method, status, took);
        if let Some(error) = response.extensions().get::<ErrorBody>().map(|b| b.error)
            && (error == GatewayError::CsrfHeaderMissing.code()
                || error == GatewayError::OriginNotAllowed.code())
        {
            metrics::csrf_rejection(route, error);
        }
        if otel::enabled() {
            let span = answering.span();
            otel::rename(span, format!("{method} {route}"));
            otel::attribute(span, "http.route", route);
            otel::attribute(span, "http.response.status_code", i64::from(status));
            if status >= 500 {
                span.record("otel.status_code", "error");
            }
        }
        (response, finished, took, status)
    };
    let route = finished.route;
    if log.enabled {
        let request_id = request_id_value.as_ref().and_then(|v| v.to_str().ok());
        tracing::info!(
            target: "pleo_gateway::access_log",
            method,
            route,
            status,
            duration_ms = took.as_micros() as f64 / 1000.0,
            request_id,
            session = finished.session(),
            subject = finished.subject(),
            "request"
        );
    }
    response
}

/// `inner`'s answer to `request` (a panic in it becomes a 500), with what the handlers noted.
/// Runs inside [`FACTS`]' scope.
async fn answer<S>(mut inner: S, request: Request) -> (Response, Finished)
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    // `call` too: routing runs there, before the handler's future exists.
    let answered = match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(request))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    let response = match answered {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => {
            // The payload is not logged: a panic message may quote request data.
            GatewayError::Internal("a request handler panicked".into()).into_response()
        }
    };
    let finished = FACTS
        .try_with(|facts| Finished {
            route: facts.route.get(),
            session: facts.session.get(),
            subject: facts.subject.take(),
        })
        .unwrap_or_default();
    (response, finished)
}

/// Middleware inside the router: labels the request with the route that matched.
pub async fn label_route(request: Request, next: Next) -> Response {
    if let Some(matched) = request.extensions().get::<MatchedPath>() {
        note_route(route_label(matched.as_str()));
    }
    next.run(request).await
}

/// Sets the request's route label (for proxied calls, which only their handler can name).
pub fn note_route(route: &'static str) {
    let _ = FACTS.try_with(|facts| facts.route.set(route));
}

/// Records the session a request acts for: the 12-character prefix of its key, and its subject.
pub fn note_session(session: &Session) {
    let _ = FACTS.try_with(|facts| {
        facts
            .session
            .set(session.key.short().as_bytes().try_into().ok());
        if facts.keep_subject {
            *facts.subject.borrow_mut() = Some(Arc::clone(&session.data));
        }
    });
}

/// The label of a route the router matched: its template for the gateway's own routes, one
/// label for the forward-auth variants, [`UNMATCHED`] for the namespaces that only answer 404.
/// The Pleo proxy and the app label themselves ([`note_route`]): their templates depend on the
/// configuration.
fn route_label(matched: &str) -> &'static str {
    match matched {
        "/auth/login" => "/auth/login",
        "/auth/callback" => "/auth/callback",
        "/auth/session" => "/auth/session",
        "/auth/logout" => "/auth/logout",
        "/auth/disconnect" => "/auth/disconnect",
        "/auth/check" | "/auth/check/" | "/auth/check/{*rest}" => "/auth/check",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/auth/jwks.json" => "/auth/jwks.json",
        _ => UNMATCHED,
    }
}

/// A fixed set: the method is client-chosen, and every distinct label value is a series kept
/// for ever, so arbitrary methods would grow memory without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(route_label("/auth/check/{*rest}"), "/auth/check");
        assert_eq!(route_label("/auth/{*rest}"), UNMATCHED);
        assert_eq!(route_label("/pleo/{*path}"), UNMATCHED);
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "other"
        );
        assert_eq!(method_label(&Method::DELETE), "DELETE");
    }

    #[tokio::test]
    async fn handlers_notes_reach_the_request_and_nothing_outside_one() {
        let key = crate::session::SessionHasher::new(&[crate::config::EncryptionKey::generate()])
            .current("x");
        let session = Session {
            key: key.clone(),
            version: 1,
            absolute_deadline_ms: 0,
            data: Arc::new(SessionData {
                access_token: secrecy::SecretString::from("t"),
                refresh_token: None,
                access_expires_at_ms: 0,
                access_lifetime_ms: 0,
                subject: Some("urn:pleo:company:x".into()),
                scopes: Vec::new(),
                created_at_ms: 0,
            }),
        };
        // Outside a request the notes are dropped, never a panic.
        note_route("app");
        note_session(&session);
        let facts = Facts {
            route: Cell::new(UNMATCHED),
            session: Cell::new(None),
            subject: RefCell::new(None),
            keep_subject: true,
        };
        let finished = FACTS
            .scope(facts, async {
                note_route("app");
                note_session(&session);
                FACTS
                    .try_with(|f| Finished {
                        route: f.route.get(),
                        session: f.session.get(),
                        subject: f.subject.take(),
                    })
                    .unwrap()
            })
            .await;
        assert_eq!(finished.route, "app");
        assert_eq!(finished.session(), Some(key.short()));
        assert_eq!(finished.subject(), Some("urn:pleo:company:x"));
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_service_goes_on() {
        use axum::{Router, body::Body, routing::get};
        use tower::ServiceExt;

        async fn explode() -> &'static str {
            panic!("handler bug")
        }
        let router: Router = Router::new()
            .route("/boom", get(explode))
            .route("/fine", get(|| async { "ok" }));
        let service = ObserveLayer(AccessLog { enabled: true }).layer(router);
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();

        let response = service.clone().oneshot(get("/boom")).await.unwrap();
        assert_eq!(response.status(), 500);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "internal_error");
        assert!(!body.to_string().contains("handler bug"), "{body}");

        let response = service.oneshot(get("/fine")).await.unwrap();
        assert_eq!(response.status(), 200);
    }
}
