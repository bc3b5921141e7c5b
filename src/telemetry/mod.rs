//! Logs, metrics and traces, and the process-wide initialisation the TLS stack needs.
//!
//! - [`access_log`]: the request span (request id on every log line), request metrics and the
//!   access-log line;
//! - [`metrics`]: every Prometheus family, described once, and `/metrics`; `process` adds the
//!   process's CPU, memory and file descriptors at scrape time;
//! - [`calls`]: outbound calls to Pleo and the app (metric, span, `traceparent`);
//! - [`otel`]: OpenTelemetry export over OTLP, on only when `OTEL_*` asks for it.

pub mod access_log;
pub mod calls;
mod json_fields;
pub mod metrics;
pub mod otel;
mod process;
mod series;
mod text_fields;

use std::time::Duration;

use tracing::{Level, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer, filter::filter_fn, fmt, prelude::*, registry::LookupSpan,
};

pub use calls::Call;
pub use metrics::{CallResult, RefreshOutcome, metrics_handle, render_metrics};

/// What must be flushed before the process exits.
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (waiting at most 5 s for the collector).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The flush blocks until the export is done; the export itself runs on this runtime.
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "could not flush the last spans");
        }
    }
}

/// Installs logging only (the demo and the mock). See [`init`].
pub fn init_tracing() {
    install(None);
}

/// Installs logging, and trace export when the `OTEL_*` variables ask for it (see [`otel`]).
///
/// Logs: `RUST_LOG` filters (default `info`); `PLEO_GATEWAY_LOG_FORMAT=json` writes one JSON
/// object per line, with the spans the line happened in (`spans[0].request_id`, …).
pub fn init() -> anyhow::Result<Telemetry> {
    let pipeline = otel::from_env()?;
    let provider = pipeline.as_ref().map(|p| p.provider.clone());
    install(pipeline.map(|p| p.tracer));
    if provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

fn install(tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    let result = match tracer {
        // Traces see the gateway's own spans (debug and up: session load, calls, refresh steps)
        // and its info+ events, whatever RUST_LOG says about the log lines.
        Some(tracer) => tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    .with_filter(filter_fn(|meta| {
                        meta.target().starts_with("pleo_gateway")
                            && *meta.level()
                                <= if meta.is_span() {
                                    Level::DEBUG
                                } else {
                                    Level::INFO
                                }
                    })),
            )
            .with(log_lines().with_filter(log_filter()))
            .try_init(),
        // Off: no trace layer at all, so nothing of it runs per request, and the log filter
        // is the subscriber's own: a filter given to one of several layers keeps per-layer
        // state on every enter and exit of every span, about 2,000 instructions per request.
        None => tracing_subscriber::registry()
            .with(log_filter())
            .with(log_lines())
            .try_init(),
    };
    // Already installed (tests, embedding): keep the existing one.
    let _ = result;
}

/// Which log lines are written: `RUST_LOG`, `info` by default.
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The log lines: text or JSON on stdout (the caller filters them).
fn log_lines<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let json =
        std::env::var("PLEO_GATEWAY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    if json {
        fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .fmt_fields(json_fields::JsonSpanFields)
            .boxed()
    } else {
        fmt::layer()
            .with_target(false)
            .fmt_fields(text_fields::TextFields)
            .with_ansi(colour())
            .boxed()
    }
}

/// Whether text lines carry colour codes: only on a terminal, and not with `NO_COLOR` set
/// (<https://no-color.org>). A container's stdout goes to a log collector, where the codes would
/// be noise in every line (and cost a third of formatting the request span).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// One finished token refresh of session `session` (the key's short prefix): its metrics and
/// its log line.
pub fn refresh_finished(outcome: RefreshOutcome, session: &str, took: Duration) {
    metrics::refresh(outcome, took);
    let duration_ms = took.as_micros() as f64 / 1000.0;
    let label = outcome.as_str();
    if outcome.failed() {
        tracing::warn!(
            session,
            outcome = label,
            duration_ms,
            "token refresh failed"
        );
    } else if outcome == RefreshOutcome::NotNeeded {
        // Requests queued behind this replica's refresh: one line per request would be noise.
        tracing::debug!(session, outcome = label, duration_ms, "token refresh");
    } else {
        tracing::info!(session, outcome = label, duration_ms, "token refresh");
    }
}

/// Selects `ring` as the one rustls crypto provider for every TLS client in the process
/// (reqwest and redis), so none of them falls back to a different provider or panics choosing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
