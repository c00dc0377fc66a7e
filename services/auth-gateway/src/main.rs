//! The `auth-gateway` binary: load configuration, then serve or run an
//! administrative command.

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use auth_gateway::cli::{self, Cli, Command};
use auth_gateway::config::Config;
use auth_gateway::server;
use clap::Parser;
use service_common::{healthcheck, shutdown};
use std::process::ExitCode;

/// The proxy allocates a little per request on several threads; mimalloc's
/// per-thread free lists make that cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck) = cli.command {
        return check_health(&cli).await;
    }
    // Logs go to stderr: stdout is for command output (`TOKEN=$(...)`).
    let telemetry = service_common::telemetry::init("auth-gateway", "auth_gateway=info");
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            telemetry.shutdown(Config::default().shutdown_grace());
            return ExitCode::FAILURE;
        }
    };
    let grace = config.shutdown_grace();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        command => cli::run(&config, command).await.map_err(|e| e.to_string()),
    };
    telemetry.shutdown(grace);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Probes the running gateway; no telemetry, so a health check every few
/// seconds exports nothing.
async fn check_health(cli: &Cli) -> ExitCode {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    healthcheck::command(config.server.host, config.server.port, false).await
}

async fn serve(config: Config) -> Result<(), String> {
    let listener = server::bind(&config).await.map_err(|e| e.to_string())?;
    server::serve(config, listener, shutdown::signal())
        .await
        .map_err(|e| e.to_string())
}
