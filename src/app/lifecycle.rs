//! How graceway stops and hands over, without dropping a request.
//!
//! Pingora handles the signals itself, but its SIGTERM sequence stops
//! accepting, then sleeps the whole grace period whatever is in flight,
//! then cancels what is left at its next poll (pingora-core's `main_loop`
//! and `run`). graceway gives Pingora its own [`Signals`] watch and keeps
//! its own count of requests in flight, so that:
//!
//! - **SIGTERM**: readiness turns 503 and every answer says
//!   `Connection: close` (clients stop reusing connections); new
//!   connections are still accepted for `server.grace_period` (the accept
//!   window, for a sidecar whose application is stopped at the same moment
//!   and still sends requests); then the listeners close and idle
//!   keep-alive connections are dropped (Pingora), and graceway exits as
//!   soon as no request is in flight, or after
//!   `server.graceful_shutdown_timeout` at the latest. The persist writer
//!   is flushed and the pid file removed first.
//! - **SIGQUIT** (graceful upgrade, with `graceway run --upgrade` waiting):
//!   the same drain, after Pingora has handed the listening sockets to the
//!   new process and kept accepting for its 5 s hand-over; the old process
//!   releases the persist file at exit, and the new one opens it then
//!   (see `cache::persist`).
//! - **SIGINT**: stop at once (Pingora's fast shutdown).
//!
//! Under systemd (`Type=notify`, `NOTIFY_SOCKET` set) graceway says
//! `READY=1` once both listeners accept connections, `RELOADING=1` with
//! `MONOTONIC_USEC` then `READY=1` around a config reload, `STOPPING=1` on
//! SIGTERM, SIGQUIT or SIGINT, and `WATCHDOG=1` at half of `WatchdogSec`.
//! Without `NOTIFY_SOCKET` every call is a no-op ([`super::systemd`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::app::App;

/// How long the requests cut at the drain deadline get to write their 503.
const CUT_ANSWER_LIMIT: Duration = Duration::from_millis(500);

/// Pingora keeps accepting for this long after handing the sockets over in
/// an upgrade (pingora-core's `CLOSE_TIMEOUT`).
const UPGRADE_HANDOVER: Duration = Duration::from_secs(5);

/// How long the persist writer may take to flush at exit.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// The drain's state, owned by [`App`]: requests in flight, whether the
/// process is draining, whether the deadline has cut what is left. The
/// request path reads and bumps relaxed atomics only; the drain watch
/// sleeps on a condition variable that the last request to finish wakes
/// (no polling), and only while draining is the lock ever taken.
#[derive(Debug, Default)]
pub struct Drain {
    /// Requests between their parsed header and their last byte.
    in_flight: AtomicUsize,
    /// Set from the first SIGTERM or SIGQUIT on.
    draining: AtomicBool,
    /// Set when `graceful_shutdown_timeout` has passed with requests still
    /// in flight: their upstream connections are being closed, and each is
    /// answered 503 with `Connection: close` (see `proxy::fail_to_proxy`).
    cut: AtomicBool,
    /// The drain watch waits here for the count to reach zero.
    idle_lock: Mutex<()>,
    idle: Condvar,
}

impl Drain {
    /// Counts one request in flight until the guard is dropped (it lives
    /// in the request's context, which Pingora drops when the request is
    /// done, however it ends).
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the process is shutting down or handing over: answers say
    /// `Connection: close`, readiness is 503.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the drain deadline has passed (requests are being cut).
    pub fn cutting(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Waits until no request is in flight or `deadline`; `true`: idle.
    fn wait_idle(&self, deadline: Instant) -> bool {
        let mut guard = self.idle_lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = match self.idle.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The last request of a drain is done: wake the watch. Taking the
    /// lock orders this wake after the watch's check of the count.
    fn finished_one(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.draining() {
            let _guard = self.idle_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.idle.notify_all();
        }
    }
}

/// One request in flight (see [`Drain::start`]).
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished_one();
    }
}

