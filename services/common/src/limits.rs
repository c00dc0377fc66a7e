//! What a client may take of a service: how long it may spend sending a
//! request head or body, how large the head may be, and how many
//! connections may be open at once. Both services read these settings from
//! their `server` section (`DS_SERVER__*`, `GW_SERVER__*`) and check them with
//! the same rules.
//!
//! Only requests are bounded: a long-poll waiting for data or an SSE
//! response streaming for minutes is the server's side of the exchange and
//! is never cut by any of these.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The smallest `max_header_bytes`: hyper's HTTP/1 read buffer cannot be
/// made smaller than its initial size (it panics if asked to).
pub const MIN_HEADER_BYTES: usize = 8192;

/// Limits on clients, flattened into each service's `server` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionLimits {
    /// Seconds a connection may take from being accepted (TLS handshake
    /// included) to a complete request head, and an HTTP/1.1 connection
    /// from the end of one response to the next complete head, so it is
    /// also how long an idle keep-alive connection stays open. An HTTP/2
    /// connection with no request open for this long is sent `GOAWAY`.
    pub header_read_timeout_secs: f64,
    /// Largest request head (request line and headers; an HTTP/2 header
    /// list) in bytes, at least [`MIN_HEADER_BYTES`]. Larger heads get `431`.
    pub max_header_bytes: usize,
    /// Seconds a request body may go without sending anything before the
    /// request fails with `408`.
    pub body_idle_timeout_secs: f64,
    /// Seconds any request body may take, to which each
    /// `body_min_rate_bytes` received adds a second; past it the request
    /// fails with `408`. A body trickling in slower than the rate runs out
    /// of time; an honest upload at a decent rate never does.
    pub body_timeout_secs: f64,
    /// Bytes per second a request body must average to earn more time than
    /// `body_timeout_secs`.
    pub body_min_rate_bytes: u64,
    /// Connections served at once. One more waits briefly for a free slot
    /// and is closed if none frees up.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            // Long enough for a TLS handshake and a head over a slow mobile
            // link; as an idle keep-alive period it is Apache's order, not
            // nginx's 75 s.
            header_read_timeout_secs: 10.0,
            // nginx's limit for a head (four 8 KiB buffers): room for
            // cookies a browser sends, a path at its longest percent-encoded,
            // a token, and no room for a client to park much memory.
            max_header_bytes: 32 * 1024,
            body_idle_timeout_secs: 20.0,
            body_timeout_secs: 30.0,
            // Far below any working link; a client sending less is not
            // uploading but holding a connection.
            body_min_rate_bytes: 1024,
            // stream-server's: at least the 10,000 SSE subscribers the
            // project benchmarks, with room for writers and a gateway's
            // connections, and within common open-file limits.
            max_connections: 16_384,
        }
    }
}

/// A setting out of range: `key` is its name in the configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} {reason}")]
pub struct LimitError {
    pub key: &'static str,
    pub reason: String,
}

impl ConnectionLimits {
    /// The `--help` lines of these settings for a service whose variables
    /// start with `prefix` (`DS`, `GW`), names padded to `width`, with
    /// `self`'s values as the defaults.
    pub fn help(&self, prefix: &str, width: usize) -> String {
        let lines = [
            (
                "HEADER_READ_TIMEOUT_SECS",
                "accept to request head, and keep-alive idle, at most",
                self.header_read_timeout_secs.to_string(),
            ),
            (
                "MAX_HEADER_BYTES",
                "larger request heads get 431, at least 8192",
                self.max_header_bytes.to_string(),
            ),
            (
                "BODY_IDLE_TIMEOUT_SECS",
                "a request body silent this long gets 408",
                self.body_idle_timeout_secs.to_string(),
            ),
            (
                "BODY_TIMEOUT_SECS",
                "time any request body gets before 408 ...",
                self.body_timeout_secs.to_string(),
            ),
            (
                "BODY_MIN_RATE_BYTES",
                "... plus a second per this many bytes received",
                self.body_min_rate_bytes.to_string(),
            ),
            (
                "MAX_CONNECTIONS",
                "connections served at once; more wait 1 s, then close",
                self.max_connections.to_string(),
            ),
        ];
        lines
            .iter()
            .map(|(name, meaning, default)| {
                let variable = format!("{prefix}_SERVER__{name}");
                format!("  {variable:<width$} {meaning} [{default}]\n")
            })
            .collect()
    }

    /// The defaults with another number of connections.
    pub fn with_max_connections(max_connections: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            ..ConnectionLimits::default()
        }
    }

    /// Refuses zero, negative and out-of-range values, naming the key as it
    /// appears in the `server` section.
    pub fn validate(&self) -> Result<(), LimitError> {
        let seconds = |key, secs: f64| {
            crate::settings::positive_seconds(secs).map_err(|reason| LimitError { key, reason })
        };
        seconds(
            "server.header_read_timeout_secs",
            self.header_read_timeout_secs,
        )?;
        seconds("server.body_idle_timeout_secs", self.body_idle_timeout_secs)?;
        seconds("server.body_timeout_secs", self.body_timeout_secs)?;
        if self.max_header_bytes < MIN_HEADER_BYTES || u32::try_from(self.max_header_bytes).is_err()
        {
            return Err(LimitError {
                key: "server.max_header_bytes",
                reason: format!(
                    "must be between {MIN_HEADER_BYTES} and {}, got {}",
                    u32::MAX,
                    self.max_header_bytes
                ),
            });
        }
        if self.body_min_rate_bytes == 0 {
            return Err(LimitError {
                key: "server.body_min_rate_bytes",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_connections == 0 {
            return Err(LimitError {
                key: "server.max_connections",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_read_timeout_secs)
    }

    /// What each request body is held to.
    pub fn body(&self) -> crate::body::BodyLimits {
        crate::body::BodyLimits {
            idle: Duration::from_secs_f64(self.body_idle_timeout_secs),
            base: Duration::from_secs_f64(self.body_timeout_secs),
            min_rate: self.body_min_rate_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ConnectionLimits::default().validate().expect("defaults");
        assert_eq!(ConnectionLimits::with_max_connections(5).max_connections, 5);
    }

    #[test]
    fn zero_and_negative_values_name_their_key() {
        type Spoil = fn(&mut ConnectionLimits);
        let cases: [(&str, Spoil); 8] = [
            ("server.header_read_timeout_secs", |l| {
                l.header_read_timeout_secs = 0.0
            }),
            ("server.header_read_timeout_secs", |l| {
                l.header_read_timeout_secs = -1.0
            }),
            ("server.body_idle_timeout_secs", |l| {
                l.body_idle_timeout_secs = 0.0
            }),
            ("server.body_timeout_secs", |l| l.body_timeout_secs = -0.5),
            ("server.max_header_bytes", |l| l.max_header_bytes = 0),
            ("server.max_header_bytes", |l| l.max_header_bytes = 8191),
            ("server.body_min_rate_bytes", |l| l.body_min_rate_bytes = 0),
            ("server.max_connections", |l| l.max_connections = 0),
        ];
        for (key, spoil) in cases {
            let mut limits = ConnectionLimits::default();
            spoil(&mut limits);
            let error = limits.validate().expect_err(key);
            assert_eq!(error.key, key);
            assert!(error.to_string().starts_with(key), "{error}");
        }
    }
}
