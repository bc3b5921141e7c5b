//! Which environment variables are configuration, and what is wrong with the ones that look
//! like configuration but are not.
//!
//! A variable `PLEO_GATEWAY__SECTION__KEY` sets `section.key`. A misspelt one must not be
//! silently ignored (the gateway would run on a default), nor reported as if the file held it
//! (the operator would search the file in vain), so each problem here names the variable.
//! Only well-formed variables for known keys are handed on to be merged with the file.
//!
//! Variables with a single underscore after `PLEO_GATEWAY` that are not configuration keys
//! (`PLEO_GATEWAY_CONFIG`, `PLEO_GATEWAY_LOG_FORMAT`, the tests' `PLEO_GATEWAY_TEST_…`) are
//! left alone; one is reported only when it looks like a key with one underscore too few:
//! `PLEO_GATEWAY_SERVER__LISTEN`, `PLEO_GATEWAY_PLEO_CLIENT_ID`.

use std::collections::HashMap;

use super::{ConfigProblem, ENV_PREFIX, keys::KNOWN_KEYS};

/// The environment split into the variables that set configuration keys (name → value, as
/// given) and the problems with variables that look like configuration but set nothing.
pub(super) fn screen(
    env: &HashMap<String, String>,
) -> (HashMap<String, String>, Vec<ConfigProblem>) {
    let mut keys = HashMap::new();
    let mut problems = Vec::new();
    let mut names: Vec<&String> = env.keys().collect();
    // Sorted, so problems come out in the same order on every run.
    names.sort();
    for name in names {
        match classify(name) {
            Verdict::NotOurs => {}
            Verdict::Key => {
                keys.insert(name.clone(), env[name].clone());
            }
            Verdict::Problem(message) => problems.push(ConfigProblem {
                key: format!("environment variable {name}"),
                message,
            }),
        }
    }
    (keys, problems)
}

/// What one variable is.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not a configuration variable at all (including `PLEO_GATEWAY_CONFIG`).
    NotOurs,
    /// `PLEO_GATEWAY__SECTION__KEY` for a known key.
    Key,
    /// Meant as configuration, but sets nothing: why, and what to write instead.
    Problem(String),
}

/// Names compare case-insensitively, as the layering does (`pleo_gateway__pleo__scopes` works).
fn classify(name: &str) -> Verdict {
    let upper = name.to_ascii_uppercase();
    if let Some(path) = upper.strip_prefix(ENV_PREFIX) {
        return classify_key(path);
    }
    let single = ENV_PREFIX.trim_end_matches('_').to_owned() + "_";
    let Some(rest) = upper.strip_prefix(&single) else {
        return Verdict::NotOurs;
    };
    let section = KNOWN_KEYS
        .iter()
        .map(|(section, _)| section.to_ascii_uppercase())
        .find(|section| rest.starts_with(&format!("{section}_")));
    if !rest.contains("__") && section.is_none() {
        // PLEO_GATEWAY_CONFIG, PLEO_GATEWAY_LOG_FORMAT and the like: not keys.
        return Verdict::NotOurs;
    }
    let intended = match (section, rest.contains("__")) {
        // PLEO_GATEWAY_PLEO_CLIENT_ID → PLEO_GATEWAY__PLEO__CLIENT_ID
        (Some(section), false) => format!("{ENV_PREFIX}{section}__{}", &rest[section.len() + 1..]),
        _ => format!("{ENV_PREFIX}{rest}"),
    };
    Verdict::Problem(format!(
        "not read: configuration variables start with `{ENV_PREFIX}` and separate section and \
         key with `__` (did you mean {intended}?)"
    ))
}

