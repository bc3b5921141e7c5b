//! `pleo-gateway`: parse the command line, load configuration, start what was asked for.

use std::process::ExitCode;

use clap::Parser;
use pleo_gateway::{
    app,
    cli::{Cli, Command},
    config::Config,
    demo, healthcheck,
    mock_pleo::{MockClient, MockPleo, MockPleoConfig},
    shutdown, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::install_crypto_provider();
    match cli.command {
        Some(Command::CheckConfig) => check_config(&cli),
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
            telemetry::init_tracing();
            report(serve(&cli).await)
        }
    }
}

fn check_config(cli: &Cli) -> ExitCode {
    match Config::load(cli.config.as_deref()) {
        Ok(config) => {
            println!("{}", config.redacted_toml());
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: &Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listen = config.server.listen;
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
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(pleo_gateway::telemetry::render_metrics),
        );
        tokio::spawn(pleo_gateway::server::serve(
            metrics_listener,
            router,
            pleo_gateway::server::ServeOptions::default(),
            shutdown.closing(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (server.listen): {e}"))?;
    tracing::info!(address = %listener.local_addr()?, "pleo-gateway listening");
    pleo_gateway::server::serve(listener, app::app(state), options, shutdown.closing()).await?;
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
