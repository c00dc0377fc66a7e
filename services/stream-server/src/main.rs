//! The `stream-server` binary: load configuration, start logging, serve.

use clap::Parser;
use stream_server::config::{Cli, Config};
use stream_server::{server, shutdown, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match server::bind(&config) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let scheme = if config.tls.cert_path.is_some() {
        "https"
    } else {
        "http"
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(
            storage = %config.storage.mode,
            "listening on {scheme}://{addr}{} (storage mode: {})",
            config.http.stream_base_path,
            config.storage.mode
        ),
        Err(e) => tracing::warn!("listening, but the local address is unknown: {e}"),
    }
    match server::serve(config, listener, shutdown::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
