//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! Scenario tests of loading: layering, unknown keys, secrets from files, validation.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

mod environment;
mod refused;

/// A valid key (32 bytes, standard base64).
const KEY_A: &str = "U8n15PH4llXBM6ntMMcNIRhPDClOr6y1B+xRRJdR0dM=";
/// Another valid key.
const KEY_B: &str = "Ppv1/m6knhZpP0NnviuzA0yzlY/c52bkyLlQADWIBuk=";

const MINIMAL: &str = r#"
[pleo]
client_id = "my-client"
scopes = ["users:read"]

[session]
encryption_keys = ["U8n15PH4llXBM6ntMMcNIRhPDClOr6y1B+xRRJdR0dM="]
"#;

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let file = toml_file(text);
    Config::load_with_env(Some(file.path()), &env(vars))
}

fn problems(result: Result<Config, ConfigError>) -> Vec<ConfigProblem> {
    match result {
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(config) => panic!("expected Invalid, got {config:?}"),
    }
}

fn has_problem(problems: &[ConfigProblem], key: &str, fragment: &str) -> bool {
    problems
        .iter()
        .any(|p| p.key == key && p.message.contains(fragment))
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn minimal_file_gets_every_default() {
    let config = load(MINIMAL, &[]).expect("minimal config loads");
    let server = &config.server;
    assert_eq!(server.listen, "0.0.0.0:8080".parse().expect("addr"));
    assert_eq!(server.public_url.as_str(), "http://127.0.0.1:8080/");
    assert!(server.trusted_proxies.is_empty());
    // Loopback: /metrics is never public unless an operator says so.
    assert_eq!(
        server.metrics_listen,
        Some("127.0.0.1:9100".parse().expect("addr"))
    );
    assert_eq!(server.shutdown_delay, Duration::from_secs(5));
    assert_eq!(server.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(server.max_header_bytes, 16 * 1024);
    assert_eq!(server.max_connections, 1024);
    assert_eq!(server.workers, 0, "auto");
    assert_eq!(
        server.auth_rate_per_client,
        crate::config::Rate::per(60, Duration::from_secs(60))
    );
    assert_eq!(
        server.auth_rate_global,
        crate::config::Rate::per(200, Duration::from_secs(1))
    );
    assert!(
        server.access_log,
        "one log line per request unless turned off"
    );

    let pleo = &config.pleo;
    assert_eq!(pleo.environment, PleoEnvironment::Staging);
    assert_eq!(pleo.auth_url.as_str(), "https://auth.staging.pleo.io/");
    assert_eq!(pleo.api_url.as_str(), "https://external.staging.pleo.io/");
    assert_eq!(pleo.client_id, "my-client");
    assert!(pleo.client_secret.is_none());
    assert_eq!(pleo.scopes, vec!["users:read"]);
    assert_eq!(pleo.refresh_before_expiry, Duration::from_secs(60));
    assert_eq!(pleo.request_timeout, Duration::from_secs(15));
    assert_eq!(pleo.connect_timeout, Duration::from_secs(5));
    assert_eq!(pleo.ca_file, None);
    assert_eq!(pleo.rate_limit_per_minute, 500);
    assert_eq!(pleo.max_connections, 128);
    assert_eq!(pleo.rate_limit_scope, RateLimitScope::Subject);
    assert!(!server.allow_insecure_public_url);

    let session = &config.session;
    assert_eq!(session.store, SessionStoreKind::Redis);
    assert_eq!(session.redis_url.expose_secret(), "redis://127.0.0.1:6379");
    assert_eq!(session.key_prefix, "pleo-gateway:");
    assert_eq!(session.cookie_name, "__Host-pleo-session");
    assert_eq!(session.idle_timeout, Duration::from_secs(8 * 3600));
    assert_eq!(session.absolute_timeout, Duration::from_secs(30 * 86_400));
    assert_eq!(session.encryption_keys.len(), 1);
    assert_eq!(session.login_state_ttl, Duration::from_secs(600));

    let proxy = &config.proxy;
    assert_eq!(proxy.pleo_prefix, "/pleo");
    assert!(proxy.upstream.is_none());
    assert!(proxy.public_paths.is_empty());
    assert_eq!(proxy.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(proxy.upstream_timeout, Duration::from_secs(60));
    assert_eq!(proxy.ca_file, None);

    assert_eq!(
        config.redirect_uri().as_str(),
        "http://127.0.0.1:8080/auth/callback"
    );
    assert!(config.is_plain_http());
    assert_eq!(
        config.pleo.auth_endpoint("/oauth/token").as_str(),
        "https://auth.staging.pleo.io/oauth/token"
    );
}

#[test]
fn env_alone_is_enough_without_a_file() {
    let vars = env(&[
        ("PLEO_GATEWAY__PLEO__CLIENT_ID", "12345"),
        ("PLEO_GATEWAY__PLEO__SCOPES", "users:read"),
        ("PLEO_GATEWAY__SESSION__STORE", "memory"),
    ]);
    let config = Config::load_with_env(None, &vars).expect("loads from env");
    // Numeric-looking text stays text.
    assert_eq!(config.pleo.client_id, "12345");
}

#[test]
fn env_overrides_file() {
    let config = load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__PLEO__CLIENT_ID", "from-env"),
            (
                "PLEO_GATEWAY__SERVER__PUBLIC_URL",
                "https://app.example.com",
            ),
            ("PLEO_GATEWAY__SESSION__IDLE_TIMEOUT", "2h"),
            ("PLEO_GATEWAY__PROXY__MAX_BODY_BYTES", "1048576"),
            ("PLEO_GATEWAY__PROXY__UPSTREAM", "http://127.0.0.1:3000/"),
            // Not configuration keys: ignored, not flagged.
            ("PLEO_GATEWAY_CONFIG", "/etc/pleo-gateway.toml"),
            ("PLEO_GATEWAYX", "1"),
            ("HOME", "/root"),
        ],
    )
    .expect("loads");
    assert_eq!(config.pleo.client_id, "from-env");
    assert_eq!(
        config.server.public_url.as_str(),
        "https://app.example.com/"
    );
    assert!(!config.is_plain_http());
    assert_eq!(
        config.redirect_uri().as_str(),
        "https://app.example.com/auth/callback"
    );
    assert_eq!(config.session.idle_timeout, Duration::from_secs(7200));
    assert_eq!(config.proxy.max_body_bytes, 1 << 20);
    assert_eq!(
        config.proxy.upstream.as_ref().map(Url::as_str),
        Some("http://127.0.0.1:3000/")
    );
}

#[test]
fn env_lists_split_at_commas_and_spaces() {
    let config = load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__PLEO__SCOPES", "users:read,export-jobs:read"),
            (
                "PLEO_GATEWAY__SERVER__TRUSTED_PROXIES",
                "10.0.0.0/8, 192.168.1.10 ::1",
            ),
            (
                "PLEO_GATEWAY__PROXY__PUBLIC_PATHS",
                "/favicon.ico,/static/*",
            ),
            (
                "PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS",
                &format!("{KEY_A},{KEY_B}"),
            ),
        ],
    )
    .expect("loads");
    assert_eq!(config.pleo.scopes, vec!["users:read", "export-jobs:read"]);
    let proxies: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(proxies, vec!["10.0.0.0/8", "192.168.1.10/32", "::1/128"]);
    assert_eq!(config.proxy.public_paths, vec!["/favicon.ico", "/static/*"]);
    assert_eq!(config.session.encryption_keys.len(), 2);

    let spaced = load(
        MINIMAL,
        &[("PLEO_GATEWAY__PLEO__SCOPES", "users:read export-jobs:read")],
    )
    .expect("loads");
    assert_eq!(spaced.pleo.scopes, vec!["users:read", "export-jobs:read"]);
}

