//! Configuration loading: `config::Config::load_with_env` on arbitrary TOML text.
//!
//! The input is written to a temporary file (the loader's only file entry point takes a path;
//! its pure TOML layer is private), then loaded twice:
//! 1. with an empty environment: the file alone;
//! 2. with the three secrets overridden from the environment by canary values (a valid or an
//!    invalid spelling, picked by the input's length): `PLEO_GATEWAY__PLEO__CLIENT_SECRET`,
//!    `PLEO_GATEWAY__SESSION__REDIS_URL`, `PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS`.
//!
//! Invariants:
//! - Loading returns `Ok` or `Err`, never panics; it never fails with `Io` (the file exists).
//! - `Err(Parse)` has a non-empty message; `Err(Invalid)` lists at least one problem (a `None`
//!   field always comes with a recorded problem), each with a non-empty key and message.
//! - No problem message, error text, `Debug` output or `redacted_toml()` ever contains a
//!   secret: with the canaries in place, the canary marker never appears in any of them
//!   (skipped for the rare input that itself contains the marker).
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pleo_gateway::config::{Config, ConfigError};

/// Marker in every canary secret; the three canaries differ so a leak names its source.
const MARKER: &str = "Kanary";

/// `(client_secret, redis_url, encryption_keys)` spellings: valid ones (so a valid file gives
/// an `Ok` config whose `Debug`/`redacted_toml` are checked) and invalid ones (so the error
/// paths for each secret are checked). The marker sits only where the secret part is: a Redis
/// URL's host and path are shown by design, its password never.
const CANARIES: &[(&str, &str, &str)] = &[
    (
        "Kanary0client0secret",
        "redis://:Kanary0redis@redis.example:6379/0",
        // 32 bytes in standard base64; the text starts with the marker.
        "KanaryKanaryKanaryKanaryKanaryKanaryKanaryA=",
    ),
    // A bare password where a URL belongs; two keys that are no base64 of 32 bytes.
    ("Kanary1client", "Kanary1redis", "Kanary1key, KanaryKey2"),
    // An unsupported scheme with a password; a key of the wrong length.
    (
        "Kanary2client",
        "http://user:Kanary2redis@h",
        "Kanary2keyKanary2keyKanary2keyKanary2keyKanary2keyKa",
    ),
    // The password in the query; valid base64 of the wrong length (no marker in the text,
    // but "Kanary" would be its decoding).
    (
        "Kanary3client",
        "unix:///run/redis.sock?password=Kanary3redis",
        "S2FuYXJ5M2tleQ==",
    ),
    // Sentinel with user and password; `@` inside the password.
    (
        "Kanary4client",
        "redis+sentinel://u:Kanary4@redis@h1:26379,h2:26379/mymaster",
        "Kanary4key",
    ),
];

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("pleo-gateway-fuzz-{}.toml", std::process::id()))
    })
}

fn check(result: &Result<Config, ConfigError>, canary: bool, input: &str) {
    let mut texts: Vec<String> = Vec::new();
    match result {
        Ok(config) => {
            texts.push(format!("{config:?}"));
            texts.push(config.redacted_toml());
        }
        Err(ConfigError::Io { path, source }) => {
            panic!("reading the file failed: {}: {source}", path.display())
        }
        Err(ConfigError::Parse(message)) => {
            assert!(
                !message.trim().is_empty(),
                "empty parse error for {input:?}"
            );
            texts.push(message.clone());
        }
        Err(ConfigError::Invalid(problems)) => {
            assert!(
                !problems.is_empty(),
                "Invalid with no problem for {input:?}"
            );
            for problem in problems {
                assert!(!problem.key.trim().is_empty(), "{problem:?} has no key");
                assert!(
                    !problem.message.trim().is_empty(),
                    "{problem:?} has no message"
                );
                texts.push(problem.to_string());
            }
        }
    }
    if let Err(err) = result {
        texts.push(err.to_string());
        texts.push(format!("{err:?}"));
    }
    if canary {
        for text in &texts {
            assert!(!text.contains(MARKER), "a secret leaks into {text:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // `*_file` keys read the named file: keep the fuzzer off endless or blocking ones
    // (`/dev/zero`, `/dev/stdin`, `/proc/kmsg`), which only an operator could name anyway.
    if ["/dev", "/proc", "/sys"]
        .iter()
        .any(|dir| input.contains(dir))
    {
        return;
    }
    if std::fs::write(path(), input).is_err() {
        return;
    }
    let plain = Config::load_with_env(Some(path()), &HashMap::new());
    check(&plain, false, input);

    if input.contains(MARKER) {
        return;
    }
    let (secret, redis, keys) = CANARIES[input.len() % CANARIES.len()];
    let env: HashMap<String, String> = [
        ("PLEO_GATEWAY__PLEO__CLIENT_SECRET", secret),
        ("PLEO_GATEWAY__SESSION__REDIS_URL", redis),
        ("PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS", keys),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let with_canaries = Config::load_with_env(Some(path()), &env);
    check(&with_canaries, true, input);
});
