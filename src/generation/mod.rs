//! One generation of config and tokens: everything the request path reads,
//! built and checked off the request path, then swapped in whole.
//!
//! A request loads the current [`Generation`] once (an `Arc` from the
//! `ArcSwap` in [`crate::app::App`]) and keeps it to the end, retries
//! included. So a request sees the old tokens or the new ones, never a mix,
//! and a reload never waits for requests or makes them wait.

//!
//! | file | what lives there |
//! |---|---|
//! | `mod.rs` | [`Generation`] and [`build`]: DNS, CA files, client certificates, token sources |
//! | [`upstream`] | [`Upstream`] (per generation) and [`UpstreamStatus`] (outlives them) |
//! | [`router`] | host and longest-prefix routing |
//! | [`inject`] | header and query injection targets |
//! | [`sign`] | AWS SigV4 signing of the request sent |
//! | [`breaker`] | the circuit breaker, used twice per upstream: health and auth |

pub mod addresses;
pub mod breaker;
pub(crate) mod inject;
pub(crate) mod router;
pub(crate) mod sign;
pub(crate) mod upstream;

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;

pub use breaker::Breaker;
pub use inject::InjectTarget;
pub use router::Router;
pub use upstream::{Upstream, UpstreamStatus};

use crate::config::{LoadedConfig, UpstreamConfig};
use crate::net::client_cert::ClientCert;
use crate::tokens::{self, TokenSet};
use addresses::Addresses;

/// Everything one request needs, swapped atomically on reload.
#[derive(Debug)]
pub struct Generation {
    /// Counts reloads that were applied (1 = the config graceway started with).
    pub number: u64,
    pub loaded: LoadedConfig,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    pub loaded_at: SystemTime,
    /// Token sources that failed but did not fail the build (see
    /// [`SourcePolicy`]); empty when every source was read.
    pub warnings: Vec<String>,
}

/// Why a generation could not be built: one line per problem, each
/// naming its config path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct BuildErrors(pub Vec<String>);

/// How strictly token sources are judged while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePolicy {
    /// First start: a failed source makes that token `unavailable` and the
    /// process starts anyway (readiness reports it). A sidecar that refuses
    /// to start because a secret store is slow only makes things worse.
    Tolerate,
    /// Reload: any failed source fails the reload and the old state stays.
    Require,
    /// Token refresh (a watched file changed, a command or OAuth2 refresh
    /// came due): a failed source keeps its previous value, the others
    /// apply; the failure is reported.
    KeepPrevious,
}

/// How long the fleet keeps a token's rejection unless a replica renews
/// it: the auth breaker's longest window (each replica's trials renew a
/// rejection that still holds), at least 5 s.
fn ledger_ttl(h: &crate::config::HealthPolicy) -> std::time::Duration {
    h.max_retry_after.max(std::time::Duration::from_secs(5))
}