#[test]
fn unknown_key_in_file_is_named() {
    let text = format!("{MINIMAL}cookie_nme = \"x\"\n");
    let problems = problems(load(&text, &[]));
    assert!(
        has_problem(&problems, "session.cookie_nme", "unknown key"),
        "{problems:?}"
    );
    assert!(has_problem(&problems, "session.cookie_nme", "cookie_name"));

    let problems = self::problems(load(
        &format!("{MINIMAL}[logging]\nlevel = \"debug\"\n"),
        &[],
    ));
    assert!(
        has_problem(&problems, "logging", "unknown key"),
        "{problems:?}"
    );
}

#[test]
fn bad_duration_names_the_key() {
    let problems = problems(load(
        MINIMAL,
        &[("PLEO_GATEWAY__SESSION__IDLE_TIMEOUT", "8 hours please")],
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].to_string(),
        r#"session.idle_timeout: not a duration ("8 hours please"); use e.g. "90s", "8h""#
    );
}

#[test]
fn workers_are_auto_or_a_positive_count() {
    let workers = |value: &str| load(MINIMAL, &[("PLEO_GATEWAY__SERVER__WORKERS", value)]);
    assert_eq!(workers("auto").unwrap().server.workers, 0);
    assert_eq!(workers("3").unwrap().server.workers, 3);
    let problems = problems(workers("0"));
    assert_eq!(
        problems[0].to_string(),
        r#"server.workers: must be greater than zero ("0"); or "auto" for one per core"#
    );
}

