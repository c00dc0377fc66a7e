//! The `stream-server` binary: load configuration, start logging, serve.

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use service_common::healthcheck;
use stream_server::config::{Cli, Command, Config};
use stream_server::{server, shutdown};

/// Every request allocates a little across threads (buffers handed from the
/// connection to storage and back); mimalloc's per-thread free lists make
/// that markedly cheaper than the system allocator's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.command == Some(Command::Healthcheck) {
        return check_health(&cli).await;
    }
    let telemetry = service_common::telemetry::init("stream-server", "stream_server=info");
    opt_out_of_transparent_huge_pages();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            telemetry.shutdown(Config::default().shutdown_grace());
            return std::process::ExitCode::FAILURE;
        }
    };
    let grace = config.shutdown_grace();
    let result = match server::bind(&config) {
        Ok(listener) => server::serve(config, listener, shutdown::signal()).await,
        Err(e) => Err(e),
    };
    // Spans of the last requests are exported before the process ends.
    telemetry.shutdown(grace);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Probes the running server; no telemetry, so a health check every few
/// seconds exports nothing.
async fn check_health(cli: &Cli) -> std::process::ExitCode {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let tls = config.tls.cert_path.is_some();
    healthcheck::command(config.server.host, config.server.port, tls).await
}

/// Turns transparent huge pages off for this process, unless the operator
/// chose through mimalloc's own `MIMALLOC_ALLOW_THP`.
///
/// mimalloc asks for huge pages on its arenas, so stored data grows 2 MiB
/// at a time, each zeroed inside the page fault of the request that
/// touched it first; in a VM that returns free memory to its host, every
/// such page is also a fault on the host. Appends measured 0.6-1 us less
/// CPU each without them, and catch-up reads no slower (the same advice
/// databases such as Redis give for THP).
fn opt_out_of_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "transparent huge pages left as the system has them");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_opts_out_of_transparent_huge_pages() {
        assert!(
            std::env::var_os("MIMALLOC_ALLOW_THP").is_none(),
            "this test needs MIMALLOC_ALLOW_THP unset"
        );
        super::opt_out_of_transparent_huge_pages();
        // Linux 5.0 and later report the flag in status.
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .expect("a THP_enabled line");
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}
