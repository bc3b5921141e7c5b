//! Running podman here: as root, with runc, the cgroupfs manager and no default ulimits (crun
//! fails on `setrlimit` or on the hybrid cgroup layout of these machines). Containers and
//! images the tests create are removed when dropped and, through a [`Janitor`], when the test
//! process dies without dropping them.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
};

/// The settings podman needs on these machines; used when `CONTAINERS_CONF` is not set.
const CONTAINERS_CONF: &str = "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n";

/// Set by CI: a container test that cannot run is a failure, not a skip.
const REQUIRE: &str = "PLEO_GATEWAY_REQUIRE_CONTAINER";

/// A podman that can run containers.
#[derive(Clone, Debug)]
pub struct Podman {
    program: PathBuf,
    /// The `containers.conf` it runs with.
    pub conf: PathBuf,
}

impl Podman {
    /// The podman to use, or `None` (after saying why on stderr) when there is none that
    /// works; with `PLEO_GATEWAY_REQUIRE_CONTAINER=1` that is a failure instead.
    pub fn detect(test: &str) -> Option<Self> {
        match Self::find() {
            Ok(podman) => Some(podman),
            Err(why) => {
                let required = std::env::var(REQUIRE).is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "{test}: podman cannot run containers here ({why}), and {REQUIRE}=1 requires it: apt-get install -y podman runc"
                );
                eprintln!(
                    "SKIPPED {test}: podman cannot run containers here ({why}); apt-get install -y podman runc, as root (set {REQUIRE}=1 to make this a failure)"
                );
                None
            }
        }
    }

    fn find() -> Result<Self, String> {
        let found = |name: &str| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        };
        let program = found("podman").ok_or("podman is not installed")?;
        found("runc").ok_or("runc is not installed")?;
        if !crate::pod::is_root() {
            return Err(
                "the test runs podman as root (rootless podman cannot lay out root-owned secrets)"
                    .into(),
            );
        }
        let conf = match std::env::var_os("CONTAINERS_CONF") {
            Some(conf) => PathBuf::from(conf),
            None => {
                let conf = std::env::temp_dir().join("pleo-gateway-test-containers.conf");
                std::fs::write(&conf, CONTAINERS_CONF).map_err(|e| e.to_string())?;
                conf
            }
        };
        let podman = Podman { program, conf };
        let info = podman.output(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]);
        if !info.status.success() {
            return Err(format!(
                "podman info failed: {}",
                String::from_utf8_lossy(&info.stderr).trim()
            ));
        }
        Ok(podman)
    }

    /// `podman --runtime runc <args>`, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "runc"])
            .args(args);
        command
    }

    /// Runs it to the end.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    /// Runs it; panics with its stderr unless it succeeds; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs it and ignores the outcome (clean-up).
    pub fn quiet(&self, args: &[&str]) {
        let _ = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// `podman inspect --format <format> <name>`.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.run_ok(&["inspect", "--format", format, name])
    }
}

/// A container by name, removed (forcibly) when dropped.
pub struct Container {
    pub name: String,
    podman: Podman,
    _janitor: Janitor,
}

impl Container {
    /// Takes charge of the container `name` (created or about to be).
    pub fn named(podman: &Podman, name: String) -> Self {
        let janitor = Janitor::new(podman, &["rm", "--force", "--time", "0", &name]);
        Self {
            name,
            podman: podman.clone(),
            _janitor: janitor,
        }
    }

    /// Its logs, stdout and stderr together.
    pub fn logs(&self) -> String {
        let output = self.podman.output(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.podman.inspect(&self.name, "{{.State.Running}}") == "true"
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- logs of container {} ---\n{}", self.name, self.logs());
        }
        self.podman
            .quiet(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// Runs one podman command when this test process is gone, however it ended (a `sh` blocked
/// reading a pipe only this process holds, as the integration tests' watchdog). Dropping it
/// (normal clean-up has run) ends it without running the command.
pub struct Janitor(Child);

impl Janitor {
    /// Runs `podman <args>`.
    pub fn new(podman: &Podman, args: &[&str]) -> Self {
        Self::script(podman, "exec $PODMAN \"$@\"", args)
    }

    /// Runs a shell script, with `$PODMAN` the podman command and `args` as `$1`….
    pub fn script(podman: &Podman, script: &str, args: &[&str]) -> Self {
        let podman_command = format!("{} --runtime runc", podman.program.display());
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("trap '' INT HUP QUIT TERM; read -r _; {script}"))
            .arg("janitor")
            .args(args)
            .env("PODMAN", podman_command)
            .env("CONTAINERS_CONF", &podman.conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a janitor shell (/bin/sh)");
        Self(child)
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
