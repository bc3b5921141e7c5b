//! `deploy/docker-compose.yml` brought up with podman-compose: Redis, the mock Pleo, the demo
//! app and the gateway become healthy (by their own health checks), and a login and a Pleo call
//! work through the gateway. The gateway image is the container test's; Redis's is built
//! `FROM scratch` from the host's `redis-server` and `redis-cli` (nothing can be pulled here).

use std::{path::PathBuf, process::Stdio};

use reqwest::StatusCode;

use crate::{
    image::{Image, copy_libraries, image},
    manifest::repo,
    podman::{Janitor, Podman},
    support::{Browser, PATIENCE, eventually, process::free_port},
    unique,
};

/// The services of the compose file, each with a health check.
const SERVICES: [&str; 4] = ["redis", "mock-pleo", "app", "gateway"];

/// `podman-compose`, or `None` after saying why (a failure when the container test is
/// required).
fn podman_compose(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("podman-compose"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let required = std::env::var("PLEO_GATEWAY_REQUIRE_CONTAINER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test}: podman-compose is not installed (python3 -m pip install podman-compose)"
        );
        eprintln!(
            "SKIPPED {test}: podman-compose is not installed (python3 -m pip install podman-compose)"
        );
    }
    found
}

/// Redis from the host's binaries, for the compose file's `REDIS_IMAGE`.
fn redis_image(podman: &Podman) -> Image {
    let context = tempfile::Builder::new()
        .prefix("pleo-gateway-redis-image-")
        .tempdir()
        .unwrap();
    let mut containerfile = String::from("FROM scratch\n");
    for program in ["redis-server", "redis-cli"] {
        let path = crate::support::require_program(program, "redis-server");
        let path = std::fs::canonicalize(path).unwrap();
        std::fs::copy(&path, context.path().join(program)).unwrap();
        containerfile.push_str(&format!("COPY {program} /usr/local/bin/{program}\n"));
        for library in copy_libraries(&path, context.path()) {
            let line = format!("COPY {} {library}\n", library.trim_start_matches('/'));
            if !containerfile.contains(&line) {
                containerfile.push_str(&line);
            }
        }
    }
    containerfile.push_str("ENV PATH=/usr/local/bin\nUSER 65532:65532\n");
    Image::build(
        podman,
        "pleo-gateway-test-redis",
        context.path(),
        &containerfile,
    )
}

/// One compose project, taken down when dropped.
struct Stack {
    program: PathBuf,
    podman: Podman,
    project: String,
    env: Vec<(String, String)>,
    _janitor: Janitor,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(&self.program)
            .args(["--podman-args=--runtime=runc", "--in-pod=false", "-p"])
            .arg(&self.project)
            .arg("-f")
            .arg(repo().join("deploy/docker-compose.yml"))
            .args(args)
            .env("CONTAINERS_CONF", &self.podman.conf)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .output()
            .expect("run podman-compose")
    }

    /// The container of `service`.
    fn container(&self, service: &str) -> String {
        self.podman.run_ok(&[
            "ps",
            "--all",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            "{{.Names}}",
        ])
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in SERVICES {
                let logs = self.podman.output(&["logs", &self.container(service)]);
                eprintln!(
                    "--- logs of {service} ---\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
        let _ = self.compose(&["down", "--timeout", "0"]);
    }
}

/// `podman-compose up -d`: every service's health check passes (podman before 4.6 runs no
/// health-check timers without systemd, so the test runs each check, as the timer would), then
/// a login, a Pleo call and the app through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_compose_stack_comes_up_healthy_and_logs_in() {
    const TEST: &str = "the_compose_stack_comes_up_healthy_and_logs_in";
    let Some(podman) = Podman::detect(TEST) else {
        return;
    };
    let Some(program) = podman_compose(TEST) else {
        return;
    };
    let gateway_image = image(&podman);
    let redis_image = redis_image(&podman);
    let gateway_port = free_port(false);
    let env: Vec<(String, String)> = [
        ("PLEO_GATEWAY_IMAGE", gateway_image.tag.clone()),
        ("REDIS_IMAGE", redis_image.tag.clone()),
        ("GATEWAY_PORT", gateway_port.to_string()),
        ("MOCK_PLEO_PORT", free_port(false).to_string()),
        ("APP_PORT", free_port(false).to_string()),
        ("REDIS_PORT", free_port(false).to_string()),
        ("METRICS_PORT", free_port(false).to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    let project = format!("pleo-gateway-test-{}", unique());
    let label = format!("label=com.docker.compose.project={project}");
    let janitor = Janitor::script(
        &podman,
        "$PODMAN rm --force --time 0 $($PODMAN ps --all --quiet --filter \"$1\")",
        &[&label],
    );
    let stack = Stack {
        program,
        podman: podman.clone(),
        project,
        env,
        _janitor: janitor,
    };
    let up = stack.compose(&["up", "--detach"]);
    assert!(
        up.status.success(),
        "podman-compose up: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );

    for service in SERVICES {
        let container = stack.container(service);
        assert!(!container.is_empty(), "no container for {service}");
        eventually(&format!("{service} to be healthy"), PATIENCE, async || {
            let running = podman.inspect(&container, "{{.State.Running}}");
            assert_eq!(running, "true", "{service} is not running");
            let check = podman.output(&["healthcheck", "run", &container]);
            check.status.success()
        })
        .await;
    }

    let browser = Browser::new(format!("http://127.0.0.1:{gateway_port}").parse().unwrap());
    let landing = browser.send(browser.get("/")).await;
    assert_eq!(landing.status(), StatusCode::OK, "the app's public page");
    browser.login().await;
    let employees = browser.send(browser.get("/pleo/v2/employees")).await;
    assert_eq!(employees.status(), StatusCode::OK);
    let page = browser.send(browser.get("/app")).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("urn:pleo:company:"));
}
