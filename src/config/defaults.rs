//! Every key's default (and the bounds some keys have), as text: defaults are parsed by the
//! same functions as user input, so a default can never be a value the validator would refuse.
//! `config/gateway.toml` documents the same values for operators.

use std::time::Duration;

/// Default `server.listen`.
pub(super) const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default `server.public_url`.
pub(super) const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";
/// Default `server.metrics_listen`: loopback, so `/metrics` is never public by accident; a
/// scraper outside the pod needs it set to a reachable address on purpose.
pub(super) const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9100";
/// Default `server.shutdown_delay`: a few probe periods of the shipped readiness probe (5 s)
/// and about what load balancers and kube-proxy take to drop an endpoint.
pub(super) const DEFAULT_SHUTDOWN_DELAY: &str = "5s";
/// Longest `server.shutdown_delay`: beyond it the gateway would sit out most of a typical
/// grace period doing nothing.
pub(super) const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);
/// Default `server.shutdown_timeout`.
pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";
/// Default `server.max_header_bytes`.
pub(super) const DEFAULT_MAX_HEADER_BYTES: &str = "16KiB";
/// Bounds of `server.max_header_bytes`: below 1 KiB real browsers' cookies do not fit; above
/// 1 MiB a header limit no longer protects memory.
pub(super) const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<u64> = (1 << 10)..=(1 << 20);
/// Default `server.max_connections`: at the measured cost per connection (about 28 KiB with a
/// 15 KB request head held open, see the README's security model) this stays inside the
/// shipped 64 MiB memory limit.
pub(super) const DEFAULT_MAX_CONNECTIONS: &str = "1024";
/// Default `server.workers`: one per core the process may use (CPU affinity and cgroup quota).
pub(super) const DEFAULT_WORKERS: &str = "auto";
/// Default `server.auth_rate_per_client`: a person with several tabs and retries never gets
/// near it; a script hammering `/auth/login` does at once.
pub(super) const DEFAULT_AUTH_RATE_PER_CLIENT: &str = "60/m";
/// Default `server.auth_rate_global`.
pub(super) const DEFAULT_AUTH_RATE_GLOBAL: &str = "200/s";
/// Default `pleo.refresh_before_expiry`.
pub(super) const DEFAULT_REFRESH_BEFORE_EXPIRY: &str = "60s";
/// Upper bound (exclusive) of `pleo.refresh_before_expiry`: Pleo's access tokens live 15 min.
pub(super) const MAX_REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(3600);
/// Default `pleo.request_timeout`.
pub(super) const DEFAULT_REQUEST_TIMEOUT: &str = "15s";
/// Default `pleo.connect_timeout`.
pub(super) const DEFAULT_CONNECT_TIMEOUT: &str = "5s";
/// Default `pleo.max_connections`: at about 57 KiB per connection (measured with
/// `benches/memory.sh`), 7 MiB; enough for 1,000 calls a second at 128 ms each.
pub(super) const DEFAULT_PLEO_MAX_CONNECTIONS: &str = "128";
/// Default `pleo.rate_limit_per_minute`: the most Pleo asks integrations to target (it
/// allows 600).
pub(super) const DEFAULT_RATE_LIMIT_PER_MINUTE: &str = "500";
/// Largest `pleo.rate_limit_per_minute`: the budget counts whole milliseconds between calls.
pub(super) const MAX_RATE_LIMIT_PER_MINUTE: u32 = 60_000;
/// Default `pleo.rate_limit_scope`.
pub(super) const DEFAULT_RATE_LIMIT_SCOPE: &str = "subject";
/// Default `session.redis_url`.
pub(super) const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default `session.key_prefix`.
pub(super) const DEFAULT_KEY_PREFIX: &str = "pleo-gateway:";
/// Default `session.cookie_name`.
pub(super) const DEFAULT_COOKIE_NAME: &str = "__Host-pleo-session";
/// Default `session.idle_timeout`.
pub(super) const DEFAULT_IDLE_TIMEOUT: &str = "8h";
/// Default `session.absolute_timeout`.
pub(super) const DEFAULT_ABSOLUTE_TIMEOUT: &str = "30d";
/// Default `session.login_state_ttl`.
pub(super) const DEFAULT_LOGIN_STATE_TTL: &str = "10m";
/// Default `proxy.pleo_prefix`.
pub(super) const DEFAULT_PLEO_PREFIX: &str = "/pleo";
/// Default `proxy.max_body_bytes`.
pub(super) const DEFAULT_MAX_BODY_BYTES: &str = "10MiB";
/// Default `proxy.upstream_timeout`.
pub(super) const DEFAULT_UPSTREAM_TIMEOUT: &str = "60s";
/// Default `proxy.body_timeout`: 10 MiB at about 175 KB/s.
pub(super) const DEFAULT_BODY_TIMEOUT: &str = "60s";
/// Default `proxy.body_buffer_bytes`, as nginx's `client_body_buffer_size` on 64-bit hosts
/// (16k) times four: form posts and JSON calls are read whole before the app is contacted.
pub(super) const DEFAULT_BODY_BUFFER_BYTES: &str = "64KiB";
/// Default `proxy.upstream_max_connections`.
pub(super) const DEFAULT_UPSTREAM_MAX_CONNECTIONS: &str = "256";
/// Default `identity.assertion_ttl`: long enough for the app to finish the request it came with.
pub(super) const DEFAULT_ASSERTION_TTL: &str = "60s";
/// Upper bound of `identity.assertion_ttl`: an assertion is a per-request credential.
pub(super) const MAX_ASSERTION_TTL: Duration = Duration::from_secs(600);
/// Default `background.grant_idle_timeout`: Pleo's refresh tokens are valid for at least 60 days.
pub(super) const DEFAULT_GRANT_IDLE_TIMEOUT: &str = "60d";
/// Shortest `background.service_tokens` entry: 32 characters of `openssl rand -base64 32` or so.
pub(super) const MIN_SERVICE_TOKEN_CHARS: usize = 32;