#[test]
fn the_access_log_is_turned_off_by_a_boolean() {
    let config = load(MINIMAL, &[("PLEO_GATEWAY__SERVER__ACCESS_LOG", "false")]).unwrap();
    assert!(!config.server.access_log);
    let problems = problems(load(
        MINIMAL,
        &[("PLEO_GATEWAY__SERVER__ACCESS_LOG", "sometimes")],
    ));
    assert_eq!(
        problems[0].to_string(),
        r#"server.access_log: must be true or false ("sometimes")"#
    );
}

#[test]
fn secrets_are_read_from_files() {
    let secret = toml_file("  s3cret\n");
    let redis = toml_file("redis://:hunter2@redis.internal:6379/0\n");
    let keys = toml_file(&format!("{KEY_A}\n\n  {KEY_B}  \n"));
    let text = format!(
        r#"
[pleo]
client_id = "my-client"
scopes = ["users:read"]
client_secret_file = "{}"

[session]
redis_url_file = "{}"
encryption_keys_file = "{}"
"#,
        secret.path().display(),
        redis.path().display(),
        keys.path().display()
    );
    let config = load(&text, &[]).expect("loads");
    assert_eq!(
        config
            .pleo
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret()),
        Some("s3cret")
    );
    assert_eq!(
        config.session.redis_url.expose_secret(),
        "redis://:hunter2@redis.internal:6379/0"
    );
    assert_eq!(config.session.encryption_keys.len(), 2);
}

#[test]
fn secret_and_secret_file_together_are_rejected() {
    let secret = toml_file("s3cret");
    let problems = problems(load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__PLEO__CLIENT_SECRET", "inline"),
            (
                "PLEO_GATEWAY__PLEO__CLIENT_SECRET_FILE",
                &secret.path().display().to_string(),
            ),
            (
                "PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS_FILE",
                &secret.path().display().to_string(),
            ),
        ],
    ));
    assert!(
        has_problem(&problems, "pleo.client_secret", "both"),
        "{problems:?}"
    );
    assert!(has_problem(&problems, "session.encryption_keys", "both"));
}

#[test]
fn unreadable_secret_file_names_key_and_path() {
    let problems = problems(load(
        MINIMAL,
        &[(
            "PLEO_GATEWAY__PLEO__CLIENT_SECRET_FILE",
            "/nonexistent/secret",
        )],
    ));
    assert!(
        has_problem(&problems, "pleo.client_secret_file", "/nonexistent/secret"),
        "{problems:?}"
    );
}

#[test]
fn production_preset_sets_both_urls() {
    let config = load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__PLEO__ENVIRONMENT", "production"),
            (
                "PLEO_GATEWAY__SERVER__PUBLIC_URL",
                "https://app.example.com",
            ),
        ],
    )
    .expect("loads");
    assert_eq!(config.pleo.environment, PleoEnvironment::Production);
    assert_eq!(config.pleo.auth_url.as_str(), "https://auth.pleo.io/");
    assert_eq!(config.pleo.api_url.as_str(), "https://external.pleo.io/");
}

