//! The test image: `docker/Dockerfile`'s final stage, built `FROM scratch` with the host's
//! release binary and the shared libraries `ldd` lists for it (no base image can be pulled
//! here). Every other line of that stage — user, environment, exposed port, health check,
//! entry point — is used as written, so the Dockerfile stays the one definition of them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, Weak},
    time::SystemTime,
};

use crate::{
    manifest::repo,
    podman::{Janitor, Podman},
    unique,
};

/// Where the binary goes in the build context.
const CONTEXT_BINARY: &str = "pleo-gateway";

/// A built image, removed when the last test using it lets go.
pub struct Image {
    pub tag: String,
    podman: Podman,
    _janitor: Janitor,
}

impl Drop for Image {
    fn drop(&mut self) {
        self.podman.quiet(&["rmi", "--force", &self.tag]);
    }
}

/// The test image, built at most once while any test holds it.
pub fn image(podman: &Podman) -> Arc<Image> {
    static CURRENT: Mutex<Weak<Image>> = Mutex::new(Weak::new());
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = current.upgrade() {
        return image;
    }
    let image = Arc::new(build(podman));
    *current = Arc::downgrade(&image);
    image
}

fn build(podman: &Podman) -> Image {
    let binary = release_binary();
    let context = tempfile::Builder::new()
        .prefix("pleo-gateway-image-")
        .tempdir()
        .unwrap();
    std::fs::copy(&binary, context.path().join(CONTEXT_BINARY)).unwrap();
    let libraries = copy_libraries(&binary, context.path());
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    let containerfile = scratch_stage(&dockerfile, &libraries);
    Image::build(podman, "pleo-gateway-test", context.path(), &containerfile)
}

impl Image {
    /// Builds `containerfile` in `context` as `localhost/<name>:<unique>`.
    pub fn build(podman: &Podman, name: &str, context: &Path, containerfile: &str) -> Self {
        std::fs::write(context.join("Containerfile"), containerfile).unwrap();
        let tag = format!("localhost/{name}:{}", unique());
        let image = Image {
            tag: tag.clone(),
            podman: podman.clone(),
            _janitor: Janitor::new(podman, &["rmi", "--force", &tag]),
        };
        // Docker format: OCI images have no HEALTHCHECK.
        podman.run_ok(&[
            "build",
            "--format",
            "docker",
            "--tag",
            &tag,
            "--file",
            &context.join("Containerfile").to_string_lossy(),
            &context.to_string_lossy(),
        ]);
        image
    }
}

/// `$CARGO_TARGET_DIR/release/pleo-gateway`, built first when missing or older than the
/// sources (CI builds it before `cargo test`).
pub fn release_binary() -> PathBuf {
    // This test binary is <target>/debug/deps/container-<hash>.
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps");
    let binary = target.join("release/pleo-gateway");
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let newest_source = newest_mtime(&repo().join("src"))
        .max(newest_mtime(&repo().join("Cargo.toml")))
        .max(newest_mtime(&repo().join("Cargo.lock")));
    if built.is_none_or(|built| built < newest_source) {
        eprintln!(
            "building the release binary ({}): missing or older than the sources",
            binary.display()
        );
        let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["build", "--release", "--locked", "--bin", "pleo-gateway"])
            .current_dir(repo())
            .env("CARGO_TARGET_DIR", target)
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --release failed");
    }
    binary
}

fn newest_mtime(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).unwrap();
    if !meta.is_dir() {
        return meta.modified().unwrap();
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|entry| newest_mtime(&entry.unwrap().path()))
        .fold(SystemTime::UNIX_EPOCH, SystemTime::max)
}

