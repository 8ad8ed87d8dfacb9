//! An upstream's client certificate (`tls.client_cert` + `tls.client_key`,
//! mTLS): read, checked and fingerprinted before Pingora sees it.
//!
//! Pingora's `CertKey::new` parses each certificate with a DER parser that
//! panics on bad input, and its rustls connector turns the key bytes into a
//! `PrivateKeyDer` with `unwrap` at every connect. So [`load`] parses every
//! certificate, checks that the key is in a form that conversion accepts,
//! and loads the pair the way rustls will at connect time
//! (`CertifiedKey::from_der`: the key must load and its public key must be
//! the certificate's). A file that passes here cannot make a connect panic;
//! one that does not is an error naming the file, never a panic.
//!
//! No error message carries key material: the key file is only ever named.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::utils::tls::CertKey;
use sha2::{Digest, Sha256};

/// A certificate is `expiring` in the last third of its lifetime, and at
/// most this long before its `notAfter`: where cert-manager renews by
/// default (a third before the end), so a renewal that has not happened by
/// then is overdue, and a short-lived certificate is not always `expiring`.
pub const EXPIRING_AT_MOST: Duration = Duration::from_secs(30 * 86_400);

/// A loaded, checked client certificate and key.
pub struct ClientCert {
    /// What the peer carries (`HttpPeer::client_cert_key`): the chain and
    /// the key's DER.
    pub key: Arc<CertKey>,
    /// `sha256:` + the 64 hex digits of the leaf's DER (what `openssl x509
    /// -fingerprint -sha256` prints, in lower case without colons).
    pub fingerprint: String,
    /// The leaf's subject, as RFC 4514 text (`CN=client,O=...`).
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("fingerprint", &self.fingerprint)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Where a client certificate stands in its validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertState {
    Active,
    /// In the last third of its lifetime (at most [`EXPIRING_AT_MOST`]).
    Expiring,
    /// Past `notAfter`: the upstream will refuse it.
    Expired,
    /// Before `notBefore` (a clock or issuing problem): refused too.
    NotYetValid,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Active => "active",
            CertState::Expiring => "expiring",
            CertState::Expired => "expired",
            CertState::NotYetValid => "not-yet-valid",
        }
    }
}

impl ClientCert {
    pub fn state(&self, now: SystemTime) -> CertState {
        state_at(self.not_before, self.not_after, now)
    }

    /// `notAfter` in Unix seconds (the metric's value).
    pub fn not_after_unix(&self) -> i64 {
        unix(self.not_after)
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The state of a validity period at `now` (pure, for the unit tests).
pub fn state_at(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> CertState {
    if now >= not_after {
        return CertState::Expired;
    }
    if now < not_before {
        return CertState::NotYetValid;
    }
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let warn = (lifetime / 3).min(EXPIRING_AT_MOST);
    let left = not_after.duration_since(now).unwrap_or_default();
    if left <= warn {
        CertState::Expiring
    } else {
        CertState::Active
    }
}

/// Why a client certificate and key cannot be used. The field is
/// `tls.client_cert` or `tls.client_key` ([`ClientCertError::field`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: bad PEM: {source}", path.display())]
    Pem {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: bad certificate: {source}", path.display())]
    Certificate {
        path: PathBuf,
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key found (PKCS#8, RSA or EC; an encrypted key is not read)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: the private key is not usable: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{} is not the key of {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl ClientCertError {
    /// The config field (below `upstreams[i].`) the error concerns.
    pub fn field(&self) -> &'static str {
        match self {
            ClientCertError::Read { field, .. } | ClientCertError::Pem { field, .. } => field,
            ClientCertError::Certificate { .. } | ClientCertError::NoCertificate { .. } => {
                CERT_FIELD
            }
            ClientCertError::NoKey { .. }
            | ClientCertError::Key { .. }
            | ClientCertError::Mismatch { .. } => KEY_FIELD,
        }
    }
}

const CERT_FIELD: &str = "tls.client_cert";
const KEY_FIELD: &str = "tls.client_key";

/// Reads and checks a certificate chain (leaf first) and its key.
pub fn load(cert: &Path, key: &Path) -> Result<ClientCert, ClientCertError> {
    let read = |field, path: &Path| {
        std::fs::read(path).map_err(|source| ClientCertError::Read {
            field,
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(CERT_FIELD, cert)?;
    let mut chain = Vec::new();
    for item in rustls_pemfile::certs(&mut cert_pem.as_slice()) {
        let der = item.map_err(|source| ClientCertError::Pem {
            field: CERT_FIELD,
            path: cert.to_path_buf(),
            source,
        })?;
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|source| {
            ClientCertError::Certificate {
                path: cert.to_path_buf(),
                source,
            }
        })?;
        chain.push(der);
    }
    let Some(leaf) = chain.first() else {
        return Err(ClientCertError::NoCertificate {
            path: cert.to_path_buf(),
        });
    };
    let (subject, not_before, not_after) = {
        let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|source| {
            ClientCertError::Certificate {
                path: cert.to_path_buf(),
                source,
            }
        })?;
        let at = |t: i64| {
            if t >= 0 {
                UNIX_EPOCH + Duration::from_secs(t as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
            }
        };
        (
            x.subject().to_string(),
            at(x.validity().not_before.timestamp()),
            at(x.validity().not_after.timestamp()),
        )
    };
    let fingerprint = format!(
        "sha256:{}",
        crate::config::hex(&Sha256::digest(leaf.as_ref()))
    );

    let key_pem = read(KEY_FIELD, key)?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| ClientCertError::Pem {
            field: KEY_FIELD,
            path: key.to_path_buf(),
            source,
        })?
        .ok_or_else(|| ClientCertError::NoKey {
            path: key.to_path_buf(),
        })?;
    let key_bytes = key_der.secret_der().to_vec();
    let key_err = |reason: String| ClientCertError::Key {
        path: key.to_path_buf(),
        reason,
    };
    // Pingora's connector converts the bytes with `try_into().unwrap()`.
    pingora::tls::PrivateKeyDer::try_from(key_bytes.as_slice())
        .map_err(|e| key_err(e.to_string()))?;
    // The pair as rustls loads it at connect time: the key must load, and
    // its public key must be the leaf's.
    pingora::tls::install_default_crypto_provider();
    let provider = pingora::tls::CryptoProvider::get_default()
        .ok_or_else(|| key_err("no TLS crypto provider".into()))?;
    match pingora::tls::sign::CertifiedKey::from_der(chain.clone(), key_der, provider) {
        Ok(_) => {}
        Err(pingora::tls::RusTlsError::InconsistentKeys(_)) => {
            return Err(ClientCertError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        Err(e) => return Err(key_err(e.to_string())),
    }
    let certificates = chain.iter().map(|c| c.as_ref().to_vec()).collect();
    Ok(ClientCert {
        key: Arc::new(CertKey::new(certificates, key_bytes)),
        fingerprint,
        subject,
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests;
