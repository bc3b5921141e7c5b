//! Every Prometheus metric the gateway exports: names, help texts and the functions that record
//! them. The README's Operations section lists the same families for operators.
//!
//! Labels are `&'static str` from fixed sets (never a raw path, a client-chosen method or an
//! error text): every distinct label value is a series the exporter keeps for ever, so a label
//! a client can vary would grow memory without bound. Recording is a few atomic operations and
//! one lookup per family; nothing here allocates on a request unless a status code is unusual.

use std::{sync::OnceLock, time::Duration};

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::{process, series::SeriesKey};

/// The installed recorder's handle ([`metrics_handle`]).
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Records into a per-request series through the thread's cached handles
/// ([`super::series`]); before a recorder is installed, through fresh handles (a cached no-op
/// handle would stay one).
fn with_series(
    key: SeriesKey,
    make: impl FnOnce() -> (Counter, Histogram),
    record: impl FnOnce(&Counter, &Histogram),
) {
    super::series::record(HANDLE.get().is_some(), key, make, record);
}

pub(super) const HTTP_REQUESTS: &str = "pleo_gateway_http_requests_total";
pub(super) const HTTP_DURATION: &str = "pleo_gateway_http_request_duration_seconds";
const REFRESHES: &str = "pleo_gateway_token_refreshes_total";
const REFRESH_DURATION: &str = "pleo_gateway_token_refresh_duration_seconds";
const STORE_OPERATIONS: &str = "pleo_gateway_store_operations_total";
const STORE_DURATION: &str = "pleo_gateway_store_operation_duration_seconds";
const PLEO_REQUESTS: &str = "pleo_gateway_pleo_requests_total";
const PLEO_DURATION: &str = "pleo_gateway_pleo_request_duration_seconds";
const APP_REQUESTS: &str = "pleo_gateway_app_requests_total";
const APP_DURATION: &str = "pleo_gateway_app_request_duration_seconds";
const LOGINS_STARTED: &str = "pleo_gateway_logins_started_total";
const LOGINS_COMPLETED: &str = "pleo_gateway_logins_completed_total";
const LOGINS_FAILED: &str = "pleo_gateway_logins_failed_total";
const CSRF_REJECTIONS: &str = "pleo_gateway_csrf_rejections_total";
const WEBSOCKETS_OPEN: &str = "pleo_gateway_websockets_open";
const BUILD_INFO: &str = "pleo_gateway_build_info";

/// How a token refresh ended: the `outcome` label of the refresh metrics and log line. The
/// README's "Tokens and refresh" section explains each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// This replica spent the refresh token and stored the new pair.
    Success,
    /// Pleo rejected the refresh token: the session ended.
    Rejected,
    /// The session had no refresh token to spend: it ended.
    NoRefreshToken,
    /// Pleo could not be asked (timeout, 5xx, 429, network): the session is kept, and a
    /// back-off every replica honours starts.
    Transient,
    /// Not tried: the back-off of an earlier transient failure is running.
    Backoff,
    /// Another replica held the lock; the pair it stored was used.
    Waited,
    /// Another replica held the lock and no new pair appeared in time (503).
    LockTimeout,
    /// Under the lock, or after a rejection, the stored pair turned out to be rotated already:
    /// it was used, and the spent refresh token was not sent (again).
    ReuseAvoided,
    /// A refresh on this replica had just done it (requests queued behind it).
    NotNeeded,
    /// The session was deleted meanwhile (logged out elsewhere).
    Gone,
    /// The session store failed.
    StoreError,
}

impl RefreshOutcome {
    /// Every outcome; each is exported from start-up (at 0), so rates and alerts work before
    /// the first refresh.
    pub const ALL: [Self; 11] = [
        Self::Success,
        Self::Rejected,
        Self::NoRefreshToken,
        Self::Transient,
        Self::Backoff,
        Self::Waited,
        Self::LockTimeout,
        Self::ReuseAvoided,
        Self::NotNeeded,
        Self::Gone,
        Self::StoreError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Rejected => "rejected",
            Self::NoRefreshToken => "no_refresh_token",
            Self::Transient => "transient",
            Self::Backoff => "backoff",
            Self::Waited => "waited",
            Self::LockTimeout => "lock_timeout",
            Self::ReuseAvoided => "reuse_avoided",
            Self::NotNeeded => "not_needed",
            Self::Gone => "gone",
            Self::StoreError => "store_error",
        }
    }

    /// Whether the caller got no fresh token (the operator's concern).
    pub fn failed(self) -> bool {
        matches!(
            self,
            Self::Transient | Self::Backoff | Self::LockTimeout | Self::StoreError
        )
    }
}

