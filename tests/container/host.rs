//! What runs on the host beside the container, as it runs beside the pod: the mock Pleo
//! (`pleo-gateway mock-pleo`) and the internal app (`pleo-gateway demo-app`), each the real
//! subcommand on a port of its own choosing.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use crate::support::{CLIENT_ID, process::Watchdog};

/// A `pleo-gateway` subcommand running on the host; killed when dropped.
pub struct HostProcess {
    child: Child,
    /// The URL it printed.
    pub url: String,
    _watchdog: Watchdog,
}

impl HostProcess {
    /// `pleo-gateway mock-pleo` on a free port, auto-approving, registering this client
    /// with its secret and the gateway's callback.
    pub fn mock_pleo(client_secret: &str, gateway_port: u16) -> Self {
        Self::start(
            &[
                "mock-pleo",
                "--port",
                "0",
                "--auto-approve",
                "--client-id",
                CLIENT_ID,
                "--client-secret",
                client_secret,
                "--redirect-uri",
                &format!("http://127.0.0.1:{gateway_port}/auth/callback"),
            ],
            "mock Pleo listening on ",
        )
    }

    /// `pleo-gateway demo-app` on a free port.
    pub fn demo_app() -> Self {
        Self::start(&["demo-app", "--port", "0"], "demo app listening on ")
    }

    /// Starts it and reads its stdout up to the line announcing its URL (it prints that line
    /// once listening); the rest of its output is drained so it never blocks on a full pipe.
    fn start(args: &[&str], announcement: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pleo-gateway"))
            .args(args)
            .env_clear()
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let watchdog = Watchdog::new(child.id(), None);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix(announcement).map(str::to_owned))
            .unwrap_or_else(|| panic!("pleo-gateway {args:?} exited before listening"));
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            url,
            _watchdog: watchdog,
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
