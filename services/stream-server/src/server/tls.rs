//! TLS settings: the certificate chain and private key from PEM files, and
//! HTTP/2 offered by ALPN ahead of HTTP/1.1.

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why the TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
}

/// The acceptor for connections, from PEM files: `cert` holds the chain
/// (leaf first), `key` a PKCS#8, PKCS#1 or SEC1 private key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    // Both rustls and its users may link ring; choosing explicitly avoids a
    // runtime panic when more than one provider is present.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certificates = CertificateDer::pem_file_iter(cert)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_files_without_a_certificate_or_key() {
        let dir = tempfile::tempdir().expect("scratch dir");
        let scratch = |name: &str, contents: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write scratch file");
            path
        };
        let empty = scratch("empty.pem", "");
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            acceptor(&missing, &empty),
            Err(TlsError::Certificates { .. })
        ));
        assert!(matches!(
            acceptor(&empty, &empty),
            Err(TlsError::NoCertificate { .. })
        ));
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .expect("generate a certificate");
        let cert = scratch("cert.pem", &generated.cert.pem());
        assert!(matches!(acceptor(&cert, &empty), Err(TlsError::Key { .. })));
        let key = scratch("key.pem", &generated.signing_key.serialize_pem());
        assert!(acceptor(&cert, &key).is_ok());
    }
}