/// Latency buckets (seconds) of every histogram: 1 ms to 10 s.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use with every family described.
/// One per process, so several gateways in one test process share it.
pub fn metrics_handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        handle
    })
}

/// `GET /metrics`: Prometheus text format — the recorded families, then the process's own.
pub async fn render_metrics() -> impl axum::response::IntoResponse {
    let mut text = metrics_handle().render();
    process::render(&mut text);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// How often `main` runs [`upkeep`] while metrics are served.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Folds the histogram samples recorded since the last scrape into their buckets. Without a
/// scrape they would pile up, so `main` runs this every [`UPKEEP_EVERY`] while metrics are
/// served.
pub fn upkeep() {
    metrics_handle().run_upkeep();
}

fn describe() {
    describe_counter!(
        "pleo_gateway_pleo_budget_calls_total",
        Unit::Count,
        "Proxied calls to Pleo by what the shared rate budget did: sent (at once), waited \
         (for a slot, up to 1 s), refused (429 from the gateway), unchecked (store error)."
    );
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "Requests answered, by route (a fixed label, never the raw path), method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from receiving a request to sending its response head, by route."
    );
    describe_counter!(
        REFRESHES,
        Unit::Count,
        "Token refreshes by outcome: success; rejected (the session ended); no_refresh_token; transient (Pleo failed, session kept); backoff (not tried: an earlier failure's back-off runs); waited (another replica refreshed, its pair was used); lock_timeout (another replica held the lock too long); reuse_avoided (already rotated, the spent refresh token was not sent); not_needed (a refresh on this replica had just done it); gone; store_error."
    );
    describe_histogram!(
        REFRESH_DURATION,
        Unit::Seconds,
        "Time a refresh took, lock wait and store write included, by outcome."
    );
    describe_counter!(
        STORE_OPERATIONS,
        Unit::Count,
        "Session store operations by operation and outcome (ok or error)."
    );
    describe_histogram!(
        STORE_DURATION,
        Unit::Seconds,
        "Session store operation latency, by operation."
    );
    describe_counter!(
        PLEO_REQUESTS,
        Unit::Count,
        "Calls to Pleo by endpoint (api: proxied calls, token, introspect, installation) and status class (2xx, 3xx, 4xx, 5xx, timeout, error)."
    );
    describe_histogram!(
        PLEO_DURATION,
        Unit::Seconds,
        "Time until Pleo's response head, by endpoint."
    );
    describe_counter!(
        APP_REQUESTS,
        Unit::Count,
        "Requests forwarded to the app behind the gateway, by status class (2xx, 3xx, 4xx, 5xx, timeout, error)."
    );
    describe_histogram!(
        APP_DURATION,
        Unit::Seconds,
        "Time until the app's response head."
    );
    describe_counter!(
        LOGINS_STARTED,
        Unit::Count,
        "Logins started: browsers sent to Pleo's authorize page."
    );
    describe_counter!(
        LOGINS_COMPLETED,
        Unit::Count,
        "Logins completed: a callback that created a session."
    );
    describe_counter!(
        LOGINS_FAILED,
        Unit::Count,
        "Callbacks that created no session, by reason (the error code the browser was shown)."
    );
    describe_counter!(
        CSRF_REJECTIONS,
        Unit::Count,
        "Requests refused by the cross-site rules, by route and reason (csrf_header_missing, origin_not_allowed)."
    );
    describe_gauge!(
        WEBSOCKETS_OPEN,
        Unit::Count,
        "WebSocket connections to the app open right now."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the running build (version, git_sha)."
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_sha" => git_sha()).set(1.0);
    gauge!(WEBSOCKETS_OPEN).set(0.0);
    counter!(LOGINS_STARTED).absolute(0);
    counter!(LOGINS_COMPLETED).absolute(0);
    for outcome in RefreshOutcome::ALL {
        counter!(REFRESHES, "outcome" => outcome.as_str()).absolute(0);
    }
}

/// The commit the binary was built from: `PLEO_GATEWAY_GIT_SHA` at build time (the Dockerfile
/// passes it as a build argument), else "unknown". No build script: reading git on every build
/// would rebuild the crate on every commit.
fn git_sha() -> &'static str {
    match option_env!("PLEO_GATEWAY_GIT_SHA") {
        Some(sha) if !sha.is_empty() => sha,
        _ => "unknown",
    }
}

/// One answered request. `route` and `method` come from fixed sets (see `access_log`).
pub fn http_request(route: &'static str, method: &'static str, status: u16, took: Duration) {
    with_series(
        (HTTP_REQUESTS, route, method, status),
        || {
            (
                counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status_label(status)),
                histogram!(HTTP_DURATION, "route" => route),
            )
        },
        |requests, duration| {
            requests.increment(1);
            duration.record(took.as_secs_f64());
        },
    );
}

