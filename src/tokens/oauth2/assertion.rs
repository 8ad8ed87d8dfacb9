//! Signed assertions for the token endpoint (RFC 7523, with the
//! `jsonwebtoken` crate over ring): the client's proof for
//! `client_auth: private_key_jwt` (§2.2), and the grant itself for
//! `grant: jwt_bearer` (§2.1), as Google's service accounts use.
//!
//! Keys are PEM files: RSA (PKCS#1 or PKCS#8) signs RS256, EC P-256
//! (PKCS#8) signs ES256. A service account file is Google's JSON
//! (`client_email`, `private_key`, `private_key_id`). Keys and files are
//! read at each fetch, so a rotated key file is used at the next fetch;
//! nothing of them is logged or shown, and a key that does not parse is an
//! error naming the file, never its content.

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// A client assertion lives this long (RFC 7523 §3: short; providers
/// commonly cap it at 5 minutes).
pub const CLIENT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);
/// A JWT-bearer grant's assertion lives this long (Google's maximum).
pub const GRANT_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A key that signs assertions, with its `kid`.
pub struct Key {
    encoding: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
}

impl Key {
    /// Reads a PEM private key; the error says what is wrong, never shows
    /// the key.
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Key, String> {
        let rsa = EncodingKey::from_rsa_pem(pem).map(|k| (k, Algorithm::RS256));
        let (encoding, alg) = rsa
            .or_else(|_| EncodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)))
            .map_err(|_| {
                "is not a PEM private key graceway can sign with (RSA, or EC P-256 in PKCS#8)"
                    .to_string()
            })?;
        let key = Key { encoding, alg, kid };
        // The crate parses the key only when it signs: sign once now, so a
        // bad key fails here rather than at the first fetch.
        key.sign(&Claims::probe())
            .map_err(|_| "is a PEM key that does not sign (damaged, or an unsupported curve)")?;
        Ok(key)
    }

    pub fn alg(&self) -> &'static str {
        match self.alg {
            Algorithm::RS256 => "RS256",
            _ => "ES256",
        }
    }

    fn sign(&self, claims: &Claims<'_>) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }
}

/// A Google service account file, as far as graceway reads it.
pub struct ServiceAccount {
    pub client_email: String,
    pub key: Key,
}

impl ServiceAccount {
    pub fn from_json(json: &[u8]) -> Result<ServiceAccount, String> {
        #[derive(serde::Deserialize)]
        struct File {
            client_email: String,
            private_key: String,
            private_key_id: Option<String>,
        }
        let f: File = serde_json::from_slice(json).map_err(|_| {
            "is not a service account JSON file (`client_email`, `private_key`)".to_string()
        })?;
        let key = Key::from_pem(f.private_key.as_bytes(), f.private_key_id)
            .map_err(|e| format!("`private_key` {e}"))?;
        Ok(ServiceAccount {
            client_email: f.client_email,
            key,
        })
    }
}

/// An assertion's claims (RFC 7523 §3).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    aud: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

impl Claims<'static> {
    fn probe() -> Claims<'static> {
        Claims {
            iss: "graceway",
            sub: None,
            aud: "graceway",
            iat: 0,
            exp: 0,
            jti: None,
            scope: None,
        }
    }
}

/// A unique `jti`: 128 random bits, hex.
fn jti() -> Result<String, String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| "no randomness for the assertion's jti".to_string())?;
    Ok(crate::config::hex(&b))
}

/// `client_auth: private_key_jwt`: `iss` and `sub` are the client id,
/// `aud` the token endpoint, a unique `jti`, 60 s of life.
pub fn client_assertion(
    key: &Key,
    client_id: &str,
    token_url: &str,
    now: SystemTime,
) -> Result<String, String> {
    let claims = Claims {
        iss: client_id,
        sub: Some(client_id),
        aud: token_url,
        iat: crate::clock::unix(now),
        exp: crate::clock::unix(now + CLIENT_ASSERTION_LIFETIME),
        jti: Some(jti()?),
        scope: None,
    };
    key.sign(&claims)
        .map_err(|e| format!("signing the client assertion failed: {e}"))
}

/// `grant: jwt_bearer`: `iss` the client (a service account's email),
/// `sub` the subject when one is set, `aud` the token endpoint, the scope
/// as a claim (as Google reads it), an hour of life.
pub fn grant_assertion(
    key: &Key,
    issuer: &str,
    subject: Option<&str>,
    scope: Option<&str>,
    token_url: &str,
    now: SystemTime,
) -> Result<String, String> {
    let claims = Claims {
        iss: issuer,
        sub: subject,
        aud: token_url,
        iat: crate::clock::unix(now),
        exp: crate::clock::unix(now + GRANT_ASSERTION_LIFETIME),
        jti: Some(jti()?),
        scope,
    };
    key.sign(&claims)
        .map_err(|e| format!("signing the grant assertion failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::time::UNIX_EPOCH;

    fn part(jwt: &str, i: usize) -> serde_json::Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn an_ec_key_signs_es256_client_assertions_with_unique_jtis() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let key = Key::from_pem(kp.serialize_pem().as_bytes(), Some("k1".into())).unwrap();
        assert_eq!(key.alg(), "ES256");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = client_assertion(&key, "svc", "https://idp/token", now).unwrap();
        let b = client_assertion(&key, "svc", "https://idp/token", now).unwrap();
        assert_eq!(part(&a, 0)["alg"], "ES256");
        assert_eq!(part(&a, 0)["kid"], "k1");
        let c = part(&a, 1);
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str()),
            (Some("svc"), Some("svc"))
        );
        assert_eq!(c["aud"], "https://idp/token");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
        assert_ne!(c["jti"], part(&b, 1)["jti"]);
    }

    #[test]
    fn bad_keys_and_files_are_errors_that_show_nothing_of_them() {
        let e = Key::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
            None,
        )
        .err()
        .unwrap();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let e = ServiceAccount::from_json(br#"{"client_email":"a@b","private_key":"secret-ish"}"#)
            .err()
            .unwrap();
        assert!(e.starts_with("`private_key` is not a PEM"), "{e}");
        assert!(!e.contains("secret-ish"));
        assert!(ServiceAccount::from_json(b"{").is_err());
    }
}
