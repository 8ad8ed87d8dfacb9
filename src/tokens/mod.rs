//! Tokens: where they come from ([`source`]), what a value must look like
//! ([`value`]), and the per-upstream set with live states ([`set`]).
//!
//! A token value exists in exactly three places: the [`value::Secret`] that
//! owns it, the precomputed [`value::Injected`] form, and the request sent
//! upstream. Everything else (logs, status, metrics, errors) sees only the
//! `sha256:` fingerprint.

pub mod evidence;
pub mod oauth2;
pub mod set;
pub mod source;
pub mod value;

pub use set::{Token, TokenSet, TokenState};
pub use source::SourceError;
pub use value::{fingerprint, Injected, Secret};

use crate::config::Credentials;

/// Reads every source of one upstream. A failed source yields an
/// `unavailable` token and its error (with the token's index); the caller decides whether that fails
/// the whole load (a reload does; the first start does not).
pub async fn load_set(creds: &Credentials) -> (TokenSet, Vec<(usize, SourceError)>) {
    let mut tokens = Vec::with_capacity(creds.tokens.len());
    let mut errors = Vec::new();
    for (index, spec) in creds.tokens.iter().enumerate() {
        let got = match source::read(&spec.source).await {
            Ok((secret, expires)) => match Injected::build(&secret, &creds.inject) {
                Ok(inj) => Ok((secret, inj, expires)),
                Err(error) => Err(SourceError::Value {
                    source_name: spec.source.describe(),
                    error,
                }),
            },
            Err(e) => Err(e),
        };
        let got = got.map_err(|e| {
            let msg = e.to_string();
            errors.push((index, e));
            msg
        });
        tokens.push(Token::new(index, spec.clone(), got, creds.expires_warning));
    }
    (TokenSet { tokens }, errors)
}
