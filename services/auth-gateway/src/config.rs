//! Gateway configuration: built-in defaults, then an optional TOML file
//! (`--config`), then `GW_*` environment variables (and `DATABASE_URL`),
//! later layers winning — the same layering as stream-server's `DS_*`.
//!
//! Environment names join the section and key with a double underscore:
//! `GW_SERVER__PORT=9090` sets `port` in `[server]`. A value that does not
//! parse stops startup with an error naming the key.

use crate::auth::token::{KeyError, TokenKeys};
use serde::{Deserialize, Serialize};
pub use service_common::config::ConfigError;
use service_common::config::positive_seconds;
use service_common::limits::ConnectionLimits;
use service_common::serve::Options;
use service_common::stream_path::PathLimits;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Printed under `auth-gateway --help`: every variable with its default.
pub fn environment_help() -> String {
    let head = "\
Environment (defaults in brackets):
  DATABASE_URL                        Postgres holding the token table (required)
  GW_SERVER__HOST                     address to listen on [127.0.0.1]
  GW_SERVER__PORT                     port [8080]
  GW_SERVER__PUBLIC_URL               public base URL for Location headers [from Host]
  GW_SERVER__SHUTDOWN_GRACE_SECS      wait for in-flight requests on shutdown [10]
";
    let tail =
        "  GW_UPSTREAM__URL                    stream-server to proxy to [http://127.0.0.1:4437]
  GW_UPSTREAM__CONNECT_TIMEOUT_MS     upstream connect timeout [2000]
  GW_UPSTREAM__MAX_IDLE_CONNECTIONS   pooled idle upstream connections [256]
  GW_UPSTREAM__POOL_IDLE_TIMEOUT_SECS pooled upstream connections idle this long close [5]
  GW_JWT__ISSUER                      iss claim issued and required [durable-streams-gateway]
  GW_JWT__AUDIENCE                    aud claim issued and required [durable-streams]
  GW_JWT__ALGORITHM                   EdDSA or HS256 [EdDSA]
  GW_JWT__KEY_FILE                    EdDSA: PKCS#8 PEM file; HS256: secret file
  GW_JWT__KEY                         the same, inline (instead of KEY_FILE)
  GW_AUTH__QUERY_TOKEN                accept ?access_token= on GET/HEAD [false]
  GW_AUTH__CACHE_TTL_SECS             token lookups cached this long [30]
  GW_AUTH__LAST_USED_FLUSH_SECS       last_used_at written this often [10]
  GW_LIMITS__RATE_PER_SECOND          requests per token per second, 0 = off [1000]
  GW_LIMITS__BURST                    token bucket size [2000]
  GW_LIMITS__MAX_REQUEST_BODY_BYTES   larger bodies get 413 [67108864]
  GW_LIMITS__MAX_PATH_BYTES           longest stream path, as stream-server's [1024]
  GW_LIMITS__MAX_PATH_SEGMENTS        most stream path segments, as stream-server's [32]
  GW_HTTP__CORS_ORIGINS               comma-separated allowed origins, or * [*]
  GW_HTTP__STREAM_BASE_PATH           URL prefix of streams [/v1/stream]
  GW_HTTP__SHARED_CACHE               let shared caches keep authenticated reads [false]
  RUST_LOG                            log filter [auth_gateway=info,tower_http=info]";
    format!(
        "{head}{}{tail}",
        ConnectionLimits::with_max_connections(GATEWAY_MAX_CONNECTIONS).help("GW", 35)
    )
}

/// The gateway's default connection limit: each client it proxies is also
/// a connection to stream-server, so it stays below the server's.
const GATEWAY_MAX_CONNECTIONS: usize = 8192;

