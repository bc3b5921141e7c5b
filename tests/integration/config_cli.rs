//! `pleo-gateway check-config`: the real binary, as an operator runs it.

use std::{io::Write, process::Command};

const SECRET: &str = "client-secret-that-must-never-be-printed";
/// A key of this test's own (the published example and development keys are refused).
const ENCRYPTION_KEY: &str = "Ppv1/m6knhZpP0NnviuzA0yzlY/c52bkyLlQADWIBuk=";

fn check_config(contents: &str) -> std::process::Output {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(contents.as_bytes()).expect("write config");
    check_config_file(file.path(), &[])
}

fn check_config_file(path: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    // A clean environment: no PLEO_GATEWAY__* of the machine may change the verdict.
    Command::new(env!("CARGO_BIN_EXE_pleo-gateway"))
        .env_clear()
        .envs(env.iter().copied())
        .arg("check-config")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run pleo-gateway")
}

fn valid_config() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:18080"
public_url = "https://gateway.example.com"

[pleo]
client_id = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
client_secret = "{SECRET}"
scopes = ["users:read", "export-jobs:read"]

[session]
store = "redis"
redis_url = "redis://:redis-password-123@127.0.0.1:6379"
encryption_keys = ["{ENCRYPTION_KEY}"]
idle_timeout = "8h"
"#
    )
}

/// A bad duration and an unknown key: non-zero exit, and stderr names both keys.
#[test]
fn config_errors_name_every_broken_key() {
    let broken = valid_config()
        .replace(r#"idle_timeout = "8h""#, r#"idle_timeout = "eight hours""#)
        .replace("[proxy]", "")
        + "\n[proxy]\npleo_prefix = \"/pleo\"\nupstream_timout = \"60s\"\n";
    let output = check_config(&broken);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must fail: {stderr}");
    assert!(stderr.contains("session.idle_timeout"), "{stderr}");
    assert!(
        stderr.contains("eight hours"),
        "the bad value is shown: {stderr}"
    );
    assert!(stderr.contains("proxy.upstream_timout"), "{stderr}");
    assert!(
        stderr.contains("upstream_timeout"),
        "the likely intended key is suggested: {stderr}"
    );
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "no configuration printed for an invalid file"
    );
}

/// A valid file: exit 0, the effective configuration printed, no secret in it.
#[test]
fn valid_config_is_printed_with_secrets_redacted() {
    let output = check_config(&valid_config());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "must pass: {stderr}");
    assert!(
        stdout.contains("3fa85f64-5717-4562-b3fc-2c963f66afa6"),
        "{stdout}"
    );
    assert!(stdout.contains("gateway.example.com"), "{stdout}");
    assert!(stdout.contains("redacted"), "{stdout}");
    for secret in [SECRET, ENCRYPTION_KEY, "redis-password-123"] {
        assert!(!stdout.contains(secret), "{secret} printed: {stdout}");
        assert!(!stderr.contains(secret), "{secret} printed: {stderr}");
    }
}

/// Without identity signing keys, check-config warns that several replicas need shared ones.
#[test]
fn check_config_warns_that_replicas_need_shared_signing_keys() {
    let output = check_config(&valid_config());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: identity.signing_keys is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("several"), "{stderr}");
    let with_key = valid_config()
        + "\n[identity]\nsigning_keys = [\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"]\n";
    let output = check_config(&with_key);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("AAECAwQF"));
}

/// The shipped reference file is refused until its placeholders are replaced, each by name;
/// an environment variable with one underscore too few is named as such.
#[test]
fn the_reference_file_and_environment_typos_are_refused_by_name() {
    let reference = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let output = check_config_file(&reference, &[("PLEO_GATEWAY_SESSION__STORE", "memory")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must fail: {stderr}");
    assert!(
        stderr.contains("pleo.client_id: is the all-zero placeholder"),
        "{stderr}"
    );
    assert!(
        stderr.contains("session.encryption_keys: key 1 is the example key"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "environment variable PLEO_GATEWAY_SESSION__STORE: not read: configuration \
             variables start with `PLEO_GATEWAY__`"
        ),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    let output = check_config_file(
        &reference,
        &[
            (
                "PLEO_GATEWAY__PLEO__CLIENT_ID",
                "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            ),
            ("PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS", ENCRYPTION_KEY),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "must pass: {stderr}");
}
