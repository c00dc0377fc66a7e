//! The `stream-server` binary: load configuration, start logging, serve.

use clap::Parser;
use stream_server::config::{Cli, Config};
use stream_server::{server, shutdown, telemetry};

/// Every request allocates a little across threads (buffers handed from the
/// connection to storage and back); mimalloc's per-thread free lists make
/// that markedly cheaper than the system allocator's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    match server::serve(config, listener, shutdown::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
