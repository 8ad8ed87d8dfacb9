//! The process-wide state every service shares, and the one way it changes:
//! [`App::reload`] and [`App::refresh_tokens`].
//!
//! | file | what lives there |
//! |---|---|
//! | `mod.rs` | [`App`] (the live generation, the cache, the drain, the OAuth2 tokens, reload records), its start, token metrics |
//! | `reload` | [`App::reload`] and [`App::refresh_tokens`]: build beside, swap whole or keep |
//! | [`probe`] | background token probes and the reload's preflight |
//! | [`lifecycle`] | SIGTERM drain, SIGQUIT hand-over, SIGINT; requests in flight |
//! | [`systemd`] | `Type=notify`: READY, RELOADING, STOPPING, the watchdog |
//! | [`timeline`] | the last state changes (a ring of 64), for `/status` and the status page |

pub(crate) mod ledger;
pub(crate) mod lifecycle;
pub(crate) mod probe;
mod reload;
pub(crate) mod systemd;
pub mod timeline;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::cache::{persist, Cache};
use crate::config;
use crate::generation::{self, Generation, SourcePolicy, UpstreamStatus};
use crate::metrics::metrics;
use crate::tokens::TokenState;

/// Why a reload or token refresh left the generation in force in place.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("config: {}", .0.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Config(config::ConfigErrors),
    #[error(transparent)]
    Build(#[from] generation::BuildErrors),
    #[error(transparent)]
    Preflight(#[from] crate::app::probe::PreflightError),
    /// Token sources that failed during a refresh (what did change was
    /// applied).
    #[error("{0}")]
    Sources(String),
}

/// What started a reload; shown in `/status` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Startup,
    Signal,
    Admin,
    FileChange,
    Refresh,
}

impl Trigger {
    /// The name `/status` and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
            Trigger::FileChange => "file-change",
            Trigger::Refresh => "refresh",
        }
    }
}

/// The result of the last reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// Counts every attempt, applied or not; `graceway reload` waits for it
    /// to move to learn the result of the SIGHUP it sent.
    pub attempt: u64,
    #[serde(with = "crate::clock::rfc3339")]
    pub at: SystemTime,
    pub trigger: Trigger,
    pub ok: bool,
    /// Why it failed, or what changed. Never a token value.
    pub message: String,
    /// The generation in force after this attempt.
    pub generation: u64,
}

pub struct App {
    /// The config and tokens in force. An `ArcSwap` so that the request path
    /// reads it with one atomic load and no lock, and a reload replaces it
    /// whole: requests already running keep the generation they loaded.
    /// Written only by `reload`/`refresh_tokens`, one at a time.
    pub live: ArcSwap<Generation>,
    /// The last reload attempt; read by `/status` and `graceway reload`.
    pub last_reload: ArcSwap<ReloadRecord>,
    /// Per-upstream state that outlives reloads, by upstream name. A mutex
    /// is fine here: it is taken only while building a generation.
    statuses: Mutex<HashMap<String, Arc<UpstreamStatus>>>,
    /// Serialises reloads so that two triggers never build at once.
    reload_lock: tokio::sync::Mutex<()>,
    pub config_path: PathBuf,
    pub started_at: SystemTime,
    /// Last-good copies; outlives reloads (its size is fixed at start).
    pub cache: Cache,
    /// Resident memory and shedding figures, written by the memory watch.
    pub memory: MemoryFigures,
    /// Requests in flight and the drain's state (see [`lifecycle`]); an
    /// `Arc` because each request's in-flight guard holds it.
    pub drain: Arc<lifecycle::Drain>,
    /// What every generation's tokens share: the tokens minted by OAuth2
    /// sources (kept across reloads, see [`crate::tokens::oauth2`]) and the
    /// fleet ledger's queue.
    pub shared: crate::tokens::Shared,
    /// The fleet ledger's Redis side, when the ledger is on (see
    /// [`ledger`]).
    pub ledger: Option<Arc<crate::cache::ledger::LedgerTier>>,
    /// The proxy and admin listeners' connection figures.
    pub listeners: crate::net::listener::Listeners,
    /// Set once the proxy listener was seen accepting (see `/readyz`).
    pub proxy_listening: std::sync::atomic::AtomicBool,
    /// The pid file this process wrote (a reload does not move it).
    pub pid_file: std::sync::OnceLock<PathBuf>,
    /// Descriptor limits as raised at start.
    pub limits: std::sync::OnceLock<crate::net::listener::Limits>,
    /// The last reload run, numbered by start order, so that concurrent
    /// reload requests share one run (see [`App::reload`]).
    last_run: Mutex<(u64, Option<ReloadRecord>)>,
    /// How many reload runs have started.
    runs_started: std::sync::atomic::AtomicU64,
    /// The last state changes (see [`timeline`]), written by the state
    /// watch and by reloads, read by `/status`.
    pub timeline: timeline::Timeline,
}