/// Every setting of the gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `DATABASE_URL`; empty means "not configured".
    pub database_url: String,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub jwt: JwtConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    /// Scheme and authority clients use to reach the gateway, e.g.
    /// `https://streams.example.com`; `Location` headers are rewritten to it.
    pub public_url: Option<String>,
    pub shutdown_grace_secs: f64,
    /// Timeouts and sizes for slow or numerous clients, the same keys as
    /// stream-server's (`header_read_timeout_secs`, `max_connections`, ...).
    #[serde(flatten)]
    pub connections: ConnectionLimits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    pub url: String,
    pub connect_timeout_ms: u64,
    pub max_idle_connections: usize,
    /// Seconds a pooled connection may sit idle before the gateway closes
    /// it. Must stay below stream-server's `header_read_timeout_secs`,
    /// after which the server closes idle connections itself: a request
    /// sent on one the server is closing at that moment would fail.
    pub pool_idle_timeout_secs: f64,
}

/// Which signature scheme tokens use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    #[serde(alias = "eddsa", alias = "ed25519")]
    EdDSA,
    #[serde(alias = "hs256")]
    HS256,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    pub algorithm: JwtAlgorithm,
    pub key_file: Option<PathBuf>,
    pub key: Option<String>,
}

/// Key material stays out of logs and panics.
impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithm", &self.algorithm)
            .field("key_file", &self.key_file)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// RFC 6750 §2.3 query tokens, for `EventSource`, which cannot send headers.
    pub query_token: bool,
    pub cache_ttl_secs: f64,
    pub last_used_flush_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    pub rate_per_second: u32,
    pub burst: u32,
    pub max_request_body_bytes: u64,
    /// Stream paths (and fork sources) longer than this are refused before
    /// any pattern is matched; keep it equal to stream-server's.
    pub max_path_bytes: usize,
    /// The same for the number of `/`-separated segments.
    pub max_path_segments: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    pub cors_origins: String,
    pub stream_base_path: String,
    /// Whether shared caches (a CDN in front of the gateway) may keep
    /// answers to authenticated reads. Off, `public` becomes `private`.
    pub shared_cache: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            public_url: None,
            shutdown_grace_secs: 10.0,
            // Every client proxied is also a connection to stream-server
            // (and a second descriptor here): half the server's default.
            connections: ConnectionLimits::with_max_connections(GATEWAY_MAX_CONNECTIONS),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "http://127.0.0.1:4437".into(),
            connect_timeout_ms: 2000,
            max_idle_connections: 256,
            // Half stream-server's default header-read timeout.
            pool_idle_timeout_secs: 5.0,
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: "durable-streams-gateway".into(),
            audience: "durable-streams".into(),
            algorithm: JwtAlgorithm::EdDSA,
            key_file: None,
            key: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            query_token: false,
            cache_ttl_secs: 30.0,
            last_used_flush_secs: 10.0,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rate_per_second: 1000,
            burst: 2000,
            max_request_body_bytes: 64 * 1024 * 1024,
            max_path_bytes: PathLimits::default().max_bytes,
            max_path_segments: PathLimits::default().max_segments,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: "*".into(),
            stream_base_path: "/v1/stream".into(),
            shared_cache: false,
        }
    }
}

