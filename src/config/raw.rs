//! The merged, untyped configuration tree and the reader that pulls text out of it.
//!
//! The `config` crate does the layering (file, then environment); everything after that is
//! ours: we walk the tree ourselves instead of deserialising with serde, because serde stops
//! at the first error and we want every problem, each under its dotted key name.

use std::collections::HashMap;
use std::path::Path;

use config::{Environment, File, FileFormat, Value, ValueKind};

use super::keys::{KNOWN_KEYS, closest};
use super::{ConfigError, ConfigProblem, ENV_PREFIX};

/// The merged tree: the file's values, overridden by the environment's.
pub(super) struct RawTree {
    root: HashMap<String, Value>,
    /// Where the file came from, for "unknown key" messages.
    file: Option<String>,
    /// Variables that look like configuration but set nothing (see [`super::env`]).
    env_problems: Vec<ConfigProblem>,
}

impl RawTree {
    /// Merges the TOML `file` (path and contents) and the `PLEO_GATEWAY__…` entries of `env`.
    pub(super) fn build(
        file: Option<(&Path, &str)>,
        env: &HashMap<String, String>,
    ) -> Result<RawTree, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some((path, text)) = file {
            // Parsed as a layer of its own so that a syntax error names the file.
            let file_layer = config::Config::builder()
                .add_source(File::from_str(text, FileFormat::Toml))
                .build()
                .map_err(|err| ConfigError::Parse(format!("{}: {err}", path.display())))?;
            builder = builder.add_source(file_layer);
        }
        // Only variables for known keys are merged: the others are reported under their own
        // name, so that an unknown key is never blamed on the file.
        let (env_keys, env_problems) = super::env::screen(env);
        // No `try_parsing` and no `list_separator`: every value stays a string (so
        // `client_id = "12345"` is not turned into a number), and lists are split by us.
        let env_source = Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
            .prefix_separator("__")
            .separator("__")
            .source(Some(env_keys.into_iter().collect()));
        let merged = builder
            .add_source(env_source)
            .build()
            .map_err(|err| ConfigError::Parse(err.to_string()))?;
        let root = match merged.cache.kind {
            ValueKind::Table(table) => table.into_iter().collect(),
            _ => HashMap::new(),
        };
        Ok(RawTree {
            root,
            file: file.map(|(path, _)| path.display().to_string()),
            env_problems,
        })
    }

    /// Reports every key that is not in [`KNOWN_KEYS`] (only the file can hold one: the
    /// environment's were screened before merging), after the environment's own problems.
    pub(super) fn check_keys(&self, problems: &mut Problems) {
        problems.0.extend(self.env_problems.iter().cloned());
        let mut sections: Vec<_> = self.root.iter().collect();
        sections.sort_by(|a, b| a.0.cmp(b.0));
        for (section, value) in sections {
            let Some((_, keys)) = KNOWN_KEYS.iter().find(|(name, _)| name == section) else {
                let names: Vec<&str> = KNOWN_KEYS.iter().map(|(name, _)| *name).collect();
                problems.push(display_key(section), self.unknown(section, &names));
                continue;
            };
            let ValueKind::Table(table) = &value.kind else {
                problems.push(
                    section.clone(),
                    format!(
                        "expected a section ([{section}]) of keys, found {}",
                        describe(value)
                    ),
                );
                continue;
            };
            let mut entries: Vec<_> = table.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (key, _) in entries {
                if !keys.contains(&key.as_str()) {
                    let dotted = format!("{section}.{key}");
                    problems.push(display_key(&dotted), self.unknown(&dotted, keys));
                }
            }
        }
    }

    /// The "unknown key" message: the file and, for a likely typo, the intended key.
    fn unknown(&self, dotted: &str, candidates: &[&str]) -> String {
        let mut message = String::from("unknown key");
        let last = dotted.rsplit('.').next().unwrap_or(dotted);
        if let Some(suggestion) = closest(last, candidates) {
            message.push_str(&format!(" (did you mean `{suggestion}`?)"));
        }
        if let Some(file) = &self.file {
            message.push_str(&format!(", in {file}"));
        }
        message
    }

    fn get(&self, section: &str, key: &str) -> Option<&Value> {
        match &self.root.get(section)?.kind {
            ValueKind::Table(table) => table.get(key),
            _ => None,
        }
    }
}