impl App {
    /// Removes the pid file if it still names this process (a graceful
    /// upgrade hands it to the new process, which rewrites it).
    pub fn remove_pid_file(&self) {
        let Some(pid_file) = self.pid_file.get() else {
            return;
        };
        let ours = std::fs::read_to_string(pid_file)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(pid_file);
        }
    }

    /// Builds the first generation. Token sources that fail leave their
    /// token `unavailable` (see [`SourcePolicy::Tolerate`]).
    pub async fn start(loaded: config::LoadedConfig) -> Result<Arc<App>, generation::BuildErrors> {
        let statuses = Mutex::new(HashMap::new());
        // The fleet ledger's queue exists before the first generation, so
        // that its tokens report to it; its Redis side follows the fleet
        // tier below.
        let ledger_on = loaded.config.cache.redis.as_ref().is_some_and(|r| r.ledger);
        let (outbox, ledger_rx) = if ledger_on {
            let (o, rx) = crate::tokens::ledger::Outbox::new(&ledger::replica_name(), 256);
            (Some(o), Some(rx))
        } else {
            (None, None)
        };
        let shared = crate::tokens::Shared {
            oauth2: Arc::default(),
            ledger: outbox,
        };
        // The fleet tier exists before the first generation too: its
        // shared OAuth2 tokens are read through it (`oauth2.share`).
        let fleet = match &loaded.config.cache.redis {
            None => None,
            Some(r) => match crate::cache::fleet::FleetTier::new(r) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::error!("cache.redis: {e}; the fleet tier is off");
                    None
                }
            },
        };
        share_oauth2(
            &loaded.config,
            fleet.as_ref(),
            &shared.oauth2,
            &ledger::replica_name(),
        )
        .await;
        let gen = {
            let lookup = |name: &str| status_for(&statuses, name);
            generation::build(
                loaded.clone(),
                1,
                None,
                &lookup,
                SourcePolicy::Tolerate,
                false,
                &shared,
            )
            .await?
        };
        let path = loaded.path.clone();
        publish_token_metrics(&gen, None);
        let settings = &loaded.config.cache;
        let writer = settings
            .persist_path
            .as_ref()
            .and_then(|p| match persist::Writer::open(p) {
                Ok(w) => Some(w),
                Err(e) => {
                    log::error!("persistence is off: {e}");
                    None
                }
            });
        let cache = Cache::new(settings.memory_bytes, settings.max_object_bytes, writer);
        let restored = cache.load_persisted(
            &|name: &str| status_for(&statuses, name),
            loaded.config.longest_max_stale(),
        );
        if restored > 0 {
            log::info!("restored {restored} last-good copies from the persist file");
        }
        let ledger = match (&fleet, ledger_rx) {
            (Some(f), Some(rx)) => Some(crate::cache::ledger::LedgerTier::new(f.clone(), rx)),
            _ => None,
        };
        let cache = cache.with_fleet(fleet);
        let app = App {
            last_reload: ArcSwap::from_pointee(ReloadRecord {
                attempt: 0,
                at: SystemTime::now(),
                trigger: Trigger::Startup,
                ok: true,
                message: format!("started with {} ({})", path.display(), loaded.file_hash),
                generation: 1,
            }),
            live: ArcSwap::from_pointee(gen),
            statuses,
            reload_lock: tokio::sync::Mutex::new(()),
            config_path: path,
            started_at: SystemTime::now(),
            cache,
            memory: Default::default(),
            drain: Default::default(),
            shared,
            ledger,
            listeners: Default::default(),
            proxy_listening: Default::default(),
            pid_file: Default::default(),
            limits: Default::default(),
            last_run: Mutex::new((0, None)),
            runs_started: Default::default(),
            timeline: Default::default(),
        };
        Ok(Arc::new(app))
    }

    /// Loads the persist file's copies into the memory tier (at start, or
    /// once the previous process of an upgrade has released the file).
    pub fn restore_persisted(&self) -> usize {
        let max_age = self.live.load().loaded.config.longest_max_stale();
        self.cache
            .load_persisted(&|name: &str| status_for(&self.statuses, name), max_age)
    }
}

