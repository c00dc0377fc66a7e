//! The `healthcheck` command of both binaries, for container health checks
//! (Docker's `HEALTHCHECK`, compose, Kubernetes `exec` probes) in images
//! that carry no curl: one HTTP/1.1 `GET` of the service's readiness path
//! on its own port, bounded in time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a probe may take in all.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("reading the answer from {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}{path} answered {status:?}")]
    NotReady {
        addr: SocketAddr,
        path: String,
        status: String,
    },
}

/// The address to probe a service listening on `host:port` at: its own
/// loopback when it listens on every address.
pub fn local_addr(host: IpAddr, port: u16) -> SocketAddr {
    let host = match host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(host, port)
}

/// The `healthcheck` command: probes `/readyz` of the service configured
/// to listen on `host:port` (speaking only TLS if `tls`), says why on
/// stderr if it is not ready, and exits accordingly.
pub async fn command(host: IpAddr, port: u16, tls: bool) -> ExitCode {
    match probe(local_addr(host, port), "/readyz", tls).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("not ready: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `GET path` to `addr` and succeeds on a `2xx` answer. With `tls`
/// the service speaks only TLS, and a completed TCP connection is taken as
/// the answer (the probe carries no certificate to trust).
pub async fn probe(addr: SocketAddr, path: &str, tls: bool) -> Result<(), ProbeError> {
    tokio::time::timeout(TIMEOUT, exchange(addr, path, tls))
        .await
        .map_err(|_| ProbeError::Timeout { addr })?
}

async fn exchange(addr: SocketAddr, path: &str, tls: bool) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    if tls {
        return Ok(());
    }
    let io = |source| ProbeError::Io { addr, source };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    // The status line is all that matters; bounded, like every input.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() && !head[..read].contains(&b'\n') {
        let n = stream.read(&mut head[read..]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line.lines().next().unwrap_or_default().trim().to_owned();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if status.starts_with("HTTP/1.") && code.len() == 3 && code.starts_with('2') {
        Ok(())
    } else {
        Err(ProbeError::NotReady {
            addr,
            path: path.to_owned(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server answering every connection with `answer`.
    async fn answering(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_2xx_is_healthy_anything_else_is_not() {
        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nready").await;
        probe(ok, "/readyz", false).await.expect("healthy");
        let down = answering("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let error = probe(down, "/readyz", false).await.expect_err("503");
        assert!(error.to_string().contains("503"), "{error}");
        let garbage = answering("SSH-2.0-OpenSSH\r\n").await;
        probe(garbage, "/readyz", false)
            .await
            .expect_err("not HTTP");
    }

    #[tokio::test]
    async fn nothing_listening_or_a_silent_server_fails_in_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed = listener.local_addr().expect("addr");
        drop(listener);
        assert!(matches!(
            probe(closed, "/readyz", false).await,
            Err(ProbeError::Connect { .. })
        ));

        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let started = std::time::Instant::now();
        assert!(matches!(
            probe(addr, "/readyz", false).await,
            Err(ProbeError::Timeout { .. })
        ));
        assert!(started.elapsed() < TIMEOUT + Duration::from_secs(2));
        // With TLS, accepting the connection is the answer.
        probe(addr, "/readyz", true).await.expect("connected");
        drop(silent);
    }

    #[test]
    fn unspecified_hosts_are_probed_on_loopback() {
        assert_eq!(
            local_addr("0.0.0.0".parse().expect("ip"), 4437),
            "127.0.0.1:4437".parse().expect("addr")
        );
        assert_eq!(
            local_addr("::".parse().expect("ip"), 8080),
            "[::1]:8080".parse().expect("addr")
        );
        assert_eq!(
            local_addr("10.0.0.7".parse().expect("ip"), 1),
            "10.0.0.7:1".parse().expect("addr")
        );
    }
}