/// The status as a label: a static string for the codes the gateway and ordinary apps answer
/// with, so the common case allocates nothing.
fn status_label(code: u16) -> metrics::SharedString {
    macro_rules! known {
        ($($code:literal),*) => {
            match code {
                $($code => metrics::SharedString::const_str(stringify!($code)),)*
                other => metrics::SharedString::from(other.to_string()),
            }
        };
    }
    known!(
        101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408,
        409, 410, 412, 413, 415, 422, 429, 431, 500, 501, 502, 503, 504
    )
}

/// One finished token refresh.
pub fn refresh(outcome: RefreshOutcome, took: Duration) {
    counter!(REFRESHES, "outcome" => outcome.as_str()).increment(1);
    histogram!(REFRESH_DURATION, "outcome" => outcome.as_str()).record(took.as_secs_f64());
}

/// One session store operation.
pub fn store_operation(operation: &'static str, ok: bool, took: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    counter!(STORE_OPERATIONS, "operation" => operation, "outcome" => outcome).increment(1);
    histogram!(STORE_DURATION, "operation" => operation).record(took.as_secs_f64());
}

/// What an outbound call came to, for its `status_class` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// A response head with this status arrived.
    Status(u16),
    /// No response head within the deadline.
    Timeout,
    /// No response: refused, reset, TLS, a body the client could not send.
    Error,
}

impl CallResult {
    /// What a reqwest call came to: its status, a timeout, or no answer.
    pub fn of(result: &Result<reqwest::Response, reqwest::Error>) -> Self {
        match result {
            Ok(response) => Self::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => Self::Timeout,
            Err(_) => Self::Error,
        }
    }

    /// `2xx` … `5xx`, `timeout` or `error`.
    pub fn class(self) -> &'static str {
        match self {
            Self::Status(code) => match code / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                5 => "5xx",
                _ => "error",
            },
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// One call to Pleo (`endpoint`: api, token, introspect, installation).
pub fn pleo_call(endpoint: &'static str, result: CallResult, took: Duration) {
    let class = result.class();
    with_series(
        (PLEO_REQUESTS, endpoint, class, 0),
        || {
            (
                counter!(PLEO_REQUESTS, "endpoint" => endpoint, "status_class" => class),
                histogram!(PLEO_DURATION, "endpoint" => endpoint),
            )
        },
        |requests, duration| {
            requests.increment(1);
            duration.record(took.as_secs_f64());
        },
    );
}

/// One request forwarded to the app.
pub fn app_call(result: CallResult, took: Duration) {
    let class = result.class();
    with_series(
        (APP_REQUESTS, class, "", 0),
        || {
            (
                counter!(APP_REQUESTS, "status_class" => class),
                histogram!(APP_DURATION),
            )
        },
        |requests, duration| {
            requests.increment(1);
            duration.record(took.as_secs_f64());
        },
    );
}

/// A browser was sent to Pleo to log in.
pub fn login_started() {
    counter!(LOGINS_STARTED).increment(1);
}

/// A callback created a session.
pub fn login_completed() {
    counter!(LOGINS_COMPLETED).increment(1);
}

/// A callback ended without a session; `reason` is the error code the browser was shown.
pub fn login_failed(reason: &'static str) {
    counter!(LOGINS_FAILED, "reason" => reason).increment(1);
}

/// A request refused by the cross-site rules.
pub fn csrf_rejection(route: &'static str, reason: &'static str) {
    counter!(CSRF_REJECTIONS, "route" => route, "reason" => reason).increment(1);
}

/// Counts one open WebSocket for as long as it is held.
#[derive(Debug)]
pub struct OpenWebSocket(());

impl OpenWebSocket {
    /// A socket was spliced to the app.
    pub fn opened() -> Self {
        gauge!(WEBSOCKETS_OPEN).increment(1.0);
        Self(())
    }
}

impl Drop for OpenWebSocket {
    fn drop(&mut self) {
        gauge!(WEBSOCKETS_OPEN).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_are_a_fixed_set() {
        assert_eq!(CallResult::Status(204).class(), "2xx");
        assert_eq!(CallResult::Status(401).class(), "4xx");
        assert_eq!(CallResult::Status(503).class(), "5xx");
        assert_eq!(CallResult::Status(999).class(), "error");
        assert_eq!(CallResult::Timeout.class(), "timeout");
    }

    #[test]
    fn status_labels_are_the_code() {
        assert_eq!(&*status_label(200), "200");
        assert_eq!(&*status_label(418), "418");
    }
}
