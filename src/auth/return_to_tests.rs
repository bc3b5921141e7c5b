//! Test-only module: its parent declares it under `#[cfg(test)]`.
//!
//! The hostile `return_to` corpus (`tests/fixtures/hostile_return_to.txt`): scheme-relative
//! URLs, backslashes, encoded slashes, control characters, CR/LF, user info, IDN and look-alike
//! slashes, `javascript:`/`data:`, overlong values. Each is sanitised and then resolved the way
//! a browser resolves a `Location` header (the `url` crate implements the WHATWG URL standard
//! browsers follow: it strips tabs and newlines, reads `\` as `/`, decodes `%2e` as a dot
//! segment), and must land on the gateway's own origin.

use axum::http::HeaderValue;
use url::Url;

use super::return_to::sanitize_return_to;

const CORPUS: &str = include_str!("../../tests/fixtures/hostile_return_to.txt");
const GATEWAY: &str = "https://gateway.example/";

/// The corpus values, with the fixture's escapes (`\t \n \r \0 \\ \xNN \u{N}`, `\e` for the
/// empty value) turned into the characters they stand for.
fn corpus() -> Vec<String> {
    CORPUS
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with("# "))
        .map(unescape)
        .collect()
}

fn unescape(line: &str) -> String {
    if line == "\\e" {
        return String::new();
    }
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&hex, 16).unwrap()));
            }
            Some('u') => {
                let braced: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let code = u32::from_str_radix(braced.trim_start_matches('{'), 16).unwrap();
                out.push(char::from_u32(code).unwrap());
            }
            other => panic!("unknown escape \\{other:?} in {line:?}"),
        }
    }
    out
}

#[test]
fn corpus_is_large_and_covers_every_category() {
    let values = corpus();
    assert!(values.len() >= 100, "only {} values", values.len());
    let has = |pred: &dyn Fn(&str) -> bool| values.iter().any(|v| pred(v));
    assert!(has(&|v| v.starts_with("//")), "scheme-relative");
    assert!(has(&|v| v.contains('\\')), "backslashes");
    assert!(
        has(&|v| v.to_ascii_lowercase().contains("%2f")),
        "encoded slashes"
    );
    assert!(
        has(&|v| v.chars().any(|c| c.is_control())),
        "control characters"
    );
    assert!(has(&|v| v.contains("\r\n")), "CR/LF");
    assert!(has(&|v| v.contains('@')), "user info");
    assert!(has(&|v| !v.is_ascii()), "IDN");
    assert!(has(&|v| v.starts_with("javascript:")), "javascript:");
    assert!(has(&|v| v.starts_with("data:")), "data:");
    assert!(has(&|v| v.len() > 2048), "overlong");
}

#[test]
fn no_hostile_return_to_leaves_the_origin() {
    let base = Url::parse(GATEWAY).unwrap();
    for value in corpus() {
        let kept = sanitize_return_to(Some(&value));
        assert!(
            kept.starts_with('/') && !kept.starts_with("//") && !kept.starts_with("/\\"),
            "{value:?} kept as {kept:?}"
        );
        assert!(
            HeaderValue::from_str(&kept).is_ok(),
            "{value:?} kept as {kept:?}, which is no valid Location header"
        );
        let landed = base
            .join(&kept)
            .unwrap_or_else(|e| panic!("{value:?} kept as {kept:?}: {e}"));
        assert_eq!(
            landed.origin(),
            base.origin(),
            "{value:?} kept as {kept:?} leads to {landed}"
        );
        assert_eq!(landed.username(), "", "{value:?}");
        assert!(landed.password().is_none(), "{value:?}");
    }
}

#[test]
fn no_kept_value_lands_on_a_path_that_looks_scheme_relative() {
    // `/%2e%2e//evil.example` stays on the origin, but the browser requests the path
    // `//evil.example`, which any trailing-slash redirect in the app turns into an open
    // redirect. This corpus found that hole; `sanitize_return_to` now refuses it.
    for value in corpus() {
        let kept = sanitize_return_to(Some(&value));
        if kept != "/" {
            let landed = Url::parse(GATEWAY).unwrap().join(&kept).unwrap();
            let path_and_query = &landed[url::Position::BeforePath..url::Position::AfterQuery];
            assert!(
                !path_and_query.starts_with("//"),
                "{value:?} kept as {kept:?} lands on path {path_and_query:?}"
            );
        }
    }
}