/// Builds a generation from a loaded config: resolves addresses, loads CA
/// files and reads every token source. `previous` lends each upstream its
/// long-lived status (matched by name) and, when `keep_token_states`, the
/// rejection state of tokens whose value did not change. OAuth2 sources
/// read their tokens through `shared.oauth2` (cached there across
/// generations); with the fleet ledger on, every token reports to
/// `shared.ledger`.
pub async fn build(
    loaded: LoadedConfig,
    number: u64,
    previous: Option<&Generation>,
    statuses: &(dyn Fn(&str) -> Arc<UpstreamStatus> + Sync),
    policy: SourcePolicy,
    keep_token_states: bool,
    shared: &tokens::Shared,
) -> Result<Generation, BuildErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut upstreams = Vec::new();
    for (i, u) in loaded.config.upstreams.iter().enumerate() {
        let at = format!("upstreams[{i}]");
        let peer = make_peer(u)
            .await
            .map_err(|e| format!("{at}.{}: {e}", e.field()));
        let (tokens, inject) = match &u.credentials {
            None => (TokenSet::default(), None),
            Some(cr) => {
                let (mut set, errs) =
                    tokens::load_set(&u.name, cr, shared, ledger_ttl(&u.health)).await;
                for (j, e) in errs {
                    let field = format!("{at}.credentials.tokens[{j}]");
                    match policy {
                        SourcePolicy::Require => errors.push(format!("{field}: {e}")),
                        SourcePolicy::Tolerate => {
                            log::error!("{field}: token source failed, token unavailable: {e}");
                            warnings.push(format!("{field}: {e}"));
                        }
                        SourcePolicy::KeepPrevious => {
                            let kept = previous
                                .and_then(|g| g.upstream_named(&u.name))
                                .and_then(|p| p.tokens.tokens.get(j))
                                .filter(|p| p.spec == set.tokens[j].spec)
                                .and_then(|p| p.carry_over());
                            match kept {
                                Some(t) => {
                                    set.tokens[j] = t;
                                    warnings.push(format!(
                                        "{field}: {e} (the previous value stays in use)"
                                    ));
                                }
                                None => warnings.push(format!("{field}: {e} (token unavailable)")),
                            }
                        }
                    }
                }
                let target = InjectTarget::new(&cr.inject);
                (set, Some(target))
            }
        };
        if keep_token_states {
            if let Some(prev) = previous.and_then(|g| g.upstream_named(&u.name)) {
                for t in &tokens.tokens {
                    if let Some(old) = prev.tokens.tokens.get(t.index) {
                        t.inherit_state(old);
                    }
                }
            }
        }
        let host_header = match HeaderValue::from_str(&u.url.host_header) {
            Ok(v) => v,
            Err(_) => {
                errors.push(format!(
                    "{at}.url: host `{}` is not a valid Host header",
                    u.url.host
                ));
                continue;
            }
        };
        let (mut peer, addrs) = match peer {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let client_cert = match client_cert(u, &at, policy, previous) {
            Ok((cert, warning)) => {
                warnings.extend(warning);
                cert
            }
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        peer.client_cert_key = client_cert.as_ref().map(|c| c.key.clone());
        let status = statuses(&u.name);
        let h = &u.health;
        status
            .health
            .configure(h.open_after, h.retry_after, h.max_retry_after);
        upstreams.push(Arc::new(Upstream {
            config: u.clone(),
            peer: arc_swap::ArcSwap::from_pointee(peer),
            addresses: arc_swap::ArcSwap::from_pointee(Addresses::new(addrs)),
            resolve_now: Default::default(),
            host_header,
            allow: HeaderValue::from_str(
                &u.methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
            .unwrap_or(HeaderValue::from_static("GET")),
            inject,
            reflections: crate::tokens::reflect::Reflections::new(&tokens),
            tokens,
            auth: Breaker::new(1, h.retry_after, h.max_retry_after),
            auth_trials: Default::default(),
            trial_grant: Default::default(),
            client_cert,
            status,
        }));
    }
    if !errors.is_empty() {
        return Err(BuildErrors(errors));
    }
    Ok(Generation {
        number,
        warnings,
        router: Router::new(&loaded.config.upstreams),
        loaded,
        upstreams,
        loaded_at: SystemTime::now(),
    })
}

impl Generation {
    pub fn upstream_named(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.config.name == name)
    }
}

/// `tls.client_cert` and `tls.client_key`, read and checked
/// ([`crate::net::client_cert::load`]). On a token refresh (a watched file
/// changed) a pair that does not load keeps the previous generation's, with
/// a warning: a broken file never takes the working certificate away.
#[allow(clippy::type_complexity)]
fn client_cert(
    u: &UpstreamConfig,
    at: &str,
    policy: SourcePolicy,
    previous: Option<&Generation>,
) -> Result<(Option<Arc<ClientCert>>, Option<String>), String> {
    let Some(files) = &u.client_cert else {
        return Ok((None, None));
    };
    let e = match crate::net::client_cert::load(&files.cert, &files.key) {
        Ok(c) => return Ok((Some(Arc::new(c)), None)),
        Err(e) => format!("{at}.{}: {e}", e.field()),
    };
    let kept = previous
        .and_then(|g| g.upstream_named(&u.name))
        .filter(|p| p.config.client_cert.as_ref() == Some(files))
        .and_then(|p| p.client_cert.clone());
    match (policy, kept) {
        (SourcePolicy::KeepPrevious, Some(old)) => {
            let w = format!(
                "{e} (the previous certificate {} stays in use)",
                old.fingerprint
            );
            Ok((Some(old), Some(w)))
        }
        _ => Err(e),
    }
}

/// Resolves the upstream's address now (Pingora's `HttpPeer::new` would do
/// a blocking lookup and panic on failure) and sets TLS and timeouts.
/// The peer is at the first address; every address comes along.
async fn make_peer(
    u: &UpstreamConfig,
) -> Result<(HttpPeer, Vec<std::net::SocketAddr>), crate::net::outbound::PeerError> {
    let addrs = crate::net::outbound::resolve(&u.url).await?;
    let mut peer = crate::net::outbound::peer_at(
        addrs[0],
        &u.url,
        u.tls.verify,
        u.tls.ca_file.as_deref(),
        u.timeouts.connect,
        u.timeouts.read,
    )?;
    peer.options.write_timeout = Some(u.timeouts.write);
    set_http_version(&mut peer, u.http, u.url.tls);
    Ok((peer, addrs))
}

/// Streams per HTTP/2 connection to an upstream: requests in flight share
/// connections up to this many each (servers commonly allow 100-128).
const H2_STREAMS: usize = 100;

/// `upstreams[].http` on the peer: the ALPN offered on `https://`, and on
/// `http://` HTTP/2 with prior knowledge (h2c) only when asked for.
pub(crate) fn set_http_version(peer: &mut HttpPeer, http: crate::config::HttpVersion, tls: bool) {
    use crate::config::HttpVersion;
    use pingora::protocols::ALPN;
    peer.options.alpn = match (http, tls) {
        (HttpVersion::Auto, true) => ALPN::H2H1,
        (HttpVersion::Auto, false) | (HttpVersion::H1, _) => ALPN::H1,
        (HttpVersion::H2, _) => ALPN::H2,
    };
    peer.options.max_h2_streams = H2_STREAMS;
}