#[test]
fn explicit_urls_override_the_preset() {
    let config = load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__PLEO__ENVIRONMENT", "production"),
            (
                "PLEO_GATEWAY__SERVER__PUBLIC_URL",
                "https://app.example.com",
            ),
            ("PLEO_GATEWAY__PLEO__AUTH_URL", "http://127.0.0.1:9090/"),
            ("PLEO_GATEWAY__PLEO__API_URL", "http://127.0.0.1:9090/api/"),
        ],
    )
    .expect("loads");
    assert_eq!(config.pleo.auth_url.as_str(), "http://127.0.0.1:9090/");
    assert_eq!(config.pleo.api_url.as_str(), "http://127.0.0.1:9090/api");
    assert_eq!(
        config.pleo.api_endpoint("/v2/employees").as_str(),
        "http://127.0.0.1:9090/api/v2/employees"
    );
}

#[test]
fn bad_encryption_key_is_rejected_without_echoing_it() {
    let problems = problems(load(
        MINIMAL,
        &[("PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS", "c2hvcnRrZXk=")],
    ));
    assert!(
        has_problem(
            &problems,
            "session.encryption_keys",
            "openssl rand -base64 32"
        ),
        "{problems:?}"
    );
    assert!(!problems.iter().any(|p| p.message.contains("c2hvcnRrZXk")));
}

#[test]
fn redis_store_without_keys_is_rejected() {
    let text = "[pleo]\nclient_id = \"c\"\nscopes = [\"users:read\"]\n";
    let problems = problems(load(text, &[]));
    assert!(
        has_problem(&problems, "session.encryption_keys", "required"),
        "{problems:?}"
    );
}

#[test]
fn memory_store_without_keys_is_accepted() {
    let text = "[pleo]\nclient_id = \"c\"\nscopes = [\"users:read\"]\n[session]\nstore = \"memory\"\nredis_url = \"not even a url\"\n";
    let config = load(text, &[]).expect("loads");
    assert_eq!(config.session.store, SessionStoreKind::Memory);
    assert!(config.session.encryption_keys.is_empty());
}

#[test]
fn redacted_output_and_debug_hold_no_secret() {
    let config = load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__PLEO__CLIENT_SECRET", "client-s3cret"),
            (
                "PLEO_GATEWAY__SESSION__REDIS_URL",
                "rediss://app:hunter2@redis:6380/0",
            ),
        ],
    )
    .expect("loads");
    let redacted = config.redacted_toml();
    let debug = format!("{config:?}");
    for text in [&redacted, &debug] {
        assert!(!text.contains("client-s3cret"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(KEY_A), "{text}");
        assert!(!text.contains(&format!("{:?}", config.session.encryption_keys[0].bytes())));
    }
    assert!(
        redacted.contains("client_secret = \"[redacted]\""),
        "{redacted}"
    );
    assert!(
        redacted.contains("rediss://app:[redacted]@redis:6380/0"),
        "{redacted}"
    );
    assert!(
        redacted.contains("encryption_keys = \"[redacted: 1 key]\""),
        "{redacted}"
    );
    assert!(redacted.contains("client_id = \"my-client\""), "{redacted}");
    assert!(redacted.contains("idle_timeout = \"8h\""), "{redacted}");
    assert!(
        redacted.contains("absolute_timeout = \"30d\""),
        "{redacted}"
    );
}

#[test]
fn redacted_output_reloads_apart_from_secrets() {
    let config = load(MINIMAL, &[]).expect("loads");
    let text = config.redacted_toml();
    // Put the key back; everything else must round-trip through the loader unchanged.
    let text = text.replace(
        "encryption_keys = \"[redacted: 1 key]\"",
        &format!("encryption_keys = [\"{KEY_A}\"]"),
    );
    let reloaded = load(&text, &[]).expect("redacted TOML reloads");
    assert_eq!(reloaded.redacted_toml(), config.redacted_toml());
}

