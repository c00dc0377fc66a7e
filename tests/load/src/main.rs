//! The `ds-load` binary: parses the command line and runs it; errors are
//! printed with their causes and end the process with status 1.

// Nothing outside tests may panic on a missing value.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use ds_load::cli::{Cli, execute};
use std::process::ExitCode;

/// The load generator shares the machine with the server it measures: the
/// cheaper its own allocations, the more of the CPU the server gets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ds-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}
