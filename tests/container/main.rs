//! The container is the product: these tests build the image and run it as `deploy/kubernetes`
//! runs the sidecar, and bring up `deploy/docker-compose.yml`.
//!
//! No base image can be pulled on the CI machines, so the image is `docker/Dockerfile`'s final
//! stage on `FROM scratch` with the host's release binary and its shared libraries
//! ([`image`]). Podman runs it as root with runc and the cgroupfs manager ([`podman`]). Where
//! podman cannot run, the podman tests say so on stderr and skip — unless
//! `PLEO_GATEWAY_REQUIRE_CONTAINER=1` (CI sets it), which makes that a failure. The pod's view
//! without a container ([`pod_view`]) and the manifest and Dockerfile readers run everywhere.
//!
//! Run them alone with `cargo test --test container` (as root; see the README's Operations
//! section).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../integration/support.rs"]
#[allow(dead_code, unused_imports, unused_macros)]
mod support;

mod compose;
mod host;
mod image;
mod manifest;
mod pod;
mod pod_view;
mod podman;
mod sidecar;

use std::sync::atomic::{AtomicU64, Ordering};

/// A name part no other run or test of this run uses: the process id, a counter, the time.
pub fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `PLEO_GATEWAY__…` overrides a gateway on the host network needs on top of the
/// ConfigMap's file, and nothing else: its listeners on loopback ports of this host, the mock
/// Pleo in place of Pleo (so `staging`: the mock is not production, and `public_url` is plain
/// http), the mock's client id, and the app when there is one.
pub fn host_env(
    port: u16,
    metrics_port: Option<u16>,
    mock_url: &str,
    app_url: Option<&str>,
) -> Vec<(String, String)> {
    let metrics = metrics_port.map_or("off".to_owned(), |port| format!("127.0.0.1:{port}"));
    let mut env = vec![
        ("SERVER__LISTEN", format!("127.0.0.1:{port}")),
        ("SERVER__PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("SERVER__METRICS_LISTEN", metrics),
        ("PLEO__ENVIRONMENT", "staging".to_owned()),
        ("PLEO__AUTH_URL", mock_url.to_owned()),
        ("PLEO__API_URL", mock_url.to_owned()),
        ("PLEO__CLIENT_ID", support::CLIENT_ID.to_owned()),
    ];
    if let Some(app) = app_url {
        env.push(("PROXY__UPSTREAM", app.to_owned()));
    }
    env.into_iter()
        .map(|(key, value)| (format!("PLEO_GATEWAY__{key}"), value))
        .collect()
}
