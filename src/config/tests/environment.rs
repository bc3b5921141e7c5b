//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! Environment variables that look like configuration but set nothing: each is reported under
//! its own name, never blamed on the file.

use super::*;

#[test]
fn unknown_key_in_env_is_named_with_its_variable() {
    let problems = problems(load(MINIMAL, &[("PLEO_GATEWAY__SESSION__COOKIE_NME", "x")]));
    assert!(
        has_problem(
            &problems,
            "environment variable PLEO_GATEWAY__SESSION__COOKIE_NME",
            "did you mean `cookie_name`?"
        ),
        "{problems:?}"
    );
    let problems = self::problems(load(MINIMAL, &[("PLEO_GATEWAY__PLEO", "x")]));
    assert!(
        has_problem(
            &problems,
            "environment variable PLEO_GATEWAY__PLEO",
            "not a key"
        ),
        "{problems:?}"
    );
}

/// Problems that come from the environment name the variable and never blame the file.
#[test]
fn environment_problems_are_not_blamed_on_the_file() {
    let file = toml_file(MINIMAL);
    let path = file.path().display().to_string();
    let problems = problems(Config::load_with_env(
        Some(file.path()),
        &env(&[
            ("PLEO_GATEWAY__LOGGING__LEVEL", "debug"),
            ("PLEO_GATEWAY_SERVER__LISTEN", "0.0.0.0:1"),
            ("PLEO_GATEWAY_CONFIG", "/etc/pleo-gateway.toml"),
            ("PLEO_GATEWAY_LOG_FORMAT", "json"),
        ]),
    ));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        has_problem(
            &problems,
            "environment variable PLEO_GATEWAY__LOGGING__LEVEL",
            "unknown section `logging`"
        ),
        "{problems:?}"
    );
    assert!(
        has_problem(
            &problems,
            "environment variable PLEO_GATEWAY_SERVER__LISTEN",
            "did you mean PLEO_GATEWAY__SERVER__LISTEN?"
        ),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.message.contains(&path)),
        "{problems:?}"
    );
}
