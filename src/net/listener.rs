//! Client connections: how many may be open, and how long a client may
//! take to send a request header.
//!
//! Pingora 0.9 accepts every connection and bounds a header read only per
//! `read()` (a client that drips one byte every few seconds is never cut
//! off, pingora#447), so both limits live here, in a [`Guarded`] wrapper
//! around each listening service:
//! - a cap on open connections per listener. A connection over the cap
//!   first makes room: the connection idle longest between two requests
//!   is closed (as nginx reuses idle connections), else the one that has
//!   been sending its request header for longest, if that is more than
//!   [`EVICT_AFTER`]. When nothing can be closed the new one is answered
//!   with a fixed `503` and closed at once (no request is parsed), so a
//!   flood cannot use up the descriptors that the admin listener, upstream
//!   connections and files need. The admin listener has its own small cap,
//!   so `/healthz` answers during a flood of the proxy port;
//! - a deadline for every complete request header on a connection: from
//!   accept for its first request, from the first byte of each later one
//!   on a kept-alive connection. At the deadline the client gets `408` and
//!   the connection is closed. Time spent idle between requests is bounded
//!   by `server.client_keepalive_timeout`.
//!
//! Pingora 0.9.1 reads every request of a kept-alive connection inside one
//! call of `process_new`, so the phase is kept on the stream and moved by
//! the apps: [`header_complete`] when a header has been parsed,
//! [`request_done`] when its answer has been written.
//!
//! With `server.h2c` the listener also takes HTTP/2 with prior knowledge:
//! Pingora peeks at the first 24 bytes for the connection preface, and
//! [`h2c`] makes that peek obey the header deadline and the cap, then
//! counts an h2c connection's streams (see its module doc).
//!
//! The per-request cost is a few relaxed atomic stores and one clock read;
//! a timer is armed only when a header does not arrive in one read. The
//! registry of open connections is locked per connection (accept and
//! close), never per request; an h2c stream looks its connection up once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use atomic_waker::AtomicWaker;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
};
use pingora::server::ShutdownWatch;
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

