//! The control plane's background service: SIGHUP, the pid file, the token
//! file watcher and timed refreshes of `command` sources.
//!
//! Why a Pingora background service: Pingora forks when it daemonizes, so
//! signal handlers and watcher threads must be set up after `run` starts
//! the services, in the process that will serve. The proxy and admin
//! listeners depend on this service, so they only accept connections once
//! SIGHUP is handled (before that, SIGHUP's default action would kill the
//! process).

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
        write_pid_file(&self.app.live.load().loaded.config.pid_file);
        let (events_tx, mut events) = mpsc::channel::<()>(16);
        let mut watcher = TokenWatcher::new(events_tx);
        watcher.watch(&self.app.live.load().loaded.config.token_files());
        ready.notify_ready();
        log::info!("graceway ready (pid {})", std::process::id());

        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut refresh = RefreshClock::default();
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    log::info!("SIGHUP: reloading {}", self.app.config_path.display());
                    self.app.reload(Trigger::Signal).await;
                    watcher.watch(&self.app.live.load().loaded.config.token_files());
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
                    self.app.store.maintain();
                    if refresh.due(&self.app) {
                        self.app.refresh_tokens(Trigger::Refresh).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        let pid_file = self.app.live.load().loaded.config.pid_file.clone();
        if std::fs::read_to_string(&pid_file)
            .is_ok_and(|s| s.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(pid_file);
        }
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
}

impl TokenWatcher {
    fn new(tx: mpsc::Sender<()>) -> TokenWatcher {
        TokenWatcher {
            tx,
            inner: None,
            dirs: HashSet::new(),
        }
    }

    /// Watches exactly the folders of `files`; call again after a reload.
    fn watch(&mut self, files: &[PathBuf]) {
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        if dirs == self.dirs && self.inner.is_some() {
            return;
        }
        let tx = self.tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if !ev.kind.is_access() {
                    let _ = tx.try_send(());
                }
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
    }
}

/// When each `command` source with a `refresh` interval is next due.
#[derive(Default)]
struct RefreshClock {
    /// (upstream name, token index) -> last refresh.
    last: HashMap<(String, usize), Instant>,
}

impl RefreshClock {
    fn due(&mut self, app: &App) -> bool {
        let gen = app.live.load();
        let now = Instant::now();
        let mut due = false;
        for u in &gen.upstreams {
            for t in &u.tokens.tokens {
                if let SourceSpec::Command {
                    refresh: Some(every),
                    ..
                } = &t.spec.source
                {
                    let key = (u.config.name.clone(), t.index);
                    let last = *self.last.entry(key.clone()).or_insert(now);
                    if now.duration_since(last) >= *every {
                        self.last.insert(key, now);
                        due = true;
                    }
                }
            }
        }
        due
    }
}
