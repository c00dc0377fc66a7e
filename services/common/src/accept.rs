//! What both services do to an accepted connection before speaking HTTP
//! on it.

use tokio::net::TcpStream;

/// Readies an accepted connection: `TCP_NODELAY` on, so small writes (an
/// SSE event, a long-poll answer, a short response) leave at once. With
/// Nagle's algorithm a write waits while an earlier one is unacknowledged,
/// and a client delaying its acknowledgement (tens of milliseconds is
/// common) holds up the next live event by as much. A socket that refuses
/// the option is served anyway.
pub fn prepare(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

#[cfg(test)]
mod tests {
    use super::prepare;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let ((accepted, _), _client) = tokio::try_join!(listener.accept(), client).unwrap();
        assert!(!accepted.nodelay().unwrap(), "the default this overrides");
        prepare(&accepted);
        assert!(accepted.nodelay().unwrap());
    }
}
