//! Server configuration: built-in defaults, then an optional TOML file
//! (`--config`), then `DS_*` environment variables, later layers winning.
//!
//! Environment names join the section and key with a double underscore:
//! `DS_SERVER__PORT=8080` sets `port` in `[server]`. A value that does not
//! parse stops startup with an error naming the key.

use crate::storage::{StorageMode, Tuning, file::MIN_JOURNAL_BYTES};
use clap::Parser;
use serde::{Deserialize, Serialize};
pub use service_common::config::ConfigError;
use service_common::config::positive_seconds;
use service_common::limits::ConnectionLimits;
use service_common::stream_path::PathLimits;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// Command line of the `stream-server` binary.
#[derive(Debug, Parser)]
#[command(
    name = "stream-server",
    version,
    about = "Durable Streams server: append-only byte streams over HTTP",
    after_help = environment_help()
)]
pub struct Cli {
    /// TOML file with settings; `DS_*` environment variables override it.
    #[arg(long, value_name = "FILE", env = "DS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Exit 0 if the server on this machine's configured port is ready
    /// (`GET /readyz`), for container health checks.
    Healthcheck,
}

/// Printed under `--help`: every variable with its default.
fn environment_help() -> String {
    let head = "\
Environment (defaults in brackets):
  DS_SERVER__HOST                          address to listen on [127.0.0.1]
  DS_SERVER__PORT                          port [4437]
  DS_SERVER__LONG_POLL_TIMEOUT_SECS        long-poll wait before 204, fractions allowed [30]
  DS_SERVER__SSE_RECONNECT_INTERVAL_SECS   SSE connections end after this long [60]
  DS_SERVER__SHUTDOWN_GRACE_SECS           wait for in-flight requests on shutdown [10]
";
    let tail = "  DS_HTTP__CORS_ORIGINS                    comma-separated allowed origins, or * [*]
  DS_HTTP__STREAM_BASE_PATH                URL prefix of streams [/v1/stream]
  DS_HTTP__MAX_READ_BYTES                  largest catch-up response body [1048576]
  DS_HTTP__PUBLIC_BASE_URL                 scheme and authority clients reach streams at, for callback and JWKS URLs [from Host]
  DS_HTTP__TRUST_FORWARDED_HEADERS         take X-Forwarded-Host/-Proto as that URL (behind auth-gateway) [false]
  DS_SUBSCRIPTIONS__ALLOW_INSECURE_LOCAL_WEBHOOKS  http:// webhooks to localhost and 127.0.0.x, for development [false]
  DS_SUBSCRIPTIONS__WEBHOOK_TIMEOUT_SECS   longest a webhook delivery may take [10]
  DS_LIMITS__MAX_REQUEST_BODY_BYTES        larger bodies get 413 [67108864]
  DS_LIMITS__MAX_STREAM_BYTES              per-stream data limit, 0 = none [0]
  DS_LIMITS__MAX_MEMORY_BYTES              total in-memory data limit, 0 = none [4294967296]
  DS_LIMITS__MAX_PATH_BYTES                longest stream path [1024]
  DS_LIMITS__MAX_PATH_SEGMENTS             most '/'-separated path segments [32]
  DS_LIMITS__MAX_JSON_DEPTH                deepest JSON nesting a reader parses, at least 1 [64]
  DS_STORAGE__MODE                         memory, file-fast, file-durable, acid (alias redb) [memory]
  DS_STORAGE__DATA_DIR                     directory of persistent modes [./data]
  DS_STORAGE__SYNC_INTERVAL_MS             file-fast: background fdatasync interval [1000]
  DS_STORAGE__JOURNAL_BYTES                file-durable: shared journal size, at least 1048576 [67108864]
  DS_STORAGE__TAIL_CACHE_BYTES             persistent modes: newest bytes per stream kept in memory, 0 = none [65536]
  DS_STORAGE__ACID_SETTLE_ROWS             acid: small appends gathered before they are settled, at least 1 [4096]
  DS_TLS__CERT_PATH, DS_TLS__KEY_PATH      PEM files; both set = HTTPS with HTTP/2
  RUST_LOG                                 log filter [stream_server=info,tower_http=info]";
    format!("{head}{}{tail}", ConnectionLimits::default().help("DS", 40))
}

