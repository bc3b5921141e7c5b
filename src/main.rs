//! `pleo-gateway`: parse the command line, load configuration, start what was asked for.

use std::process::ExitCode;

use clap::Parser;
use pleo_gateway::{
    app,
    cli::{Cli, Command, GrantsAction},
    config::Config,
    demo, healthcheck,
    mock_pleo::{MockClient, MockPleo, MockPleoConfig},
    shutdown, telemetry, workers,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::install_crypto_provider();
    match cli.command {
        Some(Command::CheckConfig) => check_config(&cli),
        Some(Command::Grants { action }) => report(grants(cli.config.as_deref(), action).await),
        Some(Command::Healthcheck {
            ready,
            url,
            timeout,
        }) => {
            let probe = healthcheck::Probe {
                url,
                ready,
                timeout,
            };
            healthcheck::run(cli.config.as_deref(), probe).await
        }
        Some(Command::DemoApp { port }) => {
            telemetry::init_tracing();
            report(demo::run_app(port, shutdown::signal()).await)
        }
        Some(Command::Demo { port }) => {
            telemetry::init_tracing();
            report(demo::run(port, shutdown::signal()).await)
        }
        Some(Command::MockPleo {
            port,
            client_id,
            client_secret,
            public_client,
            redirect_uri,
            access_token_ttl,
            auto_approve,
        }) => {
            telemetry::init_tracing();
            let config = MockPleoConfig {
                clients: vec![MockClient {
                    client_id,
                    client_secret: (!public_client).then_some(client_secret),
                    redirect_uris: redirect_uri,
                }],
                access_token_ttl,
                auto_approve,
                ..MockPleoConfig::default()
            };
            report(serve_mock(port, config).await)
        }
        None => {
            let telemetry = match telemetry::init() {
                Ok(telemetry) => telemetry,
                Err(e) => return report(Err(e)),
            };
            let result = serve(&cli).await;
            // The spans of the last requests go out before the process does.
            telemetry.shutdown().await;
            report(result)
        }
    }
}

fn check_config(cli: &Cli) -> ExitCode {
    match Config::load(cli.config.as_deref()) {
        Ok(config) => {
            println!("{}", config.redacted_toml());
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn grants(file: Option<&std::path::Path>, action: GrantsAction) -> anyhow::Result<()> {
    let config = Config::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = std::io::stdout();
    match action {
        GrantsAction::List => pleo_gateway::grants::admin::list(&config, &mut out).await,
        GrantsAction::Revoke { subject } => {
            pleo_gateway::grants::admin::revoke(&config, &subject, &mut out).await
        }
    }
}

async fn serve(cli: &Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listen = config.server.listen;
    let config_workers = config.server.workers;
    let options = pleo_gateway::server::ServeOptions::from_config(&config.server);
    let store = app::open_store(&config).await?;
    let state = app::AppState::new(config, store)?;
    // Before any listener opens, so a signal is never missed.
    let shutdown =
        shutdown::Shutdown::start(state.readiness.clone(), state.config.server.shutdown_delay);
    if let Some(metrics_addr) = state.config.server.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {metrics_addr} for /metrics (server.metrics_listen; \"off\" disables it): {e}"
                )
            })?;
        tracing::info!(address = %metrics_addr, "metrics listening");
        // Histogram samples wait, about 8 bytes each, until they are folded into buckets. Every
        // half second: at 80,000 requests/s every 5 s held 6–7 MiB of samples, most of the peak
        // RSS a load test saw beyond the connections' own memory.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(telemetry::metrics::UPKEEP_EVERY);
            loop {
                tick.tick().await;
                telemetry::metrics::upkeep();
            }
        });
        let router =
            axum::Router::new().route("/metrics", axum::routing::get(telemetry::render_metrics));
        tokio::spawn(pleo_gateway::server::serve(
            metrics_listener,
            router,
            pleo_gateway::server::ServeOptions::default(),
            shutdown.closing(),
        ));
    }
    if let Some(internal_addr) = state.config.server.internal_listen {
        let internal_listener = tokio::net::TcpListener::bind(internal_addr)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {internal_addr} for the app's server side (server.internal_listen; \"off\" disables it): {e}"
                )
            })?;
        tracing::info!(address = %internal_addr, "internal listener (the app's server side) listening");
        tokio::spawn(pleo_gateway::server::serve(
            internal_listener,
            pleo_gateway::internal::router(state.clone()),
            options,
            // Like the main listener: open through shutdown_delay, so the app's server side can
            // finish what its requests started while the pod is taken out of the endpoints.
            shutdown.closing(),
        ));
    }
    // Memory a burst took goes back to the system once it is over (see memory.rs).
    tokio::spawn(pleo_gateway::memory::release_after_bursts(
        pleo_gateway::memory::CHECK_EVERY,
        pleo_gateway::upstream::POOL_IDLE_TIMEOUT.max(pleo_gateway::pleo_api::POOL_IDLE_TIMEOUT),
    ));
    let workers = workers::worker_count(config_workers);
    let listeners = workers::bind(listen, workers)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (server.listen): {e}"))?;
    let address = listeners[0].local_addr()?;
    tracing::info!(%address, workers, "pleo-gateway listening");
    workers::serve_workers(
        listeners,
        move |_| Ok(app::app(state.with_own_pools()?)),
        options,
        || shutdown.closing(),
    )
    .await?;
    tracing::info!("pleo-gateway stopped");
    Ok(())
}

async fn serve_mock(port: u16, config: MockPleoConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let address = listener.local_addr()?;
    println!("mock Pleo listening on http://{address}");
    MockPleo::new(config)
        .serve(listener, shutdown::signal())
        .await?;
    Ok(())
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pleo-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
