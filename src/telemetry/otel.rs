//! OpenTelemetry traces over OTLP (http/protobuf), configured only by the standard `OTEL_*`
//! environment variables and off unless an endpoint is set.
//!
//! - On when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (`/v1/traces` appended) is set, unless `OTEL_SDK_DISABLED=true` or
//!   `OTEL_TRACES_EXPORTER=none`. `OTEL_SERVICE_NAME` (default `pleo-gateway`),
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_EXPORTER_OTLP(_TRACES)_HEADERS`,
//!   `…_TIMEOUT` and `OTEL_BSP_*` work as the specification says. Only http/protobuf is spoken
//!   (a collector's port 4318); asking for `grpc` or `http/json` stops start-up with a message.
//! - Off, nothing of this runs: no layer is installed and [`enabled`] is false, so the request
//!   path skips every trace-context step after one relaxed atomic load.
//! - Export goes through a reqwest client on the gateway's own runtime: the SDK's batch
//!   processor runs on a thread of its own and hands each batch over (see [`OtlpHttp`]).
//!
//! Trace context: an inbound W3C `traceparent`/`tracestate` is continued only when it came from
//! one of `server.trusted_proxies`; anyone else's is dropped on arrival (as `X-Request-Id` is,
//! see `request_id::drop_untrusted_ids`) and the request starts a new trace. Calls to Pleo and to
//! the app carry the gateway's own `traceparent` (a child of the call's span).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use axum::http::HeaderMap;
use opentelemetry::{
    KeyValue,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_http::{Bytes, HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether traces are exported; set once at start-up.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Default of `OTEL_EXPORTER_OTLP_TIMEOUT` (the specification's 10 s).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether spans are being exported. False unless [`from_env`] found an endpoint.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporting pipeline: the provider to flush at shutdown, and the tracer for the layer.
pub(super) struct Pipeline {
    pub provider: SdkTracerProvider,
    pub tracer: SdkTracer,
}

/// Builds the pipeline the `OTEL_*` variables ask for; `None` when they ask for none.
pub(super) fn from_env() -> anyhow::Result<Option<Pipeline>> {
    from_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Pipeline>> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
        Some(exporter) if exporter == "none" => return Ok(None),
        Some(exporter) if exporter != "otlp" => anyhow::bail!(
            "OTEL_TRACES_EXPORTER={exporter:?} is not supported; the gateway exports traces over OTLP (\"otlp\") or not at all (\"none\")"
        ),
        _ => {}
    }
    if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_none()
    {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = var(name)
            && protocol.trim() != "http/protobuf"
        {
            anyhow::bail!(
                "{name}={protocol:?} is not supported; the gateway exports traces as OTLP http/protobuf (a collector's port 4318): unset it or set \"http/protobuf\""
            );
        }
    }
    let timeout = var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(DEFAULT_EXPORT_TIMEOUT, Duration::from_millis);
    let client = OtlpHttp {
        client: reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        runtime: tokio::runtime::Handle::try_current().map_err(|_| {
            anyhow::anyhow!("OpenTelemetry export needs the Tokio runtime to be running")
        })?,
    };
    // The endpoint, headers and timeout come from the same variables, read by the exporter.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(client)
        .build()
        .map_err(|e| anyhow::anyhow!("OpenTelemetry: {e}"))?;
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("pleo-gateway");
    }
    // The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("pleo-gateway");
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Pipeline { provider, tracer }))
}

/// Makes `span` (the inbound request's) a child of the `traceparent` the request carries. Only
/// trusted proxies' headers are still there by now (see the module docs).
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// Writes `span`'s trace context as `traceparent` (and `tracestate`) into outgoing `headers`,
/// replacing any that were there.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Renames `span` in the trace (once the route of a request is known, say). The span may have
/// started already (a child did), so the OpenTelemetry span is renamed directly.
pub fn rename(span: &tracing::Span, name: String) {
    if enabled() {
        span.context().span().update_name(name);
    }
}

/// Sets an OpenTelemetry attribute on `span` (nothing when traces are off).
pub fn attribute(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if enabled() {
        span.set_attribute(key, value);
    }
}

/// The OTLP exporter's HTTP client: the gateway's reqwest (rustls, ring), run on the gateway's
/// runtime. The SDK's batch processor calls it from its own thread, outside any runtime, so
/// each export is spawned onto the runtime and awaited from there.
#[derive(Debug)]
struct OtlpHttp {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        self.runtime
            .spawn(async move {
                let response = client.execute(request).await?;
                let mut builder = http::Response::builder().status(response.status());
                if let Some(headers) = builder.headers_mut() {
                    *headers = response.headers().clone();
                }
                let body = response.bytes().await?;
                Ok(builder.body(body)?)
            })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        assert!(
            from_vars(vars(&[("OTEL_SERVICE_NAME", "x")]))
                .unwrap()
                .is_none()
        );
        assert!(
            from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ]))
            .unwrap()
            .is_none()
        );
        assert!(
            from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ]))
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn protocols_other_than_http_protobuf_are_refused_by_name() {
        let error = from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{error}");
        assert!(error.contains("http/protobuf"), "{error}");
        let error = from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ]))
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("OTEL_TRACES_EXPORTER"), "{error}");
    }
}
