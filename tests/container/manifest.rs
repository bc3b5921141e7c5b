//! What `deploy/kubernetes` says about how the sidecar runs, read from the manifests
//! themselves, so the container test runs what is shipped and fails when the two drift.
//!
//! The manifests are YAML written in a known shape; the few facts needed are read line by line
//! (no YAML dependency), and a fact that cannot be found fails the test with its name.

use std::{collections::BTreeMap, path::Path};

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The facts of `deployment.yaml` and `configmap.yaml` the container test needs.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Pod `securityContext.fsGroup`.
    pub fs_group: u32,
    /// The gateway container's `runAsUser` / `runAsGroup`.
    pub run_as_user: u32,
    pub run_as_group: u32,
    /// `readOnlyRootFilesystem: true`.
    pub read_only_root: bool,
    /// `capabilities: {drop: ["ALL"]}`.
    pub drops_all_capabilities: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_privilege_escalation: bool,
    /// The container's `args`.
    pub args: Vec<String>,
    /// The container's `env`.
    pub env: Vec<(String, String)>,
    /// The container's memory limit in bytes.
    pub memory_limit: u64,
    /// `mountPath` of the `config` and `secrets` volumes.
    pub config_mount: String,
    pub secrets_mount: String,
    /// The Secret volume's `defaultMode`.
    pub secret_mode: u32,
    /// `terminationGracePeriodSeconds`.
    pub grace_period_secs: u64,
    /// The ConfigMap's `gateway.toml`.
    pub gateway_toml: String,
}

impl Manifest {
    /// Reads `deploy/kubernetes/deployment.yaml` and `configmap.yaml`.
    pub fn read() -> Self {
        let dir = repo().join("deploy/kubernetes");
        let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
        let configmap = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
        Self::parse(&deployment, &configmap)
    }

    /// The facts out of the two files' text.
    pub fn parse(deployment: &str, configmap: &str) -> Self {
        let gateway = container(deployment, "pleo-gateway");
        let mounts: Vec<BTreeMap<String, String>> = gateway
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- "))
            .filter(|item| item.contains("mountPath:"))
            .map(flow_map)
            .collect();
        let mount = |volume: &str| {
            mounts
                .iter()
                .find(|m| m.get("name").map(String::as_str) == Some(volume))
                .and_then(|m| m.get("mountPath").cloned())
                .unwrap_or_else(|| panic!("deployment.yaml: no mount of volume {volume:?}"))
        };
        let env = gateway
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- "))
            .filter(|item| item.starts_with("{name:") && item.contains("value:"))
            .map(flow_map)
            .map(|m| (m["name"].clone(), m["value"].clone()))
            .collect();
        let args = value(&gateway, "args").unwrap_or_else(|| "[]".into());
        let args: Vec<String> = serde_json::from_str(&args)
            .unwrap_or_else(|e| panic!("deployment.yaml: args {args:?} is not a flow list: {e}"));
        let limits = value(&gateway, "limits").expect("deployment.yaml: the gateway's limits");
        let memory = flow_map(&limits)
            .remove("memory")
            .expect("deployment.yaml: a memory limit");
        let secret = deployment
            .lines()
            .find_map(|line| line.trim().strip_prefix("secret:"))
            .map(flow_map)
            .expect("deployment.yaml: the secrets volume");
        let mode = secret
            .get("defaultMode")
            .expect("deployment.yaml: the Secret's defaultMode");
        Manifest {
            fs_group: number(deployment, "fsGroup"),
            run_as_user: number(&gateway, "runAsUser"),
            run_as_group: number(&gateway, "runAsGroup"),
            read_only_root: value(&gateway, "readOnlyRootFilesystem").as_deref() == Some("true"),
            drops_all_capabilities: value(&gateway, "capabilities")
                .is_some_and(|caps| caps.replace(' ', "") == r#"{drop:["ALL"]}"#),
            no_privilege_escalation: value(&gateway, "allowPrivilegeEscalation").as_deref()
                == Some("false"),
            args,
            env,
            memory_limit: quantity(&memory),
            config_mount: mount("config"),
            secrets_mount: mount("secrets"),
            secret_mode: u32::from_str_radix(mode.trim_start_matches("0o"), 8)
                .unwrap_or_else(|_| panic!("deployment.yaml: defaultMode {mode:?} is not octal")),
            grace_period_secs: number(deployment, "terminationGracePeriodSeconds"),
            gateway_toml: block_scalar(configmap, "gateway.toml"),
        }
    }

    /// A `[server]` duration of the ConfigMap's file, in seconds (`"5s"`, `"30s"`, `"1m"`).
    pub fn server_duration_secs(&self, key: &str) -> u64 {
        let line = self
            .gateway_toml
            .lines()
            .find_map(|line| line.trim().strip_prefix(key)?.trim().strip_prefix('='))
            .unwrap_or_else(|| panic!("configmap.yaml: gateway.toml sets no {key}"));
        let text = line.trim().trim_matches('"');
        humantime::parse_duration(text)
            .unwrap_or_else(|e| panic!("configmap.yaml: {key} = {text:?}: {e}"))
            .as_secs()
    }
}

/// The lines of the container named `name`, up to the next list item at its indentation.
fn container(deployment: &str, name: &str) -> String {
    let lines: Vec<&str> = deployment.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.trim() == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("deployment.yaml: no container {name:?}"));
    let indent = indentation(lines[start]);
    let end = lines[start + 1..]
        .iter()
        .position(|line| {
            !line.trim().is_empty() && !line.trim_start().starts_with('#') && {
                let i = indentation(line);
                i < indent || (i == indent && line.trim_start().starts_with("- "))
            }
        })
        .map_or(lines.len(), |offset| start + 1 + offset);
    lines[start..end].join("\n")
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The text after `key:` on the first line that has it.
fn value(text: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}:");
    text.lines()
        .map(str::trim)
        .map(|line| line.strip_prefix("- ").unwrap_or(line))
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|rest| rest.trim().to_owned())
}