/// `config/gateway.toml` is refused as it is, for exactly its two placeholders, and loads once
/// they are replaced; `config/dev.toml` (against a mock on loopback) loads as it is.
#[test]
fn reference_files_load() {
    let reference = repo_file("config/gateway.toml");
    let problems = problems(Config::load_with_env(Some(&reference), &HashMap::new()));
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["pleo.client_id", "session.encryption_keys"],
        "{problems:?}"
    );
    let replaced = env(&[
        (
            "PLEO_GATEWAY__PLEO__CLIENT_ID",
            "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        ),
        ("PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS", KEY_A),
    ]);
    let config = Config::load_with_env(Some(&reference), &replaced)
        .unwrap_or_else(|err| panic!("config/gateway.toml with its placeholders replaced: {err}"));
    assert_eq!(config.pleo.rate_limit_per_minute, 500);

    let dev = Config::load_with_env(Some(&repo_file("config/dev.toml")), &HashMap::new())
        .unwrap_or_else(|err| panic!("config/dev.toml: {err}"));
    assert_eq!(dev.pleo.auth_url.as_str(), "http://127.0.0.1:9090/");
    assert_eq!(dev.session.key_prefix, "pleo-gateway-dev:");
    assert_eq!(
        dev.redirect_uri().as_str(),
        "http://127.0.0.1:8080/auth/callback"
    );
}

#[test]
fn reference_file_lists_every_known_key() {
    let text = std::fs::read_to_string(repo_file("config/gateway.toml")).expect("read");
    for (section, keys) in keys::KNOWN_KEYS {
        assert!(text.contains(&format!("[{section}]")), "[{section}]");
        for key in *keys {
            assert!(
                text.contains(&format!("\n{key} = ")) || text.contains(&format!("# {key} = ")),
                "config/gateway.toml does not document {section}.{key}"
            );
        }
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[server]
listen = "localhost"
public_url = "https://app.example.com/app"
max_header_bytes = 10

[pleo]
environment = "prod"
scopes = []
refresh_before_expiry = "2h"

[session]
cookie_name = "bad name"
idle_timeout = "40d"
encryption_keys = ["nope"]

[proxy]
pleo_prefix = "/auth"
public_paths = ["static/*"]
"#;
    let err = load(text, &[]).expect_err("invalid");
    let display = err.to_string();
    let ConfigError::Invalid(problems) = err else {
        panic!("expected Invalid: {display}");
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "server.listen",
        "server.public_url",
        "server.max_header_bytes",
        "pleo.environment",
        "pleo.client_id",
        "pleo.scopes",
        "pleo.refresh_before_expiry",
        "session.cookie_name",
        "session.idle_timeout",
        "session.encryption_keys",
        "proxy.pleo_prefix",
        "proxy.public_paths",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    // One line per problem, after the header.
    assert_eq!(display.lines().count(), problems.len() + 1, "{display}");
}

#[test]
fn toml_syntax_error_names_the_file() {
    let file = toml_file("[pleo\nclient_id = 1");
    let err = Config::load_with_env(Some(file.path()), &HashMap::new()).expect_err("invalid");
    assert!(matches!(err, ConfigError::Parse(_)));
    assert!(err.to_string().contains(&file.path().display().to_string()));
}

#[test]
fn missing_file_is_an_io_error() {
    let err = Config::load_with_env(
        Some(Path::new("/nonexistent/gateway.toml")),
        &HashMap::new(),
    )
    .expect_err("missing");
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
}

#[test]
fn encryption_keys_print_redacted_and_clone() {
    let key = EncryptionKey::generate();
    assert_eq!(format!("{key:?}"), "EncryptionKey([redacted])");
    assert_eq!(key.clone().bytes(), key.bytes());
    assert_ne!(EncryptionKey::generate().bytes(), key.bytes());
}

#[test]
fn rates_parse() {
    assert_eq!(
        crate::config::Rate::parse("60/m").unwrap(),
        Some(crate::config::Rate {
            interval: Duration::from_secs(1),
            burst: 60
        })
    );
    assert_eq!(crate::config::Rate::parse("off").unwrap(), None);
    assert_eq!(crate::config::Rate::parse("0").unwrap(), None);
    assert!(crate::config::Rate::parse("0/s").is_err());
    assert!(crate::config::Rate::parse("ten/s").is_err());
    assert!(crate::config::Rate::parse("5/d").is_err());
}