/// Every setting of the server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub tls: TlsConfig,
    pub subscriptions: SubscriptionsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    pub long_poll_timeout_secs: f64,
    pub sse_reconnect_interval_secs: f64,
    pub shutdown_grace_secs: f64,
    /// Timeouts and sizes for slow or numerous clients, the same keys as
    /// the gateway's (`header_read_timeout_secs`, `max_connections`, ...).
    #[serde(flatten)]
    pub connections: ConnectionLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4437,
            long_poll_timeout_secs: 30.0,
            sse_reconnect_interval_secs: 60.0,
            shutdown_grace_secs: 10.0,
            connections: ConnectionLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    pub cors_origins: String,
    pub stream_base_path: String,
    pub max_read_bytes: usize,
    /// Scheme and authority (`https://streams.example.com`) that clients
    /// reach the streams at: subscription callback and JWKS URLs are built
    /// on it. Unset, each request's `Host` is used.
    pub public_base_url: Option<String>,
    /// Take `X-Forwarded-Host` and `X-Forwarded-Proto` as the public URL;
    /// right only when nothing but a proxy that sets them (auth-gateway)
    /// can reach the server.
    pub trust_forwarded_headers: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: "*".into(),
            stream_base_path: "/v1/stream".into(),
            max_read_bytes: 1024 * 1024,
            public_base_url: None,
            trust_forwarded_headers: false,
        }
    }
}

/// Subscriptions (PROTOCOL §6–7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionsConfig {
    /// Accept `http://` webhook URLs on localhost and 127.0.0.x (§6.2's
    /// development exception); every other private address stays refused.
    pub allow_insecure_local_webhooks: bool,
    pub webhook_timeout_secs: f64,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        SubscriptionsConfig {
            allow_insecure_local_webhooks: false,
            webhook_timeout_secs: 10.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    pub max_request_body_bytes: usize,
    pub max_stream_bytes: u64,
    pub max_memory_bytes: u64,
    pub max_path_bytes: usize,
    pub max_path_segments: usize,
    /// Deepest nesting of arrays and objects in JSON appends, as readers
    /// parse it: the array reads wrap messages in counts as a level. Deeper
    /// bodies get `400`. Kept below the defaults of readers' JSON parsers
    /// (see `protocol::json::DEFAULT_MAX_DEPTH`); at least 1.
    pub max_json_depth: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_body_bytes: 64 * 1024 * 1024,
            max_stream_bytes: 0,
            max_memory_bytes: 4 * 1024 * 1024 * 1024,
            max_path_bytes: PathLimits::default().max_bytes,
            max_path_segments: PathLimits::default().max_segments,
            max_json_depth: crate::protocol::json::DEFAULT_MAX_DEPTH,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub mode: StorageMode,
    pub data_dir: PathBuf,
    pub sync_interval_ms: u64,
    pub journal_bytes: u64,
    pub tail_cache_bytes: usize,
    pub acid_settle_rows: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            mode: StorageMode::Memory,
            data_dir: PathBuf::from("./data"),
            sync_interval_ms: 1000,
            journal_bytes: Tuning::default().journal_bytes,
            tail_cache_bytes: Tuning::default().tail_cache_bytes,
            acid_settle_rows: Tuning::default().acid_settle_rows,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
}

impl Config {
    /// Layers defaults, the optional TOML file and the `DS_*` environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let config: Config = service_common::config::load(file, "DS_", &[])?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        positive_seconds(
            "server.long_poll_timeout_secs",
            self.server.long_poll_timeout_secs,
        )?;
        positive_seconds(
            "server.sse_reconnect_interval_secs",
            self.server.sse_reconnect_interval_secs,
        )?;
        service_common::config::check_serving(
            self.server.shutdown_grace_secs,
            &self.server.connections,
        )?;
        positive_seconds(
            "subscriptions.webhook_timeout_secs",
            self.subscriptions.webhook_timeout_secs,
        )?;
        if let Some(url) = &self.http.public_base_url {
            let parsed = url::Url::parse(url).map_err(|e| ConfigError::Invalid {
                key: "http.public_base_url",
                reason: e.to_string(),
            })?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host().is_none()
                || !matches!(parsed.path(), "" | "/")
                || parsed.query().is_some()
            {
                return Err(ConfigError::Invalid {
                    key: "http.public_base_url",
                    reason: "must be an http or https scheme and authority, without a path".into(),
                });
            }
        }
        service_common::stream_path::validate_base(&self.http.stream_base_path).map_err(|e| {
            ConfigError::Invalid {
                key: "http.stream_base_path",
                reason: e.to_string(),
            }
        })?;
        if self.storage.sync_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "storage.sync_interval_ms",
                reason: "must be at least 1".into(),
            });
        }
        if self.storage.journal_bytes < MIN_JOURNAL_BYTES {
            return Err(ConfigError::Invalid {
                key: "storage.journal_bytes",
                reason: format!(
                    "must be at least {MIN_JOURNAL_BYTES}, got {}",
                    self.storage.journal_bytes
                ),
            });
        }
        if self.storage.acid_settle_rows == 0 {
            return Err(ConfigError::Invalid {
                key: "storage.acid_settle_rows",
                reason: "must be at least 1".into(),
            });
        }
        if self.http.max_read_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "http.max_read_bytes",
                reason: "must be at least 1".into(),
            });
        }
        if self.limits.max_json_depth == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.max_json_depth",
                reason: "must be at least 1".into(),
            });
        }
        if self.tls.cert_path.is_some() != self.tls.key_path.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls",
                reason: "cert_path and key_path must be set together".into(),
            });
        }
        Ok(())
    }

    /// Settings of the persistent storage engines.
    pub fn storage_tuning(&self) -> Tuning {
        Tuning {
            sync_interval: Duration::from_millis(self.storage.sync_interval_ms),
            journal_bytes: self.storage.journal_bytes,
            tail_cache_bytes: self.storage.tail_cache_bytes,
            acid_settle_rows: self.storage.acid_settle_rows,
        }
    }

    pub fn long_poll_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.server.long_poll_timeout_secs)
    }

    pub fn sse_reconnect_interval(&self) -> Duration {
        Duration::from_secs_f64(self.server.sse_reconnect_interval_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.server.shutdown_grace_secs)
    }

    pub fn webhook_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.subscriptions.webhook_timeout_secs)
    }

    /// Allowed CORS origins; `None` means any.
    pub fn cors_origins(&self) -> Option<Vec<String>> {
        service_common::cors::parse_origins(&self.http.cors_origins)
    }
}

