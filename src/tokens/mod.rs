//! Tokens: where they come from ([`source`]), what a value must look like
//! ([`value`]), and the per-upstream set with live states ([`set`]).
//!
//! A token value exists in exactly three places: the [`value::Secret`] that
//! owns it, the precomputed [`injected::Injected`] form, and the request sent
//! upstream. Everything else (logs, status, metrics, errors) sees only the
//! `sha256:` fingerprint.

pub mod choice;
pub mod evidence;
mod fleet;
pub mod injected;
pub mod ledger;
pub mod oauth2;
pub mod pool;
pub mod reflect;
pub mod set;
pub mod sigv4;
pub mod source;
pub mod value;

pub use injected::Injected;
pub use set::{Token, TokenSet, TokenState};
pub use source::SourceError;
pub use value::{fingerprint, Secret};

use crate::config::Credentials;

/// Reads and checks the token of one source, with the expiry the source
/// itself reports (OAuth2's `expires_in`), if any. OAuth2 builds on the
/// plain sources (its client secret is a file or a variable), so the choice
/// is made here, above both.
/// `upstream` and `index` label an OAuth2 fetch in the metrics.
pub async fn read(
    spec: &crate::config::SourceSpec,
    upstream: &str,
    index: usize,
    minter: &oauth2::OAuth2Tokens,
) -> Result<(Secret, Option<std::time::SystemTime>), SourceError> {
    match spec {
        crate::config::SourceSpec::OAuth2(o) => minter.read(o, upstream, index).await,
        other => source::read_value(other).await.map(|s| (s, None)),
    }
}

/// What the tokens of every generation share with the process: the OAuth2
/// tokens minted so far (a reload reads them instead of minting), and the
/// fleet ledger's queue when the ledger is on.
#[derive(Clone, Default)]
pub struct Shared {
    pub oauth2: std::sync::Arc<oauth2::OAuth2Tokens>,
    pub ledger: Option<ledger::Outbox>,
}

/// Reads every source of one upstream. A failed source yields an
/// `unavailable` token and its error (with the token's index); the caller decides whether that fails
/// the whole load (a reload does; the first start does not).
pub async fn load_set(
    upstream: &str,
    creds: &Credentials,
    shared: &Shared,
    rejected_ttl: std::time::Duration,
) -> (TokenSet, Vec<(usize, SourceError)>) {
    let minter = &shared.oauth2;
    let signs = matches!(creds.inject, crate::config::Injection::SigV4(_));
    let structured = creds.inject.structured();
    let mut tokens = Vec::with_capacity(creds.tokens.len());
    let mut errors = Vec::new();
    for (index, spec) in creds.tokens.iter().enumerate() {
        let read = match (signs, structured) {
            (true, _) => sigv4::read(&spec.source).await,
            (false, true) => source::read_structured(&spec.source)
                .await
                .map(|s| (s, None)),
            (false, false) => read(&spec.source, upstream, index, minter).await,
        };
        let got = match read {
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
        let t = Token::new(index, spec.clone(), got, creds.expires_warning).minted_by(minter);
        tokens.push(match &shared.ledger {
            Some(outbox) => t.in_fleet(outbox, rejected_ttl),
            None => t,
        });
    }
    let pool = pool::Pool::new(upstream, tokens.len());
    (TokenSet { tokens, pool }, errors)
}
