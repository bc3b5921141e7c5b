//! `pleo-gateway healthcheck`: asks the gateway running next to it whether it is healthy, for
//! container health checks (the Dockerfile's `HEALTHCHECK`, the compose file's `healthcheck`).
//! The image has no shell and no curl, so the binary probes itself: `GET /healthz` (or
//! `/readyz` with `--ready`) on the configured `server.listen` port over loopback, exit 0 on a
//! 200 and 1 on anything else, within a short timeout.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use url::Url;

use crate::config::Config;

/// What to probe.
#[derive(Clone, Debug)]
pub struct Probe {
    /// An explicit URL; otherwise the configured listener's.
    pub url: Option<Url>,
    /// `/readyz` instead of `/healthz` on the configured listener.
    pub ready: bool,
    /// Bound on the whole probe.
    pub timeout: Duration,
}

/// Runs the probe and reports on stderr: exit 0 when healthy, 1 otherwise.
pub async fn run(config: Option<&Path>, probe: Probe) -> ExitCode {
    let url = match probe.url {
        Some(url) => url.to_string(),
        None => match Config::load(config) {
            Ok(config) => local_url(config.server.listen, probe.ready),
            Err(e) => {
                eprintln!(
                    "healthcheck: the configuration does not load, so nothing serves: {e}\n\
                     (a gateway started with --config FILE: set PLEO_GATEWAY_CONFIG=FILE \
                     instead, so the health check reads the same file, or pass --url)"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    match check(&url, probe.timeout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("healthcheck: {url}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The URL of the gateway listening on `listen`, as seen from inside its own network
/// namespace: a wildcard address is reached over loopback.
pub fn local_url(listen: SocketAddr, ready: bool) -> String {
    let host = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    format!("http://{}{path}", SocketAddr::new(host, listen.port()))
}

/// `GET url`: `Ok` on 200; otherwise what went wrong, in words.
pub async fn check(url: &str, timeout: Duration) -> Result<(), String> {
    // No proxy: an HTTP_PROXY in the container's environment must not route a loopback probe.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let response = client.get(url).send().await.map_err(|e| {
        if e.is_timeout() {
            format!("no answer within {timeout:?}")
        } else {
            // reqwest's own message names only the URL; the reason is in its causes.
            format!("cannot connect: {}", crate::error::chain(&e))
        }
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::OK {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    Err(format!("answered {status}: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_probed_over_loopback() {
        let url = |listen: &str, ready| local_url(listen.parse().unwrap(), ready);
        assert_eq!(url("0.0.0.0:8080", false), "http://127.0.0.1:8080/healthz");
        assert_eq!(url("[::]:8081", true), "http://[::1]:8081/readyz");
        assert_eq!(
            url("127.0.0.1:9000", false),
            "http://127.0.0.1:9000/healthz"
        );
        assert_eq!(url("10.1.2.3:8080", false), "http://10.1.2.3:8080/healthz");
    }
}
