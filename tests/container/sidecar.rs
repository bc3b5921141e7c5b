//! The image run the way `deploy/kubernetes` runs the sidecar: the manifest's user and group,
//! `fsGroup` as a supplementary group, read-only root, no capabilities, no privilege
//! escalation, the ConfigMap's file and the Secret's files mounted read-only with the
//! ownership and mode the kubelet gives them, the manifest's arguments and environment, and
//! Redis, the mock Pleo and the app on the host (`--network host`).

use std::{
    thread,
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::{
    host::HostProcess,
    host_env,
    image::{Image, image},
    manifest::Manifest,
    pod::{PodFiles, SecretLayout, Secrets},
    podman::{Container, Podman},
    support::{
        Browser, PATIENCE, RedisServer, eventually, json_body, process::free_port, random_b64,
    },
    unique,
};

/// Starts the image detached as the manifest runs it; `extra_env` on top of the manifest's.
fn run_as_pod(
    podman: &Podman,
    image: &Image,
    manifest: &Manifest,
    files: &PodFiles,
    layout: SecretLayout,
    extra_env: &[(String, String)],
) -> Container {
    assert!(
        manifest.read_only_root,
        "deployment.yaml: readOnlyRootFilesystem"
    );
    assert!(manifest.drops_all_capabilities, "deployment.yaml: drop ALL");
    assert!(
        manifest.no_privilege_escalation,
        "deployment.yaml: allowPrivilegeEscalation: false"
    );
    let container = Container::named(podman, format!("pleo-gateway-test-{}", unique()));
    let mut args: Vec<String> = [
        "run",
        "--detach",
        "--name",
        &container.name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        // No systemd here to run health-check timers; the test runs the check itself.
        "--health-interval",
        "disable",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(format!(
        "--user={}:{}",
        manifest.run_as_user, manifest.run_as_group
    ));
    if matches!(layout, SecretLayout::AsShipped) {
        args.push(format!("--group-add={}", manifest.fs_group));
    }
    args.push(format!(
        "--volume={}:{}:ro",
        files.config_dir().display(),
        manifest.config_mount
    ));
    args.push(format!(
        "--volume={}:{}:ro",
        files.secrets_dir().display(),
        manifest.secrets_mount
    ));
    for (key, value) in manifest.env.iter().chain(extra_env) {
        args.push(format!("--env={key}={value}"));
    }
    args.push(image.tag.clone());
    args.extend(manifest.args.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman.run_ok(&args);
    container
}

/// The whole life of the sidecar: start-up as the manifest runs it, probes, a login and Pleo
/// and app calls through it, the image's HEALTHCHECK, then `podman stop` with the manifest's
/// grace period: `/readyz` fails first while requests are still served, and it exits 0 in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sidecar_runs_as_kubernetes_runs_it_and_stops_cleanly() {
    let Some(podman) = Podman::detect("the_sidecar_runs_as_kubernetes_runs_it_and_stops_cleanly")
    else {
        return;
    };
    let manifest = Manifest::read();
    let image = image(&podman);
    let redis = RedisServer::start().await;
    let port = free_port(false);
    let secrets = Secrets {
        client_secret: random_b64(24),
        redis_url: redis.url(),
    };
    let mock = HostProcess::mock_pleo(&secrets.client_secret, port);
    let app = HostProcess::demo_app();
    let files = PodFiles::create(&manifest, SecretLayout::AsShipped, &secrets);
    let env = host_env(port, Some(free_port(false)), &mock.url, Some(&app.url));
    let container = run_as_pod(
        &podman,
        &image,
        &manifest,
        &files,
        SecretLayout::AsShipped,
        &env,
    );

    let gateway = format!("http://127.0.0.1:{port}");
    let browser = Browser::new(gateway.parse().unwrap());
    eventually("the container to answer /healthz", PATIENCE, async || {
        assert!(container.running(), "the container exited at start-up");
        reqwest::get(format!("{gateway}/healthz"))
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let ready = browser.send(browser.get("/readyz")).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready = json_body(ready).await;
    assert_eq!(ready["store"], "redis", "{ready}");
    assert_eq!(ready["store_status"], "reachable", "{ready}");

    browser.login().await;
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    let page = browser.send(browser.get("/app")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("urn:pleo:company:"),
        "the app saw the subject: {page}"
    );

    // The image's HEALTHCHECK, as Docker or podman would run it inside the container.
    let check = podman.output(&["healthcheck", "run", &container.name]);
    assert!(
        check.status.success(),
        "HEALTHCHECK failed: {}{}; {}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
        podman.inspect(&container.name, "{{json .State.Health}}")
    );
    report_size_and_memory(&podman, &image, &container, &manifest);

    // SIGTERM with the manifest's grace period, as the kubelet sends it.
    let grace = manifest.grace_period_secs;
    let stop = {
        let podman = podman.clone();
        let name = container.name.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let output = podman.output(&["stop", "--time", &grace.to_string(), &name]);
            (started.elapsed(), output)
        })
    };
    let draining = eventually("/readyz to fail after SIGTERM", PATIENCE, async || {
        let response = browser.send(browser.get("/readyz")).await;
        (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    assert_eq!(json_body(draining).await["status"], "draining");
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(
        employees.status(),
        StatusCode::OK,
        "served during shutdown_delay"
    );
    let (took, output) = stop.join().unwrap();
    assert!(
        output.status.success(),
        "podman stop: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exit_code = podman.inspect(&container.name, "{{.State.ExitCode}}");
    assert_eq!(
        exit_code,
        "0",
        "exit code after SIGTERM; logs:\n{}",
        container.logs()
    );
    assert!(
        took < Duration::from_secs(grace),
        "stopping took {took:?}, the grace period is {grace} s"
    );
    let delay = Duration::from_secs(manifest.server_duration_secs("shutdown_delay"));
    assert!(
        took >= delay,
        "stopped after {took:?}, before shutdown_delay {delay:?}"
    );
}

/// The image's size and the running container's peak RSS (the kernel's high-water mark of its
/// main process), on stderr for the README, and the RSS against the manifest's memory limit.
fn report_size_and_memory(
    podman: &Podman,
    image: &Image,
    container: &Container,
    manifest: &Manifest,
) {
    let size: u64 = podman
        .run_ok(&["image", "inspect", "--format", "{{.Size}}", &image.tag])
        .parse()
        .unwrap();
    let pid = podman.inspect(&container.name, "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    eprintln!(
        "container: image {:.1} MB; gateway peak RSS {:.1} MiB after a login and proxied calls",
        size as f64 / 1e6,
        peak_kib as f64 / 1024.0
    );
    assert!(
        peak_kib * 1024 < manifest.memory_limit,
        "peak RSS {peak_kib} KiB exceeds the manifest's memory limit"
    );
}

/// The Secret as the manifest shipped it on 2026-11-30 (mode 0400, no fsGroup): the gateway
/// cannot read its own secrets, and start-up fails with a message naming the file — the fault
/// this test exists to catch, so it proves it can see it.
#[test]
fn secrets_mounted_0400_without_fs_group_stop_start_up_naming_the_file() {
    let Some(podman) =
        Podman::detect("secrets_mounted_0400_without_fs_group_stop_start_up_naming_the_file")
    else {
        return;
    };
    let manifest = Manifest::read();
    let image = image(&podman);
    let secrets = Secrets {
        client_secret: random_b64(24),
        redis_url: "redis://127.0.0.1:1".into(),
    };
    let files = PodFiles::create(&manifest, SecretLayout::Before20261130, &secrets);
    let env = host_env(free_port(false), None, "http://127.0.0.1:1", None);
    let container = run_as_pod(
        &podman,
        &image,
        &manifest,
        &files,
        SecretLayout::Before20261130,
        &env,
    );
    let code = podman.run_ok(&["wait", &container.name]);
    let logs = container.logs();
    assert_ne!(code, "0", "must not start: {logs}");
    let file = format!("{}/client_secret", manifest.secrets_mount);
    assert!(logs.contains(&file), "names {file}: {logs}");
    assert!(logs.contains("ermission denied"), "{logs}");
}

/// The README's minimal production configuration — environment variables and secret files,
/// no configuration file — is all the image needs: `check-config` in the image accepts it.
/// (An image with a baked-in file refused it: both `redis_url` and `redis_url_file`.)
#[test]
fn the_image_starts_from_the_readme_environment_alone() {
    let Some(podman) = Podman::detect("the_image_starts_from_the_readme_environment_alone") else {
        return;
    };
    let readme = std::fs::read_to_string(crate::manifest::repo().join("README.md")).unwrap();
    let recipe = readme
        .split_once("Minimal production configuration, as environment variables:")
        .and_then(|(_, rest)| rest.split_once("```sh\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("the README's minimal production configuration");
    let env: Vec<(String, String)> = recipe
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.replace("<client id>", "3fa85f64-5717-4562-b3fc-2c963f66afa6");
            (key.to_owned(), value)
        })
        .collect();
    assert!(env.len() >= 5, "{recipe}");
    let secrets = tempfile::tempdir().unwrap();
    let mut mount = None;
    for (key, path) in env.iter().filter(|(key, _)| key.ends_with("_FILE")) {
        let path = std::path::Path::new(path);
        let dir = path.parent().unwrap().to_string_lossy().into_owned();
        assert!(
            mount.as_ref().is_none_or(|m| *m == dir),
            "one secrets directory"
        );
        mount = Some(dir);
        let value = match key.as_str() {
            k if k.contains("ENCRYPTION_KEYS") => random_b64(32),
            k if k.contains("REDIS_URL") => "rediss://:p@redis.example.internal:6380".into(),
            _ => random_b64(24),
        };
        let file = secrets.path().join(path.file_name().unwrap());
        std::fs::write(&file, value).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .unwrap();
    }
    std::fs::set_permissions(
        secrets.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let image = image(&podman);
    let mut args: Vec<String> = ["run", "--rm", "--read-only", "--network", "none"]
        .map(str::to_owned)
        .to_vec();
    args.push(format!(
        "--volume={}:{}:ro",
        secrets.path().display(),
        mount.expect("secret files in the recipe")
    ));
    for (key, value) in &env {
        args.push(format!("--env={key}={value}"));
    }
    args.push(image.tag.clone());
    args.push("check-config".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = podman.output(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("configuration is valid"), "{stderr}");
}
