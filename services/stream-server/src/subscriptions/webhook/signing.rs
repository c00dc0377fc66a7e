//! The server's webhook signing key (PROTOCOL §6.5, §7.1, §12.10): an
//! Ed25519 key that signs every wake, so receivers can check a wake came
//! from this server, and the JWK Set that publishes its public half.
//!
//! With a data directory the key is kept there, in PKCS#8 as ring writes
//! it, and survives restarts: receivers that cached the JWK Set keep
//! verifying. Without one (memory storage) each start has a new key.
//! A key file that cannot be read as a key stops the server rather than
//! being replaced, since replacing it would silently invalidate every
//! receiver's cached key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The key's file in the data directory.
pub const KEY_FILE_NAME: &str = "webhook-signing-key.pk8";

/// What the key file is written as before it is renamed into place.
const TEMP_FILE_NAME: &str = "webhook-signing-key.pk8.tmp";

/// Prefix of every `kid` this server issues.
const KID_PREFIX: &str = "ds_";

/// The webhook signing key, with its `kid` and JWK Set worked out once.
pub struct SigningKey {
    key_pair: Ed25519KeyPair,
    kid: String,
    jwks: Bytes,
}

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("webhook signing key {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "webhook signing key {path:?} is not an Ed25519 PKCS#8 key ({reason}); \
         it is left untouched: restore it, or remove it to start with a new key"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("could not generate a webhook signing key")]
    Generate,
}

impl SigningKey {
    /// The key kept in `dir` (created there on first use), or, with no
    /// directory, a key that lives as long as the process.
    pub fn load_or_create(dir: Option<&Path>) -> Result<SigningKey, SigningError> {
        let Some(dir) = dir else {
            return Self::from_pkcs8(generate_pkcs8()?.as_ref())
                .map_err(|_| SigningError::Generate);
        };
        let path = dir.join(KEY_FILE_NAME);
        match fs::read(&path) {
            Ok(pkcs8) => {
                warn_if_readable_by_others(&path);
                Self::from_pkcs8(&pkcs8).map_err(|rejected| SigningError::Corrupt {
                    path,
                    reason: rejected.to_string(),
                })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let pkcs8 = generate_pkcs8()?;
                write_atomically(dir, &path, pkcs8.as_ref())?;
                tracing::info!(path = %path.display(), "created a webhook signing key");
                Self::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningError::Generate)
            }
            Err(source) => Err(SigningError::Io { path, source }),
        }
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, ring::error::KeyRejected> {
        Ed25519KeyPair::from_pkcs8(pkcs8).map(Self::from_key_pair)
    }

    fn from_key_pair(key_pair: Ed25519KeyPair) -> SigningKey {
        let x = URL_SAFE_NO_PAD.encode(key_pair.public_key().as_ref());
        let kid = format!("{KID_PREFIX}{}", jwk_thumbprint(&x));
        let jwks = serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "kid": kid,
                "use": "sig",
                "alg": "EdDSA",
                "x": x,
            }]
        });
        SigningKey {
            key_pair,
            kid,
            jwks: Bytes::from(jwks.to_string()),
        }
    }

    /// The key's id: `ds_` and its RFC 7638 JWK thumbprint, so it is
    /// stable for the key's lifetime and differs between keys.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK Set publishing the public key (`{stream-url}/__ds/jwks.json`).
    pub fn jwks_json(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The `Webhook-Signature` header for `body` sent at `unix_secs`:
    /// `t=<secs>,kid=<kid>,ed25519=<signature>`, the signature (base64url,
    /// unpadded) over `<secs>.<body>`.
    pub fn signature_header(&self, unix_secs: u64, body: &[u8]) -> String {
        let timestamp = unix_secs.to_string();
        let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        let signature = self.key_pair.sign(&signed);
        format!(
            "t={timestamp},kid={},ed25519={}",
            self.kid,
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

impl fmt::Debug for SigningKey {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The RFC 7638 thumbprint of an Ed25519 public key whose JWK `x` is given:
/// SHA-256 over the required members in lexicographic order, without
/// whitespace, base64url unpadded. `x` is base64url, so needs no escaping.
fn jwk_thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()))
}

fn generate_pkcs8() -> Result<ring::pkcs8::Document, SigningError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SigningError::Generate)
}

