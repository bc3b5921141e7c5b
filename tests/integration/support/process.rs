//! Programs the tests run besides the gateway: checking they are installed, finding them a port,
//! and making sure they end with the test process.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The path of `program` (a path, or a name looked up on `PATH`); panics at once, with the
/// command that installs it, when it is not there — a missing tool is never a timeout.
pub fn require_program(program: &str, apt_packages: &str) -> PathBuf {
    let found = if program.contains('/') {
        Some(PathBuf::from(program)).filter(|path| path.is_file())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
    };
    found.unwrap_or_else(|| panic!("{program} is not installed: apt-get install -y {apt_packages}"))
}

/// A loopback port that is free right now, released for a server to bind. With `with_bus`, so
/// is `port + 10000` (a Redis Cluster node's bus port).
pub fn free_port(with_bus: bool) -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if !with_bus {
            return port;
        }
        if let Some(bus) = port.checked_add(10_000)
            && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// Kills a process (SIGKILL) and removes its directory when this test process is gone, however
/// it ended — a panic, `exit`, Ctrl-C or SIGKILL — because destructors do not always run (never
/// for a `static`, not at all after SIGKILL).
///
/// It is a `sh` whose stdin is a pipe that only this process holds open (Rust opens pipes
/// close-on-exec, so no other child inherits it). It blocks in `read` until end-of-file, which
/// the kernel delivers when this process's end of the pipe is closed — that is, at its exit.
/// It ignores the terminal's signals, so a Ctrl-C to the process group cannot take it down
/// before it has done its job. Dropping the watchdog (normal cleanup, the owner then kills and
/// reaps the process itself) SIGKILLs it first, so it never signals a reaped, reusable pid.
pub struct Watchdog(Child);

impl Watchdog {
    /// Watches `pid`; `dir`, when given, is removed after the kill.
    pub fn new(pid: u32, dir: Option<&Path>) -> Self {
        let script = r#"trap '' INT HUP QUIT TERM
read -r _
kill -KILL "$1" 2>/dev/null
[ -n "$2" ] && rm -rf -- "$2"
exit 0"#;
        let child = Command::new("/bin/sh")
            .args(["-c", script, "pleo-gateway-test-watchdog"])
            .arg(pid.to_string())
            .arg(dir.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a watchdog shell (/bin/sh)");
        Self(child)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_missing_program_fails_at_once_with_its_install_command() {
    let missing = std::panic::catch_unwind(|| require_program("/nonexistent/nginx", "nginx"))
        .expect_err("a missing program panics");
    let message = missing
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert_eq!(
        message,
        "/nonexistent/nginx is not installed: apt-get install -y nginx"
    );
    assert!(require_program("sh", "dash").is_file(), "found on PATH");
}
