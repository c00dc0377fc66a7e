//! The `auth-gateway` binary: load configuration, then serve or run an
//! administrative command.

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use auth_gateway::cli::{self, Cli, Command};
use auth_gateway::config::Config;
use auth_gateway::server;
use clap::Parser;
use service_common::shutdown;
use std::process::ExitCode;

/// The proxy allocates a little per request on several threads; mimalloc's
/// per-thread free lists make that cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr: stdout is for command output (`TOKEN=$(...)`).
    service_common::telemetry::init("auth_gateway=info,tower_http=info");
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        command => cli::run(&config, command).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let listener = server::bind(&config).await.map_err(|e| e.to_string())?;
    server::serve(config, listener, shutdown::signal())
        .await
        .map_err(|e| e.to_string())
}