/// graceway's answer to Pingora's question "which shutdown, and when?".
pub struct Signals {
    pub app: Arc<App>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot listen for SIGTERM/SIGQUIT/SIGINT: stopping");
            return ShutdownSignal::FastShutdown;
        };
        let server = self.app.live.load().loaded.config.server.clone();
        let timeout = server.graceful_shutdown_timeout;
        let stopping = || crate::app::systemd::notify(&[sd_notify::NotifyState::Stopping]);
        tokio::select! {
            _ = int.recv() => {
                stopping();
                log::info!("SIGINT: stopping at once");
                ShutdownSignal::FastShutdown
            }
            _ = term.recv() => {
                stopping();
                self.app.drain.begin();
                if !server.grace_period.is_zero() {
                    log::info!(
                        "SIGTERM: draining; still accepting connections for {:?} (server.grace_period)",
                        server.grace_period
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(server.grace_period) => {}
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                    }
                }
                log::info!(
                    "SIGTERM: no longer accepting; {} request(s) in flight, waiting at most {timeout:?}",
                    self.app.drain.in_flight()
                );
                exit_when_idle(self.app.clone(), Duration::from_millis(100), timeout);
                ShutdownSignal::GracefulTerminate
            }
            _ = quit.recv() => {
                stopping();
                self.app.drain.begin();
                log::info!(
                    "SIGQUIT: handing the listening sockets to the new process, then draining (at most {timeout:?})"
                );
                exit_when_idle(self.app.clone(), UPGRADE_HANDOVER + Duration::from_millis(200), timeout);
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// After `delay` (the listeners are closed by then), waits until no request
/// is in flight and exits the process; after `timeout` it leaves the rest to
/// Pingora, which cancels what is still running.
fn exit_when_idle(app: Arc<App>, delay: Duration, timeout: Duration) {
    let spawned = std::thread::Builder::new()
        .name("graceway-drain".into())
        .spawn(move || {
            std::thread::sleep(delay);
            let drain = &app.drain;
            if !drain.wait_idle(Instant::now() + timeout) {
                drain.cut.store(true, Ordering::Relaxed);
                let closed = close_upstream_connections(&app);
                log::warn!(
                    "{} request(s) still in flight after server.graceful_shutdown_timeout ({timeout:?}): cut now ({closed} upstream connection(s) closed; each is answered 503 with Connection: close)",
                    drain.in_flight()
                );
                drain.wait_idle(Instant::now() + CUT_ANSWER_LIMIT);
            }
            finish(&app);
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the drain watch ({e}); Pingora's grace period applies");
    }
}

/// Shuts the read side of every socket of this process whose peer is an
/// upstream's address, so requests waiting on an upstream end now (Pingora
/// then calls `fail_to_proxy`, which answers 503). Found through
/// `/proc/self/fd` at the deadline only: nothing is registered per request.
fn close_upstream_connections(app: &App) -> usize {
    use nix::sys::socket::{getpeername, shutdown, Shutdown, SockaddrStorage};
    let gen = app.live.load();
    let peers: Vec<std::net::SocketAddr> = gen
        .upstreams
        .iter()
        .flat_map(|u| u.addresses.load().all().to_vec())
        .collect();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut closed = 0;
    for fd in fds
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(addr) = getpeername::<SockaddrStorage>(fd) else {
            continue;
        };
        let inet = addr
            .as_sockaddr_in()
            .map(|a| std::net::SocketAddr::from(std::net::SocketAddrV4::from(*a)))
            .or_else(|| {
                addr.as_sockaddr_in6()
                    .map(|a| std::net::SocketAddr::from(std::net::SocketAddrV6::from(*a)))
            });
        if inet.is_some_and(|a| peers.contains(&a)) && shutdown(fd, Shutdown::Read).is_ok() {
            closed += 1;
        }
    }
    closed
}

/// What every way out does last: flush and release the persist file,
/// remove the pid file (when it still names this process).
pub fn finish(app: &App) {
    app.cache.close_persist(FLUSH_LIMIT);
    app.remove_pid_file();
    log::info!("graceway stopped");
}

/// Pingora's own grace period (`server::server_conf`): the drain watch
/// above decides when to exit, so Pingora's fixed sleep (which starts once
/// the listeners close) must outlast the drain's timeout.
pub fn pingora_grace_period(server: &crate::config::ServerSettings) -> u64 {
    server.graceful_shutdown_timeout.as_secs() + 1
}