impl Config {
    /// Layers defaults, the optional TOML file and the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = service_common::config::load(file, "GW_", &["DATABASE_URL"])?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        service_common::config::check_serving(
            self.server.shutdown_grace_secs,
            &self.server.connections,
        )?;
        positive_seconds(
            "upstream.pool_idle_timeout_secs",
            self.upstream.pool_idle_timeout_secs,
        )?;
        positive_seconds("auth.cache_ttl_secs", self.auth.cache_ttl_secs)?;
        positive_seconds("auth.last_used_flush_secs", self.auth.last_used_flush_secs)?;
        let url = self
            .upstream
            .url
            .parse::<http::Uri>()
            .map_err(|e| ConfigError::Invalid {
                key: "upstream.url",
                reason: format!("is not a URL: {e}"),
            })?;
        if url.scheme_str() != Some("http") || url.authority().is_none() {
            return Err(ConfigError::Invalid {
                key: "upstream.url",
                reason: format!("must be http://host:port, got {:?}", self.upstream.url),
            });
        }
        if let Some(public) = &self.server.public_url {
            let parsed = public
                .parse::<http::Uri>()
                .map_err(|e| ConfigError::Invalid {
                    key: "server.public_url",
                    reason: format!("is not a URL: {e}"),
                })?;
            if parsed.scheme().is_none() || parsed.authority().is_none() {
                return Err(ConfigError::Invalid {
                    key: "server.public_url",
                    reason: format!("must be scheme://host[:port], got {public:?}"),
                });
            }
        }
        service_common::stream_path::validate_base(&self.http.stream_base_path).map_err(|e| {
            ConfigError::Invalid {
                key: "http.stream_base_path",
                reason: e.to_string(),
            }
        })?;
        let base = &self.http.stream_base_path;
        if base == "/admin" || base.starts_with("/admin/") {
            return Err(ConfigError::Invalid {
                key: "http.stream_base_path",
                reason: format!("must lie outside /admin, the admin API's prefix, got {base:?}"),
            });
        }
        if self.limits.max_path_bytes == 0 || self.limits.max_path_segments == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.max_path_bytes",
                reason: "and limits.max_path_segments must be at least 1".into(),
            });
        }
        if self.limits.rate_per_second > 0 && self.limits.burst == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.burst",
                reason: "must be at least 1 when limits.rate_per_second is set".into(),
            });
        }
        Ok(())
    }

    /// The Postgres URL, or an error telling the operator how to set it.
    pub fn database_url(&self) -> Result<&str, ConfigError> {
        if self.database_url.is_empty() {
            return Err(ConfigError::Invalid {
                key: "DATABASE_URL",
                reason: "is not set (e.g. postgres://postgres@127.0.0.1:5432/postgres)".into(),
            });
        }
        Ok(&self.database_url)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.server.shutdown_grace_secs)
    }

    pub fn pool_idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.upstream.pool_idle_timeout_secs)
    }

    /// How the gateway's connections are served: its limits and grace
    /// period, plain HTTP (TLS ends in front of it).
    pub fn serve_options(&self) -> Options {
        Options {
            limits: self.server.connections.clone(),
            tls: None,
            grace: self.shutdown_grace(),
            // The client's connection and the upstream one it is proxied on.
            descriptors_per_connection: 2,
        }
    }

    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.auth.cache_ttl_secs)
    }

    pub fn last_used_flush_interval(&self) -> Duration {
        Duration::from_secs_f64(self.auth.last_used_flush_secs)
    }

    /// What a stream path may be, as stream-server is configured to check.
    pub fn path_limits(&self) -> PathLimits {
        PathLimits {
            max_bytes: self.limits.max_path_bytes,
            max_segments: self.limits.max_path_segments,
        }
    }

    /// Allowed CORS origins; `None` means any.
    pub fn cors_origins(&self) -> Option<Vec<String>> {
        service_common::cors::parse_origins(&self.http.cors_origins)
    }
}

