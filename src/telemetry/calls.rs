//! Outbound calls, to Pleo and to the app: each one timed into its metric family, wrapped in a
//! client span, and given that span's `traceparent` when traces are on.
//!
//! ```ignore
//! let call = Call::pleo("api", &method);
//! call.inject(&mut headers);
//! let result = send(headers).instrument(call.span()).await;
//! call.finish(CallResult::Status(200));
//! ```

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};

use super::{
    metrics::{self, CallResult},
    otel,
};

/// Who is called.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// Pleo; the endpoint label says which part.
    Pleo(&'static str),
    /// The app behind the gateway.
    App,
}

/// One outbound call in progress.
#[derive(Debug)]
#[must_use = "a call is counted by finish()"]
pub struct Call {
    peer: Peer,
    started: Instant,
    span: tracing::Span,
}

impl Call {
    /// A call to Pleo; `endpoint` is `api` (a proxied call), `token`, `introspect` or
    /// `installation`.
    pub fn pleo(endpoint: &'static str, method: &Method) -> Self {
        let span = tracing::debug_span!(
            "pleo.request",
            endpoint,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
        );
        if otel::enabled() {
            otel::attribute(&span, "http.request.method", method.as_str().to_owned());
        }
        Self::start(Peer::Pleo(endpoint), span)
    }

    /// A request forwarded to the app.
    pub fn app(method: &Method) -> Self {
        let span = tracing::debug_span!(
            "app.request",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
        );
        if otel::enabled() {
            otel::attribute(&span, "http.request.method", method.as_str().to_owned());
        }
        Self::start(Peer::App, span)
    }

    fn start(peer: Peer, span: tracing::Span) -> Self {
        Self {
            peer,
            started: Instant::now(),
            span,
        }
    }

    /// The call's span, to instrument the sending future with.
    pub fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// Puts this call's `traceparent` into the outgoing headers (nothing when traces are off:
    /// the headers then go out as they are).
    pub fn inject(&self, headers: &mut HeaderMap) {
        if otel::enabled() {
            otel::inject(&self.span, headers);
        }
    }

    /// Ends a call that failed on the client's side (its request body broke off or was too
    /// large): not the peer's doing, so not counted against it.
    pub fn abandon(self) {}

    /// Records how the call ended: its metric, and its span's status.
    pub fn finish(self, result: CallResult) {
        let took: Duration = self.started.elapsed();
        match self.peer {
            Peer::Pleo(endpoint) => metrics::pleo_call(endpoint, result, took),
            Peer::App => metrics::app_call(result, took),
        }
        if otel::enabled() {
            if let CallResult::Status(code) = result {
                otel::attribute(&self.span, "http.response.status_code", i64::from(code));
            }
            if !matches!(result, CallResult::Status(code) if code < 500) {
                self.span.record("otel.status_code", "error");
            }
        }
    }
}
