//! TLS: with `tls.cert_path` and `tls.key_path` set the server speaks HTTPS,
//! offers HTTP/2 by ALPN, and still serves HTTP/1.1 clients; a handshake
//! is held to the header-read timeout.

use rustls::pki_types::ServerName;
use std::net::TcpListener;
use std::sync::Arc;
use stream_server::config::Config;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct TlsServer {
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: TempDir,
}

async fn start_tls_server(name: &str) -> TlsServer {
    start_tls_server_with(name, |_| {}).await
}

async fn start_tls_server_with(name: &str, configure: impl FnOnce(&mut Config)) -> TlsServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("generate a self-signed certificate");
    let dir = tempfile::Builder::new()
        .prefix(&format!("ds-tls-{name}-"))
        .tempdir()
        .expect("create temp dir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");

    let mut config = Config::default();
    config.tls.cert_path = Some(cert_path);
    config.tls.key_path = Some(key_path);
    configure(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(stream_server::server::serve(config, listener, async move {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.cert.der().clone())
        .expect("trust the test certificate");
    TlsServer {
        addr,
        roots,
        stop: Some(stop),
        _dir: dir,
    }
}

impl TlsServer {
    /// Completes a TLS handshake offering `alpn`, retrying while the server starts.
    async fn connect(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut client = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").expect("server name");
        let mut last_error = String::new();
        for _ in 0..50 {
            match TcpStream::connect(self.addr).await {
                Ok(tcp) => match connector.connect(name.clone(), tcp).await {
                    Ok(tls) => return tls,
                    Err(e) => last_error = format!("handshake: {e}"),
                },
                Err(e) => last_error = format!("connect: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "TLS server at {} never accepted a handshake ({last_error})",
            self.addr
        );
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tokio::test]
async fn negotiates_http2_by_alpn() {
    let server = start_tls_server("alpn").await;
    let tls = server.connect(&[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn serves_http1_requests_over_tls() {
    let server = start_tls_server("http1").await;
    let mut tls = server.connect(&[b"http/1.1"]).await;
    tls.write_all(
        b"PUT /v1/stream/tls-check HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .expect("send request");
    let mut response = String::new();
    tls.read_to_string(&mut response)
        .await
        .expect("read response");
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(
        response.contains("location: https://localhost/v1/stream/tls-check"),
        "Location must use the https scheme: {response}"
    );
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_closed_in_time() {
    let timeout = std::time::Duration::from_secs(1);
    let server = start_tls_server_with("stalled", |c| {
        c.server.connections.header_read_timeout_secs = 1.0;
    })
    .await;
    // A working handshake first, so the server is known to be up.
    drop(server.connect(&[b"http/1.1"]).await);
    for partial in [
        &b""[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
    ] {
        let started = std::time::Instant::now();
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        // Nothing, or the start of a ClientHello that never ends.
        tcp.write_all(partial).await.expect("send");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(timeout * 3, tcp.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the stalled handshake is still open after {:?}",
            timeout * 3
        );
        let lived = started.elapsed();
        assert!(lived >= timeout * 9 / 10, "closed early: {lived:?}");
    }
}