#[cfg(test)]
mod tests {
    use super::{Config, ConfigError};

    /// Loads `toml` as the configuration file, over the defaults.
    fn load_toml(name: &str, toml: &str) -> Result<Config, ConfigError> {
        let file = tempfile::Builder::new()
            .prefix(&format!("ds-config-{name}-"))
            .suffix(".toml")
            .tempfile()
            .expect("create the configuration file");
        std::fs::write(file.path(), toml).expect("write the configuration file");
        Config::load(Some(file.path()))
    }

    #[test]
    fn connection_limits_are_read_from_the_server_section_and_checked() {
        let config = load_toml(
            "limits",
            "[server]\nport = 1\nheader_read_timeout_secs = 2.5\nmax_connections = 7\n",
        )
        .expect("load");
        assert_eq!(config.server.port, 1);
        assert_eq!(config.server.connections.header_read_timeout_secs, 2.5);
        assert_eq!(config.server.connections.max_connections, 7);
        assert_eq!(
            config.server.connections.max_header_bytes,
            service_common::limits::ConnectionLimits::default().max_header_bytes,
            "unset keys keep their defaults"
        );
        for (name, line, key) in [
            ("no-conns", "max_connections = 0", "server.max_connections"),
            (
                "neg-body",
                "body_timeout_secs = -1",
                "server.body_timeout_secs",
            ),
            (
                "tiny-head",
                "max_header_bytes = 100",
                "server.max_header_bytes",
            ),
        ] {
            let refused = load_toml(name, &format!("[server]\n{line}\n")).expect_err(line);
            assert!(refused.to_string().contains(key), "{refused}");
        }
        let unparsable =
            load_toml("nan-conns", "[server]\nmax_connections = \"x\"\n").expect_err("parse");
        assert!(
            unparsable.to_string().contains("server.max_connections"),
            "{unparsable}"
        );
    }

    #[test]
    fn the_acid_settle_threshold_is_read_and_must_be_positive() {
        let config = load_toml("settle", "[storage]\nacid_settle_rows = 64\n").expect("load");
        assert_eq!(config.storage_tuning().acid_settle_rows, 64);
        let refused =
            load_toml("no-settle", "[storage]\nacid_settle_rows = 0\n").expect_err("0 is refused");
        assert!(
            refused.to_string().contains("storage.acid_settle_rows"),
            "{refused}"
        );
    }

    #[test]
    fn the_json_depth_limit_is_read_and_must_be_positive() {
        assert_eq!(
            Config::default().limits.max_json_depth,
            crate::protocol::json::DEFAULT_MAX_DEPTH
        );
        let config = load_toml("depth", "[limits]\nmax_json_depth = 8\n").expect("load");
        assert_eq!(config.limits.max_json_depth, 8);
        let refused =
            load_toml("no-depth", "[limits]\nmax_json_depth = 0\n").expect_err("0 is refused");
        assert!(
            refused.to_string().contains("limits.max_json_depth"),
            "{refused}"
        );
    }
}
