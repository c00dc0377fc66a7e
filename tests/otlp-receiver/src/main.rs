//! `otlp-receiver`: the test OTLP receiver as a process, listening on
//! every address at the collector's ports (4317 gRPC, 4318 HTTP; both
//! serve both) so that it can stand in for the collector. What it received
//! is at `GET /received/spans` and `GET /received/metrics`.
//!
//!   otlp-receiver [PORT...]      # default: 4317 4318

use std::sync::Arc;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let ports: Vec<u16> = match std::env::args().skip(1).map(|p| p.parse()).collect() {
        Ok(ports) => ports,
        Err(e) => {
            eprintln!("usage: otlp-receiver [PORT...]: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let ports = if ports.is_empty() {
        vec![4317, 4318]
    } else {
        ports
    };
    let received = Arc::new(otlp_receiver::Received::default());
    let mut servers = tokio::task::JoinSet::new();
    for port in ports {
        let listener = match TcpListener::bind(("0.0.0.0", port)).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("cannot listen on port {port}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        eprintln!("otlp-receiver listening on 0.0.0.0:{port}");
        servers.spawn(otlp_receiver::serve(listener, received.clone()));
    }
    // Runs until stopped; a server that fails ends the process.
    if let Some(Ok(Err(e))) = servers.join_next().await {
        eprintln!("otlp-receiver: {e}");
    }
    std::process::ExitCode::FAILURE
}