impl JwtConfig {
    /// Loads the signing key from `key` or `key_file`.
    pub fn keys(&self) -> Result<TokenKeys, ConfigError> {
        let material = match (&self.key, &self.key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "jwt.key",
                    reason: "and jwt.key_file are both set; choose one".into(),
                });
            }
            (Some(key), None) => key.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    key: "jwt.key_file",
                    reason: format!("cannot read {}: {e}", path.display()),
                })?
            }
            (None, None) => {
                return Err(ConfigError::Invalid {
                    key: "jwt.key_file",
                    reason:
                        "is not set: create a key with `auth-gateway keygen > gateway-key.pem` \
                             and set GW_JWT__KEY_FILE=gateway-key.pem"
                            .into(),
                });
            }
        };
        let keys = match self.algorithm {
            JwtAlgorithm::EdDSA => TokenKeys::ed25519_from_pem(&material),
            // A trailing newline from `echo secret > file` is not part of the secret.
            JwtAlgorithm::HS256 => {
                TokenKeys::hs256(material.trim_end_matches(['\n', '\r']).as_bytes())
            }
        }
        .map_err(|e: KeyError| ConfigError::Invalid {
            key: "jwt.key",
            reason: e.to_string(),
        })?;
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::generate_ed25519_pem;

    #[test]
    fn defaults_are_valid_and_documented() {
        let config = Config::default();
        config.validate().expect("defaults validate");
        assert_eq!(config.server.port, 8080);
        assert_eq!(config.upstream.url, "http://127.0.0.1:4437");
        assert!(environment_help().contains("GW_UPSTREAM__URL"));
        assert!(config.database_url().is_err(), "DATABASE_URL is required");
        assert!(environment_help().contains("GW_UPSTREAM__POOL_IDLE_TIMEOUT_SECS "));
    }

    #[test]
    fn stream_base_paths_that_routing_cannot_tell_apart_are_refused() {
        for base in ["/admin", "/admin/streams", "/v1/{x}", "/v1/stream/"] {
            let mut config = Config::default();
            config.http.stream_base_path = base.into();
            let refused = config.validate().unwrap_err().to_string();
            assert!(
                refused.contains("http.stream_base_path"),
                "{base}: {refused}"
            );
        }
        let mut config = Config::default();
        config.http.stream_base_path = "/administrators".into();
        config
            .validate()
            .expect("only the /admin prefix is reserved");
    }

    #[test]
    fn connection_limits_fit_stream_servers() {
        let gateway = Config::default();
        let server = ConnectionLimits::default();
        assert!(
            gateway.server.connections.max_connections <= server.max_connections,
            "every client proxied is a connection to the server too"
        );
        assert!(
            gateway.pool_idle_timeout() < server.header_read_timeout(),
            "pooled connections are retired before the server closes them"
        );
    }

    #[test]
    fn connection_limits_are_checked_with_their_key() {
        let mut config = Config::default();
        config.server.connections.max_connections = 0;
        let refused = config.validate().unwrap_err().to_string();
        assert!(refused.contains("server.max_connections"), "{refused}");
        let mut config = Config::default();
        config.server.connections.header_read_timeout_secs = -2.0;
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.contains("server.header_read_timeout_secs"),
            "{refused}"
        );
        let mut config = Config::default();
        config.upstream.pool_idle_timeout_secs = 0.0;
        let refused = config.validate().unwrap_err().to_string();
        assert!(
            refused.contains("upstream.pool_idle_timeout_secs"),
            "{refused}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut config = Config::default();
        config.upstream.url = "ftp://x".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("upstream.url")
        );
        let mut config = Config::default();
        config.auth.cache_ttl_secs = 0.0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("cache_ttl")
        );
        let mut config = Config::default();
        config.server.public_url = Some("example.com".into());
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("public_url")
        );
    }

    #[test]
    fn keys_come_from_inline_or_file_and_never_print() {
        let pem = generate_ed25519_pem().expect("keygen");
        let mut jwt = Config::default().jwt;
        assert!(jwt.keys().unwrap_err().to_string().contains("keygen"));
        jwt.key = Some(pem.clone());
        jwt.keys().expect("inline PEM");
        assert!(!format!("{jwt:?}").contains("PRIVATE"));
        let dir = tempfile::tempdir().expect("scratch directory");
        let dir = dir.path();
        let file = dir.join("secret");
        std::fs::write(&file, format!("{}\n", "s".repeat(32))).expect("write");
        let hs = JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            key: None,
            key_file: Some(file),
            ..jwt.clone()
        };
        hs.keys().expect("32-byte secret with a trailing newline");
        jwt.key_file = Some(dir.join("missing"));
        assert!(jwt.keys().unwrap_err().to_string().contains("both set"));
    }
}