/// The answer to a connection over the cap.
pub(crate) const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 62\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{\"error\":\"too many client connections\",\"reason\":\"overloaded\"}\n";

/// The answer to a header that missed its deadline.
pub(crate) const HEADER_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: 74\r\nConnection: close\r\n\r\n{\"error\":\"the request header was not complete in time\",\"reason\":\"timeout\"}";

/// A connection still sending its request header after this long may be
/// closed to make room for a new one when the cap is reached.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);

mod h2c;
pub use h2c::{h2_stream, H2Stream};

/// How far over the cap the count of open connections may go while closed
/// ones are on their way out (each eviction admits the new connection at
/// once; the evicted one gives its slot back a moment later).
const EVICT_SLACK: usize = 64;

/// Open connections and what was refused or cut, per listener. Read by
/// `/status` and `/metrics`.
#[derive(Debug)]
pub struct ListenerFigures {
    pub open: AtomicUsize,
    pub refused: AtomicU64,
    pub header_timeouts: AtomicU64,
    /// Connections closed to make room for a new one under the cap.
    pub evicted: AtomicU64,
    /// The cap in force (set at start).
    pub cap: AtomicUsize,
    /// Every open connection's shared state, for eviction.
    registry: Mutex<Slab<Arc<ConnState>>>,
    /// The h2c connections, by their socket digest (see [`h2c`]).
    h2: Mutex<std::collections::BTreeMap<usize, Arc<ConnState>>>,
}

impl Default for ListenerFigures {
    fn default() -> Self {
        Self::new()
    }
}

impl ListenerFigures {
    const fn new() -> ListenerFigures {
        ListenerFigures {
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            cap: AtomicUsize::new(0),
            registry: Mutex::new(Slab::new()),
            h2: Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Asks the best victim to close (see the module doc); true when one
    /// was found.
    fn evict_one(&self) -> bool {
        let now = now_ms();
        let Ok(reg) = self.registry.lock() else {
            return false;
        };
        let Some(victim) = victim(now, reg.iter().map(|(_, c)| c)) else {
            return false;
        };
        victim.evict.store(true, Ordering::Relaxed);
        victim.waker.wake();
        self.evicted.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The connection to close to make room under the cap, at `now`
/// ([`now_ms`]): the one idle longest between two requests, else the one
/// that has been sending its request header for longest if that is
/// [`EVICT_AFTER`] or more, else none. One already asked to close is
/// passed over, and so is one inside a request. An h2c connection is idle
/// while none of its streams is open, and busy otherwise.
fn victim<'a>(
    now: u64,
    conns: impl IntoIterator<Item = &'a Arc<ConnState>>,
) -> Option<&'a Arc<ConnState>> {
    let mut idle: Option<(u64, &Arc<ConnState>)> = None;
    let mut slow: Option<(u64, &Arc<ConnState>)> = None;
    for c in conns {
        if c.evict.load(Ordering::Relaxed) {
            continue;
        }
        let since = c.since.load(Ordering::Relaxed);
        let pick = match c.phase.load(Ordering::Relaxed) {
            AWAITING => &mut idle,
            H2 if c.streams.load(Ordering::Relaxed) == 0 => &mut idle,
            HEADER if now.saturating_sub(since) >= EVICT_AFTER.as_millis() as u64 => &mut slow,
            _ => continue,
        };
        if pick.is_none_or(|(s, _)| since < s) {
            *pick = Some((since, c));
        }
    }
    idle.or(slow).map(|(_, c)| c)
}

/// Both listeners' figures, owned by the `App` (read by `/status` and
/// the metrics scrape), each shared with its listener's connections.
#[derive(Default)]
pub struct Listeners {
    pub proxy: Arc<ListenerFigures>,
    pub admin: Arc<ListenerFigures>,
}

/// Milliseconds since the first call (a monotonic clock for `since`).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// A listening service's app with the connection cap and header deadline.
pub struct Guarded<A> {
    inner: Arc<A>,
    figures: Arc<ListenerFigures>,
    cap: usize,
    header_timeout: Duration,
}

impl<A> Guarded<A> {
    pub fn new(
        inner: A,
        figures: Arc<ListenerFigures>,
        cap: usize,
        header_timeout: Duration,
    ) -> Self {
        figures.cap.store(cap, Ordering::Relaxed);
        Guarded {
            inner: Arc::new(inner),
            figures,
            cap,
            header_timeout,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    /// Called once per connection: Pingora loops over a kept-alive
    /// connection's requests inside the inner app.
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = self.figures.open.fetch_add(1, Ordering::Relaxed);
        if open >= self.cap && (open >= self.cap + EVICT_SLACK || !self.figures.evict_one()) {
            self.figures.open.fetch_sub(1, Ordering::Relaxed);
            self.figures.refused.fetch_add(1, Ordering::Relaxed);
            // Best effort and bounded: the client may not be reading.
            let _ =
                tokio::time::timeout(Duration::from_millis(100), stream.write_all(OVER_CAP)).await;
            return None;
        }
        let state = Arc::new(ConnState {
            phase: AtomicU8::new(HEADER),
            since: AtomicU64::new(now_ms()),
            evict: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            streams: AtomicUsize::new(0),
        });
        let key = self
            .figures
            .registry
            .lock()
            .map(|mut r| r.insert(state.clone()))
            .ok();
        stream = Box::new(GuardedStream {
            inner: stream,
            state,
            key,
            timer: None,
            timer_armed: false,
            header_timeout: self.header_timeout,
            figures: self.figures.clone(),
            peeked: Vec::new(),
            h2_key: None,
        });
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Waiting for the first byte of the next request (idle keep-alive).
const AWAITING: u8 = 0;
/// Reading a request header: the deadline applies.
const HEADER: u8 = 1;
/// The header is complete: body and response, no deadline.
const IN_REQUEST: u8 = 2;
/// An h2c connection past its preface: its streams are counted instead.
const H2: u8 = 3;

/// What the listener and the apps share about one connection.
#[derive(Debug)]
struct ConnState {
    phase: AtomicU8,
    /// When the current phase began ([`now_ms`]).
    since: AtomicU64,
    /// Set by [`ListenerFigures::evict_one`]: close at the next read.
    evict: AtomicBool,
    /// The task reading this connection, woken on eviction.
    waker: AtomicWaker,
    /// An h2c connection's streams in flight ([`h2_stream`]).
    streams: AtomicUsize,
}

/// A client connection with its deadline and its place under the cap
/// (given back on drop).
pub struct GuardedStream {
    inner: Stream,
    /// Shared with the registry; the apps move the phase through `&self`
    /// (see [`header_complete`]) while the stream is owned by Pingora.
    state: Arc<ConnState>,
    /// The registry slot (`None` if the registry was poisoned).
    key: Option<usize>,
    timer: Option<Pin<Box<Sleep>>>,
    timer_armed: bool,
    header_timeout: Duration,
    figures: Arc<ListenerFigures>,
    /// Bytes read by the preface peek ([`h2c`]), handed out first.
    peeked: Vec<u8>,
    /// The key under [`ListenerFigures::h2`] of an h2c connection.
    h2_key: Option<usize>,
}

fn guarded(stream: Option<&Stream>) -> Option<&GuardedStream> {
    stream.and_then(|s| (**s).as_any().downcast_ref::<GuardedStream>())
}

/// Tells the connection under `stream` that its request header is
/// complete: the header deadline no longer applies.
pub fn header_complete(stream: Option<&Stream>) {
    if let Some(g) = guarded(stream) {
        g.state.phase.store(IN_REQUEST, Ordering::Relaxed);
    }
}

/// Tells the connection under `stream` that its request was answered:
/// until the next byte arrives it is idle (and may be closed to make room
/// under the cap).
pub fn request_done(stream: Option<&Stream>) {
    if let Some(g) = guarded(stream) {
        g.state.since.store(now_ms(), Ordering::Relaxed);
        g.state.phase.store(AWAITING, Ordering::Relaxed);
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        // Out of the registry before the inner stream (and its descriptor)
        // goes, under the registry's lock.
        if let (Some(k), Ok(mut reg)) = (self.key, self.figures.registry.lock()) {
            reg.try_remove(k);
        }
        if let (Some(k), Ok(mut h2)) = (self.h2_key, self.figures.h2.lock()) {
            h2.remove(&k);
        }
        self.figures.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .finish()
    }
}

impl GuardedStream {
    /// In the header phase: has the deadline passed? Arms the timer on the
    /// first read that would wait.
    fn header_deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.timer_armed {
            let at = tokio::time::Instant::now() + self.header_timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.timer_armed = true;
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// Ends a request header that will not be completed: 408 (not to a
    /// client that has sent part of the h2c preface: it would read HTTP/1
    /// bytes as a broken frame), then an error for Pingora (which closes
    /// the connection).
    fn cut_header(&mut self, cx: &mut Context<'_>, why: &'static str) -> Poll<std::io::Result<()>> {
        if !h2c::partial_preface(&self.peeked) {
            let _ = Pin::new(&mut self.inner).poll_write(cx, HEADER_TIMEOUT);
        }
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
    }

    /// A read under the connection's phase: the deadline while a header
    /// is read, eviction while idle, nothing inside a request.
    fn guarded_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self;
        let phase = this.state.phase.load(Ordering::Relaxed);
        if phase == H2 {
            return h2c::read(this, cx, buf);
        }
        if phase != IN_REQUEST && this.state.evict.load(Ordering::Relaxed) {
            return match phase {
                // Idle: end of stream, Pingora closes it quietly.
                AWAITING => Poll::Ready(Ok(())),
                _ => this.cut_header(cx, "closed to make room under the connection cap"),
            };
        }
        match phase {
            IN_REQUEST => Pin::new(&mut this.inner).poll_read(cx, buf),
            AWAITING => {
                let before = buf.filled().len();
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                match &r {
                    Poll::Ready(Ok(())) if buf.filled().len() > before => {
                        // The next request has begun: its header deadline starts.
                        this.state.since.store(now_ms(), Ordering::Relaxed);
                        this.state.phase.store(HEADER, Ordering::Relaxed);
                        this.timer_armed = false;
                    }
                    Poll::Pending => this.state.waker.register(cx.waker()),
                    _ => {}
                }
                r
            }
            _ => {
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                if r.is_ready() || !this.header_deadline_passed(cx) {
                    if r.is_pending() {
                        this.state.waker.register(cx.waker());
                    }
                    return r;
                }
                this.figures.header_timeouts.fetch_add(1, Ordering::Relaxed);
                log::debug!("client request header not complete in time: closing with 408");
                this.cut_header(cx, "request header deadline passed")
            }
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.peeked.is_empty() {
            // What the preface peek read: already under the guard.
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        this.guarded_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for GuardedStream {
    /// Pingora's look for the h2c preface (`server.h2c`): see [`h2c`].
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        h2c::peek(self, buf).await
    }
}

/// Copies the listener figures into their series (called at scrape
/// time). Here rather than in `metrics`, which sits below `net`.
pub fn refresh_metrics(listeners: &Listeners) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = crate::metrics::metrics();
    for (name, f) in [("proxy", &listeners.proxy), ("admin", &listeners.admin)] {
        m.client_connections
            .with_label_values(&[name])
            .set(f.open.load(Relaxed) as i64);
        m.client_connections_max
            .with_label_values(&[name])
            .set(f.cap.load(Relaxed) as i64);
        let refused = m
            .client_connections_refused_total
            .with_label_values(&[name]);
        let total = f.refused.load(Relaxed);
        refused.inc_by(total.saturating_sub(refused.get()));
        let evicted = m
            .client_connections_evicted_total
            .with_label_values(&[name]);
        evicted.inc_by(f.evicted.load(Relaxed).saturating_sub(evicted.get()));
        if name == "proxy" {
            let c = m
                .client_rejections_total
                .with_label_values(&[crate::outcome::ClientReason::HeaderTimeout.as_str()]);
            c.inc_by(f.header_timeouts.load(Relaxed).saturating_sub(c.get()));
        }
    }
}

/// Raises the soft descriptor limit to the hard one and returns both
/// (soft, hard) as in force afterwards.
pub fn raise_nofile_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (0, 0);
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            log::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            return (soft, hard);
        }
    }
    getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((soft, hard))
}

/// Descriptors kept free of client connections: the admin listener's cap,
/// log and persist files, the watcher, and slack.
const RESERVED_FDS: u64 = 256;

/// The default cap on proxy client connections for a descriptor limit:
/// each client connection may hold one upstream connection too, so half
/// of what is left after the reserve, and at most 4,096: an idle client
/// connection costs about 38 KiB (measured, `benches/hostile.py`), so the
/// cap also bounds memory (~150 MiB) for a sidecar.
pub fn default_max_connections(nofile_soft: u64) -> usize {
    (nofile_soft.saturating_sub(RESERVED_FDS) / 2).clamp(16, 4_096) as usize
}

/// The process limits read (and raised) at start; shown in `/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Limits {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
}

#[cfg(test)]
mod tests;
