//! Upstreams and tokens built without I/O, for the unit tests of
//! `generation::upstream` and of the modules that read an upstream
//! (`admin::status`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Breaker, InjectTarget, Upstream, UpstreamStatus};
use crate::config::{Injection, SourceSpec, TokenSpec};
use crate::tokens::{Injected, Secret, Token, TokenSet};

/// A header token with `value`, expiring at `expires_at` if given
/// (`expiring` within an hour of it).
pub(crate) fn token(index: usize, value: &str, expires_at: Option<SystemTime>) -> Token {
    let secret = Secret::parse(value).expect("a valid test token");
    let how = Injection::header("Authorization", "Bearer ");
    let injected = Injected::build(&secret, &how).expect("injectable");
    Token::new(
        index,
        TokenSpec {
            source: SourceSpec::Env(format!("TOKEN_{index}")),
            expires_at: None,
        },
        Ok((secret, injected, expires_at)),
        Duration::from_secs(3600),
    )
}

/// A token whose source failed.
pub(crate) fn unavailable(index: usize) -> Token {
    Token::new(
        index,
        TokenSpec {
            source: SourceSpec::Env(format!("TOKEN_{index}")),
            expires_at: None,
        },
        Err(format!("environment variable TOKEN_{index} is not set")),
        Duration::from_secs(3600),
    )
}

/// An upstream `name` on 127.0.0.1:1 with `tokens` injected as a header,
/// or no credentials at all (`None`). Its status is new: name each
/// test's upstream apart, as its metrics are process-wide.
pub(crate) fn upstream(name: &str, tokens: Option<Vec<Token>>) -> Upstream {
    let credentials = if tokens.is_some() {
        "{ tokens: [ { env: TOKEN_0 } ] }"
    } else {
        "none"
    };
    let yaml = format!(
        "upstreams:\n  - {{ name: {name}, url: \"http://127.0.0.1:1\", credentials: {credentials} }}\n"
    );
    let mut config =
        crate::config::parse(&yaml, std::path::Path::new("/")).expect("a valid test config");
    let config = config.upstreams.remove(0);
    let tokens = TokenSet {
        tokens: tokens.unwrap_or_default(),
        ..Default::default()
    };
    let h = &config.health;
    Upstream {
        peer: arc_swap::ArcSwap::from_pointee(pingora::upstreams::peer::HttpPeer::new(
            "127.0.0.1:1",
            false,
            String::new(),
        )),
        addresses: arc_swap::ArcSwap::from_pointee(crate::generation::addresses::Addresses::new(
            vec!["127.0.0.1:1".parse().expect("an address")],
        )),
        resolve_now: Default::default(),
        host_header: http::HeaderValue::from_static("127.0.0.1:1"),
        allow: http::HeaderValue::from_static("GET"),
        inject: config
            .credentials
            .as_ref()
            .map(|_| InjectTarget::new(&Injection::header("authorization", "Bearer "))),
        reflections: crate::tokens::reflect::Reflections::new(&tokens),
        tokens,
        auth: Breaker::new(1, h.retry_after, h.max_retry_after),
        auth_trials: Default::default(),
        trial_grant: Default::default(),
        client_cert: None,
        status: Arc::new(UpstreamStatus::new(name)),
        config,
    }
}