/// Copies every shared library `ldd` lists for `binary` (and the loader) into `context`,
/// under their absolute paths; returns those paths.
pub fn copy_libraries(binary: &Path, context: &Path) -> Vec<String> {
    let output = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(output.status.success(), "ldd {}", binary.display());
    let libraries = ldd_paths(&String::from_utf8_lossy(&output.stdout));
    assert!(!libraries.is_empty(), "ldd listed no libraries");
    for library in &libraries {
        let target = context.join(library.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        // Follows symlinks: the image gets the file under the name the binary asks for.
        std::fs::copy(library, &target).unwrap();
    }
    libraries
}

/// The absolute paths in `ldd` output (`libc.so.6 => /lib/…/libc.so.6 (0x…)`, `/lib64/ld-…`).
fn ldd_paths(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// The Dockerfile's final stage with `FROM scratch` and the libraries, and the build stage's
/// binary taken from the context. Anything that needs the base image or another stage fails
/// here, so the Dockerfile and this test cannot drift apart silently.
pub fn scratch_stage(dockerfile: &str, libraries: &[String]) -> String {
    let instructions = instructions(dockerfile);
    let last_from = instructions
        .iter()
        .rposition(|line| keyword(line) == "FROM")
        .expect("the Dockerfile has a FROM");
    let mut out = vec!["FROM scratch".to_owned()];
    for library in libraries {
        out.push(format!(
            "COPY {} {library}",
            library.trim_start_matches('/')
        ));
    }
    for line in &instructions[last_from + 1..] {
        match keyword(line).as_str() {
            "LABEL" | "ENV" | "USER" | "EXPOSE" | "HEALTHCHECK" | "ENTRYPOINT" | "CMD"
            | "WORKDIR" | "STOPSIGNAL" => out.push(line.clone()),
            "COPY" => {
                let words: Vec<&str> = line.split_whitespace().collect();
                assert!(
                    words.len() == 4
                        && words[1].starts_with("--from=")
                        && words[2].ends_with("/pleo-gateway"),
                    "the final stage copies only the binary from the build stage: {line}"
                );
                out.push(format!("COPY {CONTEXT_BINARY} {}", words[3]));
            }
            other => panic!(
                "the final stage has {other}, which the scratch test image cannot do: {line}"
            ),
        }
    }
    out.join("\n") + "\n"
}

fn keyword(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// The Dockerfile's instructions, continuation lines joined, comments and blanks dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

#[test]
fn the_test_image_is_the_dockerfile_final_stage_on_scratch() {
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    let stage = scratch_stage(&dockerfile, &["/lib64/ld-linux-x86-64.so.2".to_owned()]);
    let lines: Vec<&str> = stage.lines().collect();
    assert_eq!(lines[0], "FROM scratch");
    assert_eq!(
        lines[1],
        "COPY lib64/ld-linux-x86-64.so.2 /lib64/ld-linux-x86-64.so.2"
    );
    assert!(
        lines.contains(&"COPY pleo-gateway /usr/local/bin/pleo-gateway"),
        "{stage}"
    );
    assert!(lines.contains(&"USER 65532:65532"), "{stage}");
    assert!(
        lines.contains(&r#"ENTRYPOINT ["/usr/local/bin/pleo-gateway"]"#),
        "{stage}"
    );
    assert!(
        stage.contains(r#"CMD ["/usr/local/bin/pleo-gateway", "healthcheck"]"#),
        "{stage}"
    );
    // The image starts from defaults + environment: no baked configuration.
    assert!(!stage.contains("PLEO_GATEWAY_CONFIG"), "{stage}");
    assert!(!stage.contains("gateway.toml"), "{stage}");
}

#[test]
fn ldd_output_gives_absolute_paths() {
    let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
    assert_eq!(
        ldd_paths(ldd),
        [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib64/ld-linux-x86-64.so.2"
        ]
    );
}

#[test]
fn a_final_stage_that_runs_commands_is_refused() {
    let result = std::panic::catch_unwind(|| {
        scratch_stage(
            "FROM a AS build\nFROM b\nRUN apt-get install -y curl\n",
            &[],
        )
    });
    assert!(result.is_err());
}
