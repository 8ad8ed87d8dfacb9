//! An OAuth2 source's client authentication, grant and signing key.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Body,
    /// RFC 7523 §2.2: a JWT signed with `oauth2.private_key_file`.
    PrivateKeyJwt,
    /// No client authentication (the JWT-bearer grant's assertion is the
    /// client's proof).
    None,
}

/// `oauth2.grant`.
#[derive(Debug, Clone, PartialEq)]
pub enum Grant {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 7523 §2.1: a signed assertion is the grant. From a service
    /// account file (Google's JSON: `client_email`, `private_key`,
    /// `private_key_id`) or from `private_key_file` with `client_id` as
    /// its issuer; `subject` is its `sub` (Google: the user a domain-wide
    /// delegation acts as).
    JwtBearer {
        service_account: Option<PathBuf>,
        subject: Option<String>,
    },
}

/// A key that signs assertions: `oauth2.private_key_file`, `key_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct SigningKey {
    pub file: PathBuf,
    /// The JWT header's `kid`.
    pub key_id: Option<String>,
}
