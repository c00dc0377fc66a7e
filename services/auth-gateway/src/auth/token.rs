//! Bearer tokens: JWT claims, the signing keys, and signing and verifying.
//!
//! Tokens are signed with Ed25519 (`EdDSA`, the default) or HMAC-SHA256
//! (`HS256`). Verification accepts only the configured algorithm (so
//! `alg: none` and algorithm confusion fail), and checks the signature,
//! `exp`, `nbf`, `iss` and `aud`. That a token's row exists and is neither
//! revoked nor expired is checked against Postgres by the caller.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// The claims of a gateway token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The subject the token acts for (forwarded as `X-Auth-Subject`).
    pub sub: String,
    /// Unix seconds.
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The token's id: the primary key of its row.
    pub jti: String,
}

/// Why a token is refused. Reasons are for logs; clients only see 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token rejected: {0}")]
    Invalid(&'static str),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("signing key is not an Ed25519 PKCS#8 PEM key: {0}")]
    BadEd25519(String),
    #[error("HS256 secret must be at least 32 bytes, got {0}")]
    ShortSecret(usize),
}

/// The keys tokens are signed and verified with.
pub struct TokenKeys {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenKeys")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

const PEM_LABEL: &str = "PRIVATE KEY";

impl TokenKeys {
    /// Ed25519 keys from a PKCS#8 PEM private key.
    pub fn ed25519_from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_to_der(pem).ok_or_else(|| KeyError::BadEd25519("no PEM block".into()))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(&der).map_err(|e| KeyError::BadEd25519(e.to_string()))?;
        Ok(TokenKeys {
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&der),
            decoding: DecodingKey::from_ed_der(pair.public_key().as_ref()),
        })
    }

    /// HMAC-SHA256 keys from a shared secret of at least 32 bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        Ok(TokenKeys {
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    /// Verifies signature, algorithm, `exp`, `nbf`, `iss` and `aud`.
    pub fn verify(&self, token: &str, issuer: &str, audience: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(self.algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(rejection_reason(e.kind())))
    }
}

/// A short reason safe to show a client: it names the failed check, never
/// key material or token contents.
fn rejection_reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "required claim missing",
        _ => "malformed token",
    }
}

/// A new Ed25519 private key as PKCS#8 PEM.
pub fn generate_ed25519_pem() -> Result<String, KeyError> {
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|e| KeyError::BadEd25519(e.to_string()))?;
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    Ok(pem)
}

/// The DER bytes of the first `PRIVATE KEY` PEM block.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    const ISS: &str = "durable-streams-gateway";
    const AUD: &str = "durable-streams";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn claims() -> Claims {
        Claims {
            iss: ISS.into(),
            aud: AUD.into(),
            sub: "alice".into(),
            exp: now() + 3600,
            iat: now(),
            nbf: None,
            jti: "5f0c8a0e-token".into(),
        }
    }

    fn ed25519() -> TokenKeys {
        TokenKeys::ed25519_from_pem(&generate_ed25519_pem().expect("generate")).expect("load")
    }

    #[test]
    fn signed_tokens_verify() {
        for keys in [ed25519(), TokenKeys::hs256(&[7; 32]).expect("secret")] {
            // One set of claims: made twice, a second may pass in between.
            let claims = claims();
            let token = keys.sign(&claims).expect("sign");
            assert_eq!(keys.verify(&token, ISS, AUD), Ok(claims));
        }
    }

    #[test]
    fn tampering_issuer_audience_and_expiry_are_rejected() {
        let keys = ed25519();
        let token = keys.sign(&claims()).expect("sign");
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert!(
            keys.verify(&tampered, ISS, AUD).is_err(),
            "tampered signature"
        );
        assert!(
            keys.verify(&token, "someone-else", AUD).is_err(),
            "wrong issuer"
        );
        assert!(
            keys.verify(&token, ISS, "other-audience").is_err(),
            "wrong audience"
        );
        let expired = Claims {
            exp: now() - 10,
            ..claims()
        };
        assert!(
            keys.verify(&keys.sign(&expired).expect("sign"), ISS, AUD)
                .is_err()
        );
        let early = Claims {
            nbf: Some(now() + 600),
            ..claims()
        };
        assert!(
            keys.verify(&keys.sign(&early).expect("sign"), ISS, AUD)
                .is_err()
        );
        let other_key = ed25519().sign(&claims()).expect("sign");
        assert!(
            keys.verify(&other_key, ISS, AUD).is_err(),
            "signed by another key"
        );
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_rejected() {
        let keys = ed25519();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let payload = b64(&serde_json::to_vec(&claims()).expect("json"));
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(keys.verify(&none, ISS, AUD).is_err(), "alg none");
        // An HS256 token keyed with anything must not pass an EdDSA verifier.
        let hs = TokenKeys::hs256(&[1; 32])
            .expect("secret")
            .sign(&claims())
            .expect("sign");
        assert!(keys.verify(&hs, ISS, AUD).is_err(), "HS256 against EdDSA");
        let hs_keys = TokenKeys::hs256(&[1; 32]).expect("secret");
        assert!(
            hs_keys
                .verify(&keys.sign(&claims()).expect("sign"), ISS, AUD)
                .is_err(),
            "EdDSA against HS256"
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            TokenKeys::hs256(b"short").err(),
            Some(KeyError::ShortSecret(5))
        );
        assert!(TokenKeys::ed25519_from_pem("not a key").is_err());
        let debug = format!("{:?}", ed25519());
        assert!(debug.contains("EdDSA") && !debug.contains("PRIVATE"));
    }
}
