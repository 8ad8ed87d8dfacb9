//! A token value: checked, fingerprinted and turned into what is injected.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::config::MAX_TOKEN_BYTES;

/// Why a token value was refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("the token is empty")]
    Empty,
    #[error("the token has a control character (CR, LF, NUL or similar) at byte {0}")]
    ControlCharacter(usize),
    #[error("the token is {0} bytes; the limit is {MAX_TOKEN_BYTES}")]
    TooLong(usize),
    #[error("the token cannot be sent in a header with this prefix")]
    NotAHeaderValue,
    #[error("the token is not a JSON object of strings ({0}); `inject` names its fields")]
    NotStructured(String),
    #[error("the token has no field `{0}`, which `inject` takes a value from")]
    MissingField(String),
    #[error("the token's field `{field}`: {error}")]
    Field {
        field: String,
        error: Box<ValueError>,
    },
    #[error("a Basic user name cannot hold `:` (RFC 7617)")]
    ColonInUser,
}

/// A token value. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Checks raw source output and keeps the token. Surrounding whitespace
    /// (the trailing newline an editor or `echo` adds) is trimmed; anything
    /// left that is a control character refuses the whole value.
    pub fn parse(raw: &str) -> Result<Secret, ValueError> {
        let t = raw.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
        if t.is_empty() {
            return Err(ValueError::Empty);
        }
        if t.len() > MAX_TOKEN_BYTES {
            return Err(ValueError::TooLong(t.len()));
        }
        if let Some(pos) = t.bytes().position(|b| b.is_ascii_control()) {
            return Err(ValueError::ControlCharacter(pos));
        }
        Ok(Secret(t.into()))
    }

    /// The value itself: only for building what is injected or probed.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `sha256:` + the first 8 hex digits of the value's SHA-256: enough to
    /// tell tokens apart in logs and status, useless to an attacker.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.expose())
    }
}

/// The fingerprint of any value, as shown everywhere graceway names a token.
pub fn fingerprint(value: &str) -> String {
    let d = Sha256::digest(value.as_bytes());
    format!("sha256:{}", &crate::config::hex(&d)[..8])
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

/// The three parts of a credential set kept in a [`Secret`].
#[derive(Clone, Copy)]
pub struct AwsParts<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
}

/// Splits an AWS credential set's secret (`id:secret[:token]`, see
/// [`super::sigv4`]) into its parts.
pub fn aws_parts(secret: &Secret) -> Option<AwsParts<'_>> {
    let mut it = secret.expose().splitn(3, ':');
    Some(AwsParts {
        access_key_id: it.next()?,
        secret_access_key: it.next()?,
        session_token: it.next(),
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `exp` claim of a JWT, when the value is one. The signature is not
/// checked: graceway is not the token's audience, it only wants to know
/// when the upstream will stop accepting it.
pub fn jwt_expiry(value: &str) -> Option<SystemTime> {
    let mut parts = value.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if !(0.0..1e11).contains(&exp) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(exp as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_values() {
        assert_eq!(Secret::parse(""), Err(ValueError::Empty));
        assert_eq!(Secret::parse(" \n"), Err(ValueError::Empty));
        assert_eq!(
            Secret::parse("abc\r\nX-Evil: 1"),
            Err(ValueError::ControlCharacter(3))
        );
        assert_eq!(Secret::parse("a\0b"), Err(ValueError::ControlCharacter(1)));
        assert_eq!(
            Secret::parse(&"x".repeat(MAX_TOKEN_BYTES + 1)),
            Err(ValueError::TooLong(MAX_TOKEN_BYTES + 1))
        );
        assert_eq!(Secret::parse("tok-1\n").unwrap().expose(), "tok-1");
    }

    #[test]
    fn fingerprint_hides_value() {
        let s = Secret::parse("supersecret").unwrap();
        let f = s.fingerprint();
        assert!(f.starts_with("sha256:") && f.len() == 15);
        assert!(!format!("{s:?}").contains("supersecret"));
    }

    #[test]
    fn reads_jwt_exp() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":2000000000}"#);
        let jwt = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        assert_eq!(
            jwt_expiry(&jwt),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.b.c"), None);
    }

    #[test]
    fn query_encoding() {
        assert_eq!(percent_encode("a b/c+d"), "a%20b%2Fc%2Bd");
    }
}

/// The token validator's fuzz campaign over `tests/corpus/token.txt` (see
/// `config::fuzz` for the corpus and the mutator).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::Secret;
    use crate::config::fuzz::{campaign, lines, mutated};

    /// The validator's contract on any input: a clear error, or a value
    /// with no control character that its `Debug` does not show.
    fn check_token(raw: &[u8]) {
        let raw = String::from_utf8_lossy(raw);
        match Secret::parse(&raw) {
            Ok(s) => {
                assert!(!s.expose().is_empty());
                assert!(!s.expose().bytes().any(|b| b.is_ascii_control()));
                // Debug shows a fingerprint, never the value (a value short
                // enough to occur inside any fingerprint proves nothing).
                if s.expose().len() >= 12 {
                    assert!(!format!("{s:?}").contains(s.expose()));
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn token_seed_corpus_replays_cleanly() {
        let tokens = lines("token.txt");
        assert!(!tokens.is_empty(), "tests/corpus/token.txt not read");
        for t in &tokens {
            check_token(t);
        }
    }

    proptest! {
        #![proptest_config(campaign())]

        #[test]
        fn token_validator_never_panics(raw in mutated(lines("token.txt"))) {
            check_token(&raw);
        }
    }
}