/// Collects problems so validation can report all of them at once.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigProblem>);

impl Problems {
    /// Records that `key` is wrong because of `message`.
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Reads values out of the tree as text, recording type mismatches as problems.
pub(super) struct Reader<'a> {
    tree: &'a RawTree,
    /// Everything found wrong so far.
    pub(super) problems: Problems,
}

impl<'a> Reader<'a> {
    /// A reader over `tree` that starts by reporting unknown keys.
    pub(super) fn new(tree: &'a RawTree) -> Self {
        let mut problems = Problems::default();
        tree.check_keys(&mut problems);
        Reader { tree, problems }
    }

    /// Records a problem with `section.key`.
    pub(super) fn problem(&mut self, section: &str, key: &str, message: impl Into<String>) {
        self.problems.push(format!("{section}.{key}"), message);
    }

    /// A single value as text (numbers and booleans from TOML become their text); `None` if absent.
    pub(super) fn text(&mut self, section: &str, key: &str) -> Option<String> {
        let value = self.tree.get(section, key)?;
        match scalar_text(value) {
            Some(text) => Some(text),
            None => {
                let found = describe(value);
                self.problem(
                    section,
                    key,
                    format!("expected a single value, found {found}"),
                );
                None
            }
        }
    }

    /// A list: a TOML array, or text split at commas and whitespace (how lists arrive from
    /// the environment). `None` if absent.
    pub(super) fn list(&mut self, section: &str, key: &str) -> Option<Vec<String>> {
        let value = self.tree.get(section, key)?;
        match &value.kind {
            ValueKind::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    match scalar_text(item) {
                        Some(text) => out.push(text),
                        None => {
                            let found = describe(item);
                            self.problem(
                                section,
                                key,
                                format!(
                                    "entry {} must be a single value, found {found}",
                                    index + 1
                                ),
                            );
                        }
                    }
                }
                Some(out)
            }
            _ => match scalar_text(value) {
                Some(text) => Some(split_list(&text)),
                None => {
                    let found = describe(value);
                    self.problem(section, key, format!("expected a list, found {found}"));
                    None
                }
            },
        }
    }

    /// A secret given inline as `key` or as a file path in `key_file` (trimmed contents).
    /// Empty values count as absent, so an environment variable can blank out a file's value.
    pub(super) fn secret_text(&mut self, section: &str, key: &str) -> Option<String> {
        let inline = self.text(section, key).filter(|text| !text.is_empty());
        let file_key = format!("{key}_file");
        let path = self
            .text(section, &file_key)
            .filter(|path| !path.trim().is_empty());
        match (inline, path) {
            (Some(_), Some(_)) => {
                self.both_given(section, key);
                None
            }
            (Some(inline), None) => Some(inline),
            (None, Some(path)) => self
                .read_secret_file(section, &file_key, &path)
                .map(|text| text.trim().to_owned()),
            (None, None) => None,
        }
    }

    /// A list of secrets given inline as `key` or in `key_file`, one per line (blank lines
    /// ignored). Empty lists count as absent.
    pub(super) fn secret_list(&mut self, section: &str, key: &str) -> Option<SecretList> {
        let inline = self.list(section, key).filter(|list| !list.is_empty());
        let file_key = format!("{key}_file");
        let path = self
            .text(section, &file_key)
            .filter(|path| !path.trim().is_empty());
        match (inline, path) {
            (Some(_), Some(_)) => {
                self.both_given(section, key);
                None
            }
            (Some(items), None) => Some(SecretList {
                key: format!("{section}.{key}"),
                entry: "entry",
                items,
            }),
            (None, Some(path)) => {
                let text = self.read_secret_file(section, &file_key, &path)?;
                let items = text
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect();
                Some(SecretList {
                    key: format!("{section}.{file_key}"),
                    entry: "line",
                    items,
                })
            }
            (None, None) => None,
        }
    }

    fn both_given(&mut self, section: &str, key: &str) {
        self.problem(
            section,
            key,
            format!("both `{key}` and `{key}_file` are set; set only one"),
        );
    }

    fn read_secret_file(&mut self, section: &str, file_key: &str, path: &str) -> Option<String> {
        let text = self.read_file(section, file_key, path)?;
        if text.trim().is_empty() {
            // A secret mount that came up empty must not read as "no secret" (a public client,
            // say): the file was named on purpose.
            self.problem(section, file_key, format!("{path:?} is empty"));
            return None;
        }
        Some(text)
    }

    /// The contents of the file `path` named by `section.file_key`; the path is not secret,
    /// the contents may be and are never echoed.
    pub(super) fn read_file(
        &mut self,
        section: &str,
        file_key: &str,
        path: &str,
    ) -> Option<String> {
        match std::fs::read_to_string(path.trim()) {
            Ok(text) => Some(text),
            Err(err) => {
                self.problem(section, file_key, format!("cannot read {path:?}: {err}"));
                None
            }
        }
    }
}