/// Shares the tokens of OAuth2 sources with `oauth2.share` through the
/// fleet tier (see `tokens::oauth2::share`) when `cache.redis.secret_file`
/// is set, whether or not a source shares yet (a reload may turn `share`
/// on). When one does, the tier is connected for the start (at most 2 s),
/// so the first generation's tokens come from the fleet too. `origin` is
/// this process's name in the records it writes. `run` and `graceway
/// check` both come here.
pub async fn share_oauth2(
    config: &config::Config,
    fleet: Option<&Arc<crate::cache::fleet::FleetTier>>,
    minter: &crate::tokens::oauth2::OAuth2Tokens,
    origin: &str,
) {
    let (Some(redis), Some(fleet)) = (&config.cache.redis, fleet) else {
        return;
    };
    let Some(file) = &redis.secret_file else {
        return;
    };
    let key = match config::files::share_key(file) {
        Ok(k) => k,
        Err(e) => {
            log::error!("cache.redis.secret_file: {e}; OAuth2 sources with `share` fetch alone");
            return;
        }
    };
    let store = crate::cache::oauth2::OAuth2Tier::new(fleet.clone());
    match crate::tokens::oauth2::share::Fleet::new(store, &key, origin) {
        Some(f) => minter.share_through(f),
        None => {
            log::error!("cache.redis.secret_file: not a ChaCha20-Poly1305 key; OAuth2 sources with `share` fetch alone");
            return;
        }
    }
    let wanted = config
        .upstreams
        .iter()
        .flat_map(|u| u.credentials.iter().flat_map(|c| c.tokens.iter()))
        .any(|t| matches!(&t.source, config::SourceSpec::OAuth2(o) if o.share));
    if wanted {
        let limit = (redis.timeout * 10).clamp(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(2),
        );
        if !fleet.connect_for_start(limit).await {
            log::warn!(
                "oauth2.share: Redis not reachable within {limit:?} at start; this replica fetches its OAuth2 tokens alone until it is"
            );
        }
    }
}

fn status_for(
    map: &Mutex<HashMap<String, Arc<UpstreamStatus>>>,
    name: &str,
) -> Arc<UpstreamStatus> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(name.to_string())
        .or_insert_with(|| Arc::new(UpstreamStatus::new(name)))
        .clone()
}

