//! The control plane's background service: SIGHUP, the pid file, the token
//! file watcher and timed refreshes of `command` sources.
//!
//! Why a Pingora background service: Pingora forks when it daemonizes, so
//! signal handlers and watcher threads must be set up after `run` starts
//! the services, in the process that will serve. The proxy and admin
//! listeners depend on this service, so they only accept connections once
//! SIGHUP is handled (before that, SIGHUP's default action would kill the
//! process).
//!
//! Beside it: [`memory`] (resident-memory watch, shedding above
//! `memory.soft_limit`) and [`webhook`] (state-change detection and the
//! JSON POSTs), both ticked by this service.

pub(crate) mod memory;
pub(crate) mod webhook;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::app::{App, Trigger};
use crate::config::SourceSpec;

pub struct Control {
    pub app: Arc<App>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot handle SIGHUP, reload by signal is off: {e}");
                ready.notify_ready();
                return;
            }
        };
        let pid_file = self.app.live.load().loaded.config.pid_file.clone();
        write_pid_file(&pid_file);
        let _ = self.app.pid_file.set(pid_file);
        if let Some(fleet) = self.app.cache.fleet() {
            fleet.start();
        }
        let app = self.app.clone();
        self.app.cache.start_persist(move || {
            let restored = app.restore_persisted();
            log::info!("restored {restored} last-good copies left by the previous process");
        });
        let (events_tx, mut events) = mpsc::channel::<()>(16);
        let mut watcher = TokenWatcher::new(events_tx);
        watcher.watch(&self.app.live.load().loaded.config.token_files());
        // Before the proxy takes its first request: what the fleet knows
        // about this replica's tokens (bounded; see `app::ledger`).
        crate::app::ledger::start(&self.app).await;
        let mut probes = ProbeSupervisor::default();
        probes.sync(&self.app);
        ready.notify_ready();
        log::info!("graceway ready (pid {})", std::process::id());
        let cfg = &self.app.live.load().loaded.config;
        tokio::spawn(crate::app::systemd::announce_ready([
            cfg.listen,
            cfg.admin.listen,
        ]));

        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut refresh = RefreshClock::default();
        let mut memory = crate::control::memory::MemoryWatch::default();
        let mut states = crate::control::webhook::StateWatch::default();
        let mut resolver = Resolver::default();
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    log::info!("SIGHUP: reloading {}", self.app.config_path.display());
                    self.app.reload(Trigger::Signal).await;
                }
                Some(()) = events.recv() => {
                    // Let a burst of events (editors write, rename, chmod;
                    // Kubernetes swaps a symlink) settle before reading.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while events.try_recv().is_ok() {}
                    if let Some(r) = self.app.refresh_tokens(Trigger::FileChange).await {
                        log::info!("token file change: {}", if r.ok { "applied" } else { "refused, old tokens stay" });
                    }
                }
                _ = tick.tick() => {
                    self.app.cache.maintain();
                    memory.tick(
                        &self.app.cache,
                        &self.app.memory,
                        self.app.live.load().loaded.config.memory.soft_limit,
                    );
                    states.tick(&self.app.live.load(), &self.app.timeline);
                    resolver.tick(&self.app.live.load_full()).await;
                    if refresh.due(&self.app) {
                        self.app.refresh_tokens(Trigger::Refresh).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
            // Whatever changed the generation (signal, admin, file, refresh),
            // follow it: watch its token folders, probe its upstreams.
            if probes.sync(&self.app) {
                watcher.watch(&self.app.live.load().loaded.config.token_files());
            }
        }
        probes.stop();
        self.app.remove_pid_file();
    }
}

fn write_pid_file(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
        log::error!(
            "cannot write pid file {}: {e} (`graceway reload` will not find this process)",
            path.display()
        );
    }
}

/// Watches the folders that hold token files. A folder, not the file:
/// editors replace files by rename and Kubernetes swaps the `..data`
/// symlink of a Secret volume, and both only show as events in the folder.
struct TokenWatcher {
    tx: mpsc::Sender<()>,
    inner: Option<notify::RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
    names: HashSet<std::ffi::OsString>,
}

impl TokenWatcher {
    fn new(tx: mpsc::Sender<()>) -> TokenWatcher {
        TokenWatcher {
            tx,
            inner: None,
            dirs: HashSet::new(),
            names: HashSet::new(),
        }
    }

    /// Watches exactly the folders of `files`; call again after a reload.
    /// Only events on the token files themselves, or on the hidden `..`
    /// entries through which Kubernetes swaps a Secret volume, count: other
    /// files in the folder (a log file, say) must not trigger re-reads.
    fn watch(&mut self, files: &[PathBuf]) {
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        let names: HashSet<std::ffi::OsString> = files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
            .collect();
        if dirs == self.dirs && names == self.names && self.inner.is_some() {
            return;
        }
        let tx = self.tx.clone();
        let wanted = names.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if ev.kind.is_access() {
                return;
            }
            let relevant = ev.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| wanted.contains(n) || n.to_string_lossy().starts_with(".."))
            });
            if relevant {
                let _ = tx.try_send(());
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                log::error!("token file watching is off: {e}");
                return;
            }
        };
        for d in &dirs {
            if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                log::error!(
                    "cannot watch {}: {e}; changes there need a reload",
                    d.display()
                );
            }
        }
        self.inner = Some(watcher);
        self.dirs = dirs;
        self.names = names;
    }
}

