//! The pod's view without a container: the binary run as the manifest's user and groups
//! (`setpriv`), reading the ConfigMap's file and Secret files owned and moded as the kubelet
//! would. Runs wherever the test runs as root, podman or not.

use std::process::{Command, Output, Stdio};

use reqwest::StatusCode;

use crate::{
    host_env,
    manifest::Manifest,
    pod::{PodFiles, SecretLayout, Secrets, is_root},
    support::{
        PATIENCE, eventually,
        process::{Watchdog, free_port, require_program},
    },
};

/// `setpriv` as the manifest's user, with `groups` as the supplementary groups.
fn as_pod_user(manifest: &Manifest, files: &PodFiles, groups: Option<u32>) -> Command {
    require_program("setpriv", "util-linux");
    // A copy beside the files: the build directory need not be readable by that user.
    let binary = files.path().join("pleo-gateway");
    if !binary.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_pleo-gateway"), &binary).unwrap();
    }
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={}", manifest.run_as_user))
        .arg(format!("--regid={}", manifest.run_as_group));
    match groups {
        Some(group) => command.arg(format!("--groups={group}")),
        None => command.arg("--clear-groups"),
    };
    command
        .arg("--")
        .arg(&binary)
        .arg("--config")
        .arg(files.config_dir().join("gateway.toml"));
    // The Secret's paths are the pod's; here the files are in the temporary directory.
    let secrets = files.secrets_dir();
    command
        .env_clear()
        .env(
            "PLEO_GATEWAY__PLEO__CLIENT_SECRET_FILE",
            secrets.join("client_secret"),
        )
        .env(
            "PLEO_GATEWAY__SESSION__REDIS_URL_FILE",
            secrets.join("redis_url"),
        )
        .env(
            "PLEO_GATEWAY__SESSION__ENCRYPTION_KEYS_FILE",
            secrets.join("encryption_keys"),
        );
    command
}

fn secrets() -> Secrets {
    Secrets {
        client_secret: "pod-view-secret".into(),
        // Never contacted: the store connects lazily and /healthz does not need it.
        redis_url: "redis://127.0.0.1:1".into(),
    }
}

fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED: the pod's view needs root (to own files as root and switch users)");
    true
}

/// As the manifest ships it (fsGroup, 0440): the gateway as uid 65532 reads its secrets and
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_uid_65532_the_gateway_reads_the_secrets_the_manifest_mounts_and_starts() {
    if skip_unless_root() {
        return;
    }
    let manifest = Manifest::read();
    let files = PodFiles::create(&manifest, SecretLayout::AsShipped, &secrets());
    let port = free_port(false);
    let mut child = as_pod_user(&manifest, &files, Some(manifest.fs_group))
        .envs(host_env(port, None, "http://127.0.0.1:1", None))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _watchdog = Watchdog::new(child.id(), None);
    let health = format!("http://127.0.0.1:{port}/healthz");
    let started = eventually("the gateway to answer /healthz", PATIENCE, async || {
        if child.try_wait().unwrap().is_some() {
            return Some(false);
        }
        reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
            .then_some(true)
    })
    .await;
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        started,
        "exited at start-up as uid {}: {}",
        manifest.run_as_user,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The manifest as shipped on 2026-11-30 (0400, no fsGroup): start-up fails, naming the file.
#[test]
fn as_uid_65532_without_fs_group_the_secrets_are_unreadable_and_start_up_says_which() {
    if skip_unless_root() {
        return;
    }
    let manifest = Manifest::read();
    let files = PodFiles::create(&manifest, SecretLayout::Before20261130, &secrets());
    let output: Output = as_pod_user(&manifest, &files, None)
        .envs(host_env(free_port(false), None, "http://127.0.0.1:1", None))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must not start: {stderr}");
    let named = files.secrets_dir().join("client_secret");
    assert!(
        stderr.contains(&*named.to_string_lossy()),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("ermission denied"), "{stderr}");
}
