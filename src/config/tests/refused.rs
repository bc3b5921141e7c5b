//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! Values that parse but are refused (published keys, placeholders, plain http in production),
//! empty files, and the keys added for TLS and the Pleo rate budget.

use super::*;

/// The example key of `config/gateway.toml`.
const EXAMPLE_KEY: &str = "RVhBTVBMRS1LRVktUkVQTEFDRS1NRS0zMi1CWVRFUyE=";
/// The development key of `config/dev.toml`.
const DEV_KEY: &str = "REVWLU9OTFktS0VZLU5FVkVSLVVTRS1JTi1QUk9EISE=";

#[test]
fn published_keys_are_refused_against_a_real_pleo() {
    for key in [EXAMPLE_KEY, DEV_KEY] {
        let problems = problems(load(
            MINIMAL,
            &[(
                "PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS",
                &format!("{KEY_A},{key}"),
            )],
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            has_problem(&problems, "session.encryption_keys", "key 2 is the"),
            "{problems:?}"
        );
        assert!(problems[0].message.contains("openssl rand -base64 32"));
        assert!(!problems[0].message.contains(key), "never echoed");
    }
}

#[test]
fn published_keys_are_accepted_against_a_mock_on_loopback() {
    let config = load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS", DEV_KEY),
            ("PLEO_GATEWAY__PLEO__AUTH_URL", "http://127.0.0.1:9090"),
            ("PLEO_GATEWAY__PLEO__API_URL", "http://localhost:9090"),
        ],
    );
    assert!(config.is_ok(), "{:?}", config.err());
}

#[test]
fn the_zero_client_id_is_refused() {
    let problems = problems(load(
        MINIMAL,
        &[(
            "PLEO_GATEWAY__PLEO__CLIENT_ID",
            "00000000-0000-0000-0000-000000000000",
        )],
    ));
    assert!(
        has_problem(&problems, "pleo.client_id", "placeholder"),
        "{problems:?}"
    );
}

#[test]
fn plain_http_in_production_needs_the_override() {
    let production = [("PLEO_GATEWAY__PLEO__ENVIRONMENT", "production")];
    let problems = problems(load(MINIMAL, &production));
    assert_eq!(problems.len(), 1, "{problems:?}");
    let message = &problems[0].message;
    assert_eq!(problems[0].key, "server.public_url");
    assert!(message.contains("TLS-terminating proxy"), "{message}");
    assert!(
        message.contains("server.allow_insecure_public_url = true"),
        "{message}"
    );

    let overridden = load(
        MINIMAL,
        &[
            production[0],
            ("PLEO_GATEWAY__SERVER__ALLOW_INSECURE_PUBLIC_URL", "true"),
        ],
    )
    .expect("the override accepts http://");
    assert!(overridden.server.allow_insecure_public_url);
    assert!(overridden.is_plain_http());
    // Staging keeps accepting http:// for local development.
    assert!(load(MINIMAL, &[]).is_ok());
}

/// A `*_file` that exists but is empty (a secret mount that came up blank) is an error naming
/// the key and the file, never "no secret".
#[test]
fn empty_files_are_refused() {
    let empty = toml_file("\n  \n");
    let path = empty.path().display().to_string();
    for (variable, key) in [
        (
            "PLEO_GATEWAY__PLEO__CLIENT_SECRET_FILE",
            "pleo.client_secret_file",
        ),
        (
            "PLEO_GATEWAY__SESSION__REDIS_URL_FILE",
            "session.redis_url_file",
        ),
        (
            "PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS_FILE",
            "session.encryption_keys_file",
        ),
        ("PLEO_GATEWAY__PLEO__CA_FILE", "pleo.ca_file"),
        ("PLEO_GATEWAY__PROXY__CA_FILE", "proxy.ca_file"),
    ] {
        let mut vars = vec![(variable, path.as_str())];
        if variable.contains("ENCRYPTION_KEYS") {
            // The inline key of MINIMAL would clash with the file.
            vars.push(("PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS", ""));
        }
        let problems = problems(load(MINIMAL, &vars));
        assert!(
            has_problem(&problems, key, &format!("{path:?} is empty")),
            "{key}: {problems:?}"
        );
    }
}

#[test]
fn ca_files_are_read_and_checked() {
    let pem = crate::test_support::private_ca_pem();
    let bundle = toml_file(&format!("{pem}{}", crate::test_support::private_ca_pem()));
    let config = load(
        MINIMAL,
        &[
            (
                "PLEO_GATEWAY__PLEO__CA_FILE",
                &bundle.path().display().to_string(),
            ),
            (
                "PLEO_GATEWAY__PROXY__CA_FILE",
                &bundle.path().display().to_string(),
            ),
        ],
    )
    .expect("loads");
    let pleo = config.pleo.ca_file.as_ref().expect("pleo.ca_file");
    assert_eq!(pleo.certificates.len(), 2);
    assert_eq!(pleo.path, bundle.path());
    assert_eq!(config.proxy.ca_file.as_ref(), Some(pleo));
    assert!(
        config
            .redacted_toml()
            .contains(&format!("ca_file = \"{}\"", bundle.path().display())),
        "{}",
        config.redacted_toml()
    );

    let not_pem = toml_file("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let problems = problems(load(
        MINIMAL,
        &[
            (
                "PLEO_GATEWAY__PLEO__CA_FILE",
                &not_pem.path().display().to_string(),
            ),
            ("PLEO_GATEWAY__PROXY__CA_FILE", "/nonexistent/ca.pem"),
        ],
    ));
    assert!(
        has_problem(&problems, "pleo.ca_file", "holds no PEM certificate"),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.message.contains("AAAA")),
        "contents are never echoed: {problems:?}"
    );
    assert!(
        has_problem(&problems, "proxy.ca_file", "/nonexistent/ca.pem"),
        "{problems:?}"
    );
}

#[test]
fn the_rate_budget_keys_parse() {
    let config = load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__PLEO__RATE_LIMIT_PER_MINUTE", "0"),
            ("PLEO_GATEWAY__PLEO__RATE_LIMIT_SCOPE", "Client"),
        ],
    )
    .expect("loads");
    assert_eq!(config.pleo.rate_limit_per_minute, 0);
    assert_eq!(config.pleo.rate_limit_scope, RateLimitScope::Client);

    let problems = problems(load(
        MINIMAL,
        &[
            ("PLEO_GATEWAY__PLEO__RATE_LIMIT_PER_MINUTE", "500/m"),
            ("PLEO_GATEWAY__PLEO__RATE_LIMIT_SCOPE", "company"),
        ],
    ));
    assert!(
        has_problem(&problems, "pleo.rate_limit_per_minute", "whole number"),
        "{problems:?}"
    );
    assert!(
        has_problem(&problems, "pleo.rate_limit_scope", "\"subject\""),
        "{problems:?}"
    );
    let problems = self::problems(load(
        MINIMAL,
        &[("PLEO_GATEWAY__PLEO__RATE_LIMIT_PER_MINUTE", "60001")],
    ));
    assert!(
        has_problem(&problems, "pleo.rate_limit_per_minute", "more than 60000"),
        "{problems:?}"
    );
}