fn number<T: std::str::FromStr>(text: &str, key: &str) -> T {
    let raw = value(text, key).unwrap_or_else(|| panic!("deployment.yaml: no {key}"));
    raw.parse()
        .unwrap_or_else(|_| panic!("deployment.yaml: {key}: {raw:?} is not a number"))
}

/// `{a: b, c: "d"}` → {a: b, c: d}; values must not contain commas (these do not).
fn flow_map(text: &str) -> BTreeMap<String, String> {
    text.trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .filter_map(|pair| pair.split_once(':'))
        .map(|(key, value)| {
            (
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            )
        })
        .collect()
}

/// A Kubernetes memory quantity (`64Mi`, `1Gi`, `500M`) in bytes.
fn quantity(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().expect("a memory quantity");
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("unknown memory unit {other:?}"),
    }
}

/// The literal block scalar `key: |` with its indentation removed.
fn block_scalar(yaml: &str, key: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.trim() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("configmap.yaml: no `{key}: |` block"));
    let key_indent = indentation(lines[start]);
    let body: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|line| line.trim().is_empty() || indentation(line) > key_indent)
        .copied()
        .collect();
    let indent = body
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| indentation(line))
        .min()
        .unwrap_or(0);
    let mut text: String = body
        .iter()
        .map(|line| line.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

#[test]
fn the_shipped_manifests_are_read_fully() {
    let manifest = Manifest::read();
    assert_eq!(manifest.run_as_user, 65532);
    assert_eq!(manifest.fs_group, 65532);
    assert_eq!(manifest.secrets_mount, "/var/run/secrets/pleo-gateway");
    assert_eq!(manifest.config_mount, "/etc/pleo-gateway");
    // The file comes through the environment, so the image's health check reads it too.
    assert!(manifest.args.is_empty(), "{:?}", manifest.args);
    assert!(manifest.env.contains(&(
        "PLEO_GATEWAY_CONFIG".to_owned(),
        "/etc/pleo-gateway/gateway.toml".to_owned()
    )));
    assert!(
        manifest.gateway_toml.starts_with("[server]\n"),
        "{}",
        manifest.gateway_toml
    );
    assert!(
        manifest
            .gateway_toml
            .contains("[session]\nstore = \"redis\"")
    );
    assert!(manifest.env.iter().any(|(name, _)| name == "RUST_LOG"));
    assert_eq!(manifest.memory_limit, 64 << 20);
}

/// The grace period covers the delay and the drain: otherwise the kubelet's SIGKILL cuts off
/// requests the gateway would have finished.
#[test]
fn the_grace_period_covers_shutdown_delay_and_shutdown_timeout() {
    let manifest = Manifest::read();
    let needed = manifest.server_duration_secs("shutdown_delay")
        + manifest.server_duration_secs("shutdown_timeout");
    assert!(
        manifest.grace_period_secs > needed,
        "terminationGracePeriodSeconds {} must exceed shutdown_delay + shutdown_timeout = {needed}",
        manifest.grace_period_secs
    );
}

#[test]
fn the_reader_finds_what_it_is_asked_for_and_only_that() {
    let deployment = r#"
spec:
  template:
    spec:
      securityContext:
        fsGroup: 1234
      terminationGracePeriodSeconds: 12
      containers:
        - name: app
          securityContext:
            runAsUser: 1
        - name: pleo-gateway
          args: ["--config", "/c/g.toml"]
          env:
            - {name: A, value: "b"}
          resources:
            limits: {memory: 1Gi}
          securityContext:
            readOnlyRootFilesystem: true
            runAsUser: 7
            runAsGroup: 8
            capabilities: {drop: ["ALL"]}
          volumeMounts:
            - {name: config, mountPath: /c, readOnly: true}
            - {name: secrets, mountPath: /s, readOnly: true}
      volumes:
        - name: secrets
          secret: {secretName: x, defaultMode: 0440}
"#;
    let configmap =
        "data:\n  gateway.toml: |\n    [server]\n      nested = 1\n\n    x = 2\nother: y\n";
    let manifest = Manifest::parse(deployment, configmap);
    assert_eq!(manifest.fs_group, 1234);
    assert_eq!(manifest.run_as_user, 7, "the gateway's, not the app's");
    assert_eq!(manifest.run_as_group, 8);
    assert!(manifest.read_only_root && manifest.drops_all_capabilities);
    assert!(!manifest.no_privilege_escalation);
    assert_eq!(manifest.secret_mode, 0o440);
    assert_eq!(manifest.grace_period_secs, 12);
    assert_eq!(manifest.memory_limit, 1 << 30);
    assert_eq!(manifest.env, [("A".to_owned(), "b".to_owned())]);
    assert_eq!(
        (
            manifest.config_mount.as_str(),
            manifest.secrets_mount.as_str()
        ),
        ("/c", "/s")
    );
    assert_eq!(manifest.gateway_toml, "[server]\n  nested = 1\n\nx = 2\n");
}