/// `SECTION__KEY` (upper case): a known section and a key of it, nothing deeper.
fn classify_key(path: &str) -> Verdict {
    let sections: Vec<&str> = KNOWN_KEYS.iter().map(|(name, _)| *name).collect();
    let lower = path.to_ascii_lowercase();
    let mut parts = lower.split("__");
    let section = parts.next().unwrap_or_default();
    let key = parts.next();
    let deeper = parts.next().is_some();
    let Some((_, keys)) = KNOWN_KEYS.iter().find(|(name, _)| *name == section) else {
        return Verdict::Problem(format!(
            "unknown section `{section}`{}; the sections are {}",
            suggestion(section, &sections),
            sections.join(", ")
        ));
    };
    let Some(key) = key else {
        return Verdict::Problem(format!(
            "names the section [{section}], not a key; use {ENV_PREFIX}{}__<KEY>",
            section.to_ascii_uppercase()
        ));
    };
    if !keys.contains(&key) {
        return Verdict::Problem(format!(
            "unknown key `{key}` in [{section}]{}",
            suggestion(key, keys)
        ));
    }
    if deeper {
        return Verdict::Problem(format!(
            "`{section}.{key}` has no keys below it; use {ENV_PREFIX}{}__{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        ));
    }
    Verdict::Key
}

fn suggestion(name: &str, candidates: &[&str]) -> String {
    super::keys::closest(name, candidates)
        .map(|candidate| format!(" (did you mean `{candidate}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(name: &str) -> String {
        match classify(name) {
            Verdict::Problem(message) => message,
            other => panic!("{name}: expected a problem, got {other:?}"),
        }
    }

    #[test]
    fn known_keys_pass_in_any_case() {
        assert_eq!(classify("PLEO_GATEWAY__PLEO__CLIENT_ID"), Verdict::Key);
        assert_eq!(classify("pleo_gateway__session__store"), Verdict::Key);
    }

    #[test]
    fn other_variables_are_not_ours() {
        for name in [
            "PLEO_GATEWAY_CONFIG",
            "PLEO_GATEWAY_LOG_FORMAT",
            "PLEO_GATEWAY_TEST_REDIS_URL",
            "PLEO_GATEWAY_TEST_REDIS_DEFAULT",
            "PLEO_GATEWAYX",
            "PLEO_GATEWAY",
            "HOME",
        ] {
            assert_eq!(classify(name), Verdict::NotOurs, "{name}");
        }
    }

    #[test]
    fn one_underscore_too_few_is_named_with_the_intended_variable() {
        assert!(
            problem("PLEO_GATEWAY_SERVER__LISTEN")
                .contains("did you mean PLEO_GATEWAY__SERVER__LISTEN?")
        );
        assert!(
            problem("PLEO_GATEWAY_PLEO_CLIENT_ID")
                .contains("did you mean PLEO_GATEWAY__PLEO__CLIENT_ID?")
        );
    }

    #[test]
    fn unknown_sections_and_keys_are_named() {
        let message = problem("PLEO_GATEWAY__LOGGING__LEVEL");
        assert!(message.contains("unknown section `logging`"), "{message}");
        assert!(
            message.contains("server, pleo, session, proxy"),
            "{message}"
        );
        assert!(problem("PLEO_GATEWAY__SESION__STORE").contains("did you mean `session`?"));
        assert!(
            problem("PLEO_GATEWAY__SESSION__COOKIE_NME").contains("did you mean `cookie_name`?")
        );
        assert!(problem("PLEO_GATEWAY__PLEO").contains("not a key"));
        assert!(problem("PLEO_GATEWAY__PLEO__SCOPES__X").contains("no keys below it"));
    }

    #[test]
    fn screening_keeps_keys_and_reports_the_rest() {
        let env: HashMap<String, String> = [
            ("PLEO_GATEWAY__PLEO__CLIENT_ID", "c"),
            ("PLEO_GATEWAY_SERVER__LISTEN", "0.0.0.0:1"),
            ("PLEO_GATEWAY_CONFIG", "/etc/x.toml"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (keys, problems) = screen(&env);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["PLEO_GATEWAY__PLEO__CLIENT_ID"], "c");
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].key,
            "environment variable PLEO_GATEWAY_SERVER__LISTEN"
        );
    }
}