/// Looks each upstream's host up again every `dns_refresh`, and at once
/// after a failed connect, so that an API that moves its address needs no
/// reload. A changed address is swapped into the upstream's peer (new
/// connections go there; pooled ones to the old address age out).
#[derive(Default)]
struct Resolver {
    last: HashMap<String, Instant>,
}

impl Resolver {
    async fn tick(&mut self, gen: &crate::generation::Generation) {
        let now = Instant::now();
        for u in &gen.upstreams {
            let cfg = &u.config;
            if cfg.url.host.parse::<std::net::IpAddr>().is_ok() {
                continue;
            }
            let last = *self.last.entry(cfg.name.clone()).or_insert(now);
            let scheduled =
                !cfg.dns_refresh.is_zero() && now.duration_since(last) >= cfg.dns_refresh;
            let after_failure = u
                .resolve_now
                .swap(false, std::sync::atomic::Ordering::Relaxed);
            if !scheduled && !after_failure {
                continue;
            }
            self.last.insert(cfg.name.clone(), now);
            let lookup = tokio::net::lookup_host((cfg.url.host.as_str(), cfg.url.port));
            let addrs = match tokio::time::timeout(Duration::from_secs(2), lookup).await {
                Ok(Ok(addrs)) => Some(addrs.collect::<Vec<_>>()).filter(|a| !a.is_empty()),
                Ok(Err(e)) => {
                    log::warn!(
                        "upstream {}: cannot resolve {}: {e}; keeping the last address",
                        cfg.name,
                        cfg.url.host
                    );
                    None
                }
                Err(_) => {
                    log::warn!(
                        "upstream {}: resolving {} timed out; keeping the last address",
                        cfg.name,
                        cfg.url.host
                    );
                    None
                }
            };
            let Some(addrs) = addrs else {
                continue;
            };
            let current = u.addresses.load_full();
            let same = |a: &[std::net::SocketAddr], b: &[std::net::SocketAddr]| {
                a.len() == b.len() && a.iter().all(|x| b.contains(x))
            };
            if same(current.all(), &addrs) {
                continue;
            }
            let list = |a: &[std::net::SocketAddr]| {
                a.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            log::info!(
                "upstream {}: {} now resolves to {} (was {}){}",
                cfg.name,
                cfg.url.host,
                list(&addrs),
                list(current.all()),
                if after_failure {
                    ", looked up after a failed connect"
                } else {
                    ""
                }
            );
            let mut peer = pingora::upstreams::peer::HttpPeer::clone(&u.peer.load());
            peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(addrs[0]);
            u.peer.store(Arc::new(peer));
            u.addresses
                .store(Arc::new(crate::generation::addresses::Addresses::new(
                    addrs,
                )));
        }
    }
}

/// When sources are due to be read again: a `command` with `refresh` at
/// that interval, an `oauth2` source at its refresh point, and any
/// `command` or `oauth2` source that failed (its token `unavailable`)
/// with backoff, 2 s doubling to 5 min.
#[derive(Default)]
struct RefreshClock {
    /// (upstream name, token index) -> (last attempt, consecutive failures).
    last: HashMap<(String, usize), (Instant, u32)>,
}

impl RefreshClock {
    fn due(&mut self, app: &App) -> bool {
        let gen = app.live.load();
        let now = Instant::now();
        let mut due = false;
        for u in &gen.upstreams {
            for t in &u.tokens.tokens {
                let key = (u.config.name.clone(), t.index);
                let (last, failures) = *self.last.entry(key.clone()).or_insert((now, 0));
                let failed = t.injected.is_none();
                let failures = if failed { failures } else { 0 };
                let retry = crate::clock::backoff(
                    Duration::from_secs(2),
                    failures + 1,
                    Duration::from_secs(300),
                );
                let is_due = match &t.spec.source {
                    SourceSpec::OAuth2(o) => app.shared.oauth2.due(o),
                    SourceSpec::Command { refresh, .. } => {
                        (failed && now.duration_since(last) >= retry)
                            || refresh.is_some_and(|every| now.duration_since(last) >= every)
                    }
                    _ => false,
                };
                if is_due {
                    self.last
                        .insert(key, (now, if failed { failures + 1 } else { 0 }));
                    due = true;
                } else if !failed && failures != 0 {
                    self.last.insert(key, (last, 0));
                }
            }
        }
        due
    }
}

/// A probe loop or a trial loop, as one task type.
fn futures_boxed(
    f: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(f)
}

/// One task per upstream for the generation in force: its probe loop
/// when it has a `probe`, else its background trial loop.
#[derive(Default)]
struct ProbeSupervisor {
    generation: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ProbeSupervisor {
    /// Restarts the probe tasks when the generation changed; true then.
    fn sync(&mut self, app: &Arc<App>) -> bool {
        let gen = app.live.load_full();
        if gen.number == self.generation {
            return false;
        }
        self.stop();
        self.generation = gen.number;
        for u in &gen.upstreams {
            let fleet = crate::app::ledger::FleetTrials::of(app);
            let app = app.clone();
            let live = Arc::new(move || app.live.load_full());
            let name = u.config.name.clone();
            self.tasks.push(tokio::spawn(if u.probe().is_some() {
                futures_boxed(crate::app::probe::run(live, gen.number, name, fleet))
            } else {
                futures_boxed(crate::app::probe::trials(live, gen.number, name, fleet))
            }));
        }
        true
    }

    fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}
