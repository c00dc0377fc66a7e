//! Loading settings, the same way in both services: built-in defaults,
//! then an optional TOML file (`--config`), then environment variables
//! (`PREFIX_SECTION__KEY`), later layers winning. A value that does not
//! parse, or is out of range, stops startup with an error naming its key.

use crate::limits::{ConnectionLimits, LimitError};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {key} {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl From<LimitError> for ConfigError {
    fn from(LimitError { key, reason }: LimitError) -> Self {
        ConfigError::Invalid { key, reason }
    }
}

/// Layers `C::default()`, the TOML `file` if given, the variables named in
/// `unprefixed` (lower-cased into top-level keys: `DATABASE_URL` sets
/// `database_url`), then `prefix`ed variables split on `__` into section
/// and key.
///
/// `C` has a `server` section with the [`ConnectionLimits`] flattened into
/// it.
pub fn load<C>(file: Option<&Path>, prefix: &str, unprefixed: &[&str]) -> Result<C, ConfigError>
where
    C: Default + Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(C::default()));
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::Invalid {
                key: "--config",
                reason: format!("file {} does not exist", file.display()),
            });
        }
        figment = figment.merge(Toml::file(file));
    }
    if !unprefixed.is_empty() {
        figment = figment.merge(Env::raw().only(unprefixed).lowercase(true));
    }
    figment = figment.merge(Env::prefixed(prefix).split("__"));
    // The connection limits are flattened into `[server]`, and serde reads
    // flattened fields from a copy that no longer knows their key: reading
    // them on their own first names the key in a parse error. figment
    // appends the section after the field; it goes first.
    figment
        .extract_inner::<ConnectionLimits>("server")
        .map_err(|mut e| {
            e.path.rotate_right(1);
            Box::new(e)
        })?;
    Ok(figment.extract().map_err(Box::new)?)
}

/// `Ok` for a finite, positive number of seconds; otherwise an error naming
/// `key`.
pub fn positive_seconds(key: &'static str, secs: f64) -> Result<(), ConfigError> {
    crate::settings::positive_seconds(secs).map_err(|reason| ConfigError::Invalid { key, reason })
}

/// Checks the serving settings both services have, under the same keys:
/// the shutdown grace period and the connection limits.
pub fn check_serving(
    shutdown_grace_secs: f64,
    connections: &ConnectionLimits,
) -> Result<(), ConfigError> {
    positive_seconds("server.shutdown_grace_secs", shutdown_grace_secs)?;
    connections.validate()?;
    Ok(())
}