/// Writes the key so that after a crash the file is either whole or
/// absent, and readable by the server's user only.
fn write_atomically(dir: &Path, path: &Path, pkcs8: &[u8]) -> Result<(), SigningError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SigningError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(at(dir))?;
    let temp = dir.join(TEMP_FILE_NAME);
    // A leftover from a crash: `create_new` below must create the file so
    // that its mode is the one asked for.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(at(&temp)(error)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(at(&temp))?;
    file.write_all(pkcs8).map_err(at(&temp))?;
    file.sync_all().map_err(at(&temp))?;
    drop(file);
    fs::rename(&temp, path).map_err(at(path))?;
    // The rename is durable once the directory is.
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(at(dir))
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(metadata) = fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the webhook signing key file is accessible to other users; it should be mode 0600"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, VerifyingKey};

    /// The `ed25519` signature and `kid` of a header, and its timestamp.
    fn parse_header(header: &str) -> (String, String, Vec<u8>) {
        let mut t = None;
        let mut kid = None;
        let mut signature = None;
        for part in header.split(',') {
            let (name, value) = part.split_once('=').unwrap();
            match name {
                "t" => t = Some(value.to_owned()),
                "kid" => kid = Some(value.to_owned()),
                "ed25519" => signature = Some(URL_SAFE_NO_PAD.decode(value).unwrap()),
                other => panic!("unexpected parameter {other:?} in {header:?}"),
            }
        }
        (t.unwrap(), kid.unwrap(), signature.unwrap())
    }

    /// The verifying key published in the JWK Set, decoded by ed25519-dalek.
    fn published_key(key: &SigningKey) -> VerifyingKey {
        let jwks: serde_json::Value = serde_json::from_slice(&key.jwks_json()).unwrap();
        let x = jwks["keys"][0]["x"].as_str().unwrap();
        let x: [u8; 32] = URL_SAFE_NO_PAD.decode(x).unwrap().try_into().unwrap();
        VerifyingKey::from_bytes(&x).unwrap()
    }

    fn verifies(key: &VerifyingKey, t: &str, body: &[u8], signature: &[u8]) -> bool {
        let signature = Signature::from_slice(signature).unwrap();
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(body);
        key.verify_strict(&signed, &signature).is_ok()
    }

    #[test]
    fn signatures_verify_with_the_published_key() {
        let key = SigningKey::load_or_create(None).unwrap();
        let body = br#"{"subscription_id":"sub-1","generation":7}"#;
        let header = key.signature_header(1_700_000_000, body);

        let (t, kid, signature) = parse_header(&header);
        assert_eq!(t, "1700000000");
        assert_eq!(kid, key.kid());
        let public = published_key(&key);
        assert!(verifies(&public, &t, body, &signature));

        assert!(!verifies(
            &public,
            &t,
            br#"{"subscription_id":"sub-2","generation":7}"#,
            &signature
        ));
        assert!(!verifies(&public, "1700000001", body, &signature));
        let other = SigningKey::load_or_create(None).unwrap();
        assert!(!verifies(&published_key(&other), &t, body, &signature));
    }

    #[test]
    fn an_empty_body_is_signed_too() {
        let key = SigningKey::load_or_create(None).unwrap();
        let (t, _, signature) = parse_header(&key.signature_header(0, b""));
        assert_eq!(t, "0");
        assert!(verifies(&published_key(&key), "0", b"", &signature));
    }

    #[test]
    fn the_jwks_publishes_one_ed25519_signing_key() {
        let key = SigningKey::load_or_create(None).unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(&key.jwks_json()).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let jwk = &keys[0];
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["kid"], key.kid());
        assert!(
            jwk.get("d").is_none(),
            "the private key must not be published"
        );
        assert!(key.kid().starts_with("ds_"));
        assert!(!format!("{key:?}").contains(jwk["x"].as_str().unwrap()));
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        // RFC 8037, appendix A.1 (the key) and A.3 (its thumbprint).
        let seed = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let key = SigningKey::from_key_pair(Ed25519KeyPair::from_seed_unchecked(&seed).unwrap());
        let jwks: serde_json::Value = serde_json::from_slice(&key.jwks_json()).unwrap();
        assert_eq!(
            jwks["keys"][0]["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(key.kid(), "ds_kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn memory_keys_are_new_each_time() {
        let first = SigningKey::load_or_create(None).unwrap();
        let second = SigningKey::load_or_create(None).unwrap();
        assert_ne!(first.kid(), second.kid());
    }

    #[test]
    fn the_key_persists_in_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let created = SigningKey::load_or_create(Some(&data)).unwrap();
        let path = data.join(KEY_FILE_NAME);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!data.join(TEMP_FILE_NAME).exists());

        let loaded = SigningKey::load_or_create(Some(&data)).unwrap();
        assert_eq!(loaded.kid(), created.kid());
        assert_eq!(loaded.jwks_json(), created.jwks_json());
        // Signed by one, verified with the other's published key.
        let (t, _, signature) = parse_header(&created.signature_header(42, b"{}"));
        assert!(verifies(&published_key(&loaded), &t, b"{}", &signature));
    }

    #[test]
    fn a_leftover_temporary_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join(TEMP_FILE_NAME);
        fs::write(&temp, b"half a key").unwrap();
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)).unwrap();
        let created = SigningKey::load_or_create(Some(dir.path())).unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!temp.exists());
        let loaded = SigningKey::load_or_create(Some(dir.path())).unwrap();
        assert_eq!(loaded.kid(), created.kid());
    }

    #[test]
    fn a_corrupt_key_file_is_refused_and_kept() {
        for contents in [&b"not a key"[..], b""] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(KEY_FILE_NAME);
            fs::write(&path, contents).unwrap();
            let error = SigningKey::load_or_create(Some(dir.path())).unwrap_err();
            assert!(matches!(&error, SigningError::Corrupt { path: p, .. } if *p == path));
            assert!(error.to_string().contains(KEY_FILE_NAME), "{error}");
            assert_eq!(fs::read(&path).unwrap(), contents);
        }
    }

    #[test]
    fn an_unreadable_key_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the key file should be.
        fs::create_dir(dir.path().join(KEY_FILE_NAME)).unwrap();
        let error = SigningKey::load_or_create(Some(dir.path())).unwrap_err();
        assert!(matches!(error, SigningError::Io { .. }), "{error}");
    }
}