/// Secret list entries plus where they came from, for problem messages.
pub(super) struct SecretList {
    /// The key the entries were read from (`session.encryption_keys` or `…_file`).
    pub(super) key: String,
    /// What one entry is called in messages: "entry" (inline list) or "line" (file).
    pub(super) entry: &'static str,
    /// The entries themselves.
    pub(super) items: Vec<String>,
}

/// Splits an environment-style list: commas and/or whitespace separate items.
pub(super) fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn scalar_text(value: &Value) -> Option<String> {
    match &value.kind {
        ValueKind::String(text) => Some(text.clone()),
        ValueKind::Boolean(v) => Some(v.to_string()),
        ValueKind::I64(v) => Some(v.to_string()),
        ValueKind::I128(v) => Some(v.to_string()),
        ValueKind::U64(v) => Some(v.to_string()),
        ValueKind::U128(v) => Some(v.to_string()),
        ValueKind::Float(v) => Some(v.to_string()),
        ValueKind::Nil | ValueKind::Table(_) | ValueKind::Array(_) => None,
    }
}

fn describe(value: &Value) -> &'static str {
    match value.kind {
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "a list",
        ValueKind::Nil => "nothing",
        _ => "a single value",
    }
}

fn display_key(key: &str) -> String {
    if key.is_empty() {
        "(empty key)".to_owned()
    } else if key.trim().is_empty() {
        // A quoted TOML key of spaces would otherwise be named by nothing visible.
        format!("(blank key {key:?})")
    } else {
        key.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_keys_are_named_visibly() {
        assert_eq!(display_key(""), "(empty key)");
        assert_eq!(display_key(" "), r#"(blank key " ")"#);
        assert_eq!(display_key("\t"), r#"(blank key "\t")"#);
        assert_eq!(display_key("server"), "server");
    }

    #[test]
    fn lists_split_at_commas_and_spaces() {
        assert_eq!(
            split_list(" users:read, export-jobs:read  b:c,,"),
            vec!["users:read", "export-jobs:read", "b:c"]
        );
        assert!(split_list("").is_empty());
    }

    #[test]
    fn typos_suggest_the_known_key() {
        assert_eq!(
            closest("cookie_nme", &["cookie_name", "key_prefix"]),
            Some("cookie_name")
        );
        assert_eq!(closest("colour", &["cookie_name", "key_prefix"]), None);
    }
}
