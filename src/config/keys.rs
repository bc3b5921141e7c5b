//! The keys the configuration accepts, and the near miss of a misspelt one: shared by the
//! file's reader (`raw.rs`) and the environment's screen (`env.rs`), so both name the same
//! sections and suggest the same fixes.

/// Every section and the keys it accepts; anything else is an "unknown key" problem.
pub(super) const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "public_url",
            "allow_insecure_public_url",
            "trusted_proxies",
            "metrics_listen",
            "internal_listen",
            "shutdown_delay",
            "shutdown_timeout",
            "max_header_bytes",
            "max_connections",
            "workers",
            "auth_rate_per_client",
            "auth_rate_global",
            "access_log",
        ],
    ),
    (
        "pleo",
        &[
            "environment",
            "auth_url",
            "api_url",
            "client_id",
            "client_secret",
            "client_secret_file",
            "scopes",
            "refresh_before_expiry",
            "proactive_refresh",
            "request_timeout",
            "connect_timeout",
            "ca_file",
            "max_connections",
            "rate_limit_per_minute",
            "rate_limit_scope",
        ],
    ),
    (
        "session",
        &[
            "store",
            "redis_url",
            "redis_url_file",
            "key_prefix",
            "cookie_name",
            "idle_timeout",
            "absolute_timeout",
            "encryption_keys",
            "encryption_keys_file",
            "login_state_ttl",
        ],
    ),
    (
        "proxy",
        &[
            "pleo_prefix",
            "upstream",
            "public_paths",
            "max_body_bytes",
            "upstream_timeout",
            "body_timeout",
            "body_buffer_bytes",
            "upstream_max_connections",
            "ca_file",
        ],
    ),
    (
        "identity",
        &[
            "signing_keys",
            "signing_keys_file",
            "audience",
            "assertion_ttl",
        ],
    ),
    (
        "background",
        &[
            "enabled",
            "service_tokens",
            "service_tokens_file",
            "grant_idle_timeout",
        ],
    ),
];

/// The candidate within edit distance 2 of `key` (a likely typo), if any.
pub(super) fn closest<'c>(key: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}