/// Sets `token_state`, `token_expiry_timestamp_seconds` and
/// `upstream_client_cert_expiry_timestamp_seconds` for a new generation, removing the series of tokens that no longer exist.
pub fn publish_token_metrics(gen: &Generation, old: Option<&Generation>) {
    let m = metrics();
    if let Some(old) = old {
        for u in &old.upstreams {
            let _ = m
                .upstream_client_cert_expiry_timestamp_seconds
                .remove_label_values(&[&u.config.name]);
            for t in &u.tokens.tokens {
                let idx = t.index.to_string();
                for s in TokenState::ALL {
                    let _ = m
                        .token_state
                        .remove_label_values(&[&u.config.name, &idx, s.as_str()]);
                }
                let _ = m
                    .token_expiry_timestamp_seconds
                    .remove_label_values(&[&u.config.name, &idx]);
                let _ = m
                    .token_renews_itself
                    .remove_label_values(&[&u.config.name, &idx]);
                let _ = m
                    .token_info
                    .remove_label_values(&[&u.config.name, &idx, &t.fingerprint]);
            }
        }
    }
    for u in &gen.upstreams {
        if let Some(c) = &u.client_cert {
            m.upstream_client_cert_expiry_timestamp_seconds
                .with_label_values(&[&u.config.name])
                .set(c.not_after_unix());
        }
        for t in &u.tokens.tokens {
            m.token_info
                .with_label_values(&[&u.config.name, &t.index.to_string(), &t.fingerprint])
                .set(1);
            m.token_renews_itself
                .with_label_values(&[&u.config.name, &t.index.to_string()])
                .set(i64::from(t.renews_itself));
        }
    }
    refresh_token_state_metrics(gen);
}

/// Re-evaluates every token's state gauge (states move with time: a token
/// becomes `expiring`, then `expired`, without any event).
pub fn refresh_token_state_metrics(gen: &Generation) {
    let m = metrics();
    let now = SystemTime::now();
    for u in &gen.upstreams {
        let name = u.config.name.as_str();
        m.upstream_auth_breaker_open
            .with_label_values(&[name])
            .set(i64::from(u.auth.is_open()));
        let notices: Vec<_> = u
            .tokens
            .tokens
            .iter()
            .filter_map(|t| t.evidence.notice())
            .collect();
        m.upstream_deprecated
            .with_label_values(&[name])
            .set(i64::from(notices.iter().any(|n| n.1.deprecated)));
        m.upstream_sunset_timestamp_seconds
            .with_label_values(&[name])
            .set(
                notices
                    .iter()
                    .filter_map(|n| n.1.sunset_at)
                    .min()
                    .unwrap_or(0) as i64,
            );
        for t in &u.tokens.tokens {
            let idx = t.index.to_string();
            match t.evidence.quota() {
                Some((remaining, limit, reset)) => {
                    m.token_quota_remaining
                        .with_label_values(&[name, &idx])
                        .set(remaining.min(i64::MAX as u64) as i64);
                    if let Some(l) = limit {
                        m.token_quota_limit
                            .with_label_values(&[name, &idx])
                            .set(l.min(i64::MAX as u64) as i64);
                    }
                    if let Some(r) =
                        reset.and_then(|r| r.duration_since(std::time::UNIX_EPOCH).ok())
                    {
                        m.token_quota_reset_timestamp_seconds
                            .with_label_values(&[name, &idx])
                            .set(r.as_secs() as i64);
                    }
                }
                None => {
                    let _ = m.token_quota_remaining.remove_label_values(&[name, &idx]);
                    let _ = m.token_quota_limit.remove_label_values(&[name, &idx]);
                    let _ = m
                        .token_quota_reset_timestamp_seconds
                        .remove_label_values(&[name, &idx]);
                }
            }
            let state = t.state(now);
            for s in TokenState::ALL {
                m.token_state
                    .with_label_values(&[&u.config.name, &idx, s.as_str()])
                    .set(i64::from(s == state));
            }
            if let Some(exp) = t.expires_at {
                let secs = exp
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                m.token_expiry_timestamp_seconds
                    .with_label_values(&[&u.config.name, &idx])
                    .set(secs);
            }
        }
    }
}

/// Resident memory and shedding, written by the memory watch
/// (`control::memory`), read by `/status`.
#[derive(Debug, Default)]
pub struct MemoryFigures {
    pub rss: std::sync::atomic::AtomicU64,
    pub shed_entries: std::sync::atomic::AtomicU64,
    pub shed_bytes: std::sync::atomic::AtomicU64,
    pub last_shed_unix: std::sync::atomic::AtomicU64,
}
