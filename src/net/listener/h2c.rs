//! h2c connections (`server.h2c`) under the listener's guard.
//!
//! With `h2c` on, Pingora 0.9.1 first peeks at a connection's 24 bytes
//! for the HTTP/2 preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), with a
//! plain `read_exact`: no deadline, and an HTTP/1.0 request shorter than
//! 24 bytes would wait for bytes that never come. [`peek`] reads those
//! bytes through the guard instead: under the header deadline and the
//! cap's eviction, and it stops at the first byte that is not the
//! preface's (an HTTP/1 request goes on at once). What it read is handed
//! out again before anything else.
//!
//! A connection past the preface is HTTP/2: many streams, each a request,
//! so the per-request phases do not apply to it. It is in the [`H2`]
//! phase for good: no header deadline on its reads; it counts as idle
//! (closed to make room under the cap, like an idle HTTP/1 connection)
//! only while none of its streams is open. The streams are counted by
//! [`h2_stream`], which the proxy calls per request: Pingora hands an
//! HTTP/2 request no stream, only the connection's digest, so the
//! connection is found by its socket digest (one `Arc` per connection,
//! shared by every stream). An h2c connection with no stream open is
//! closed by Pingora after `h2_idle_timeout` (see `server::build_server`).

use super::*;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `seen` is a non-empty start of the preface, short of all of it:
/// a client that may be speaking HTTP/2 and has not finished saying so.
pub(super) fn partial_preface(seen: &[u8]) -> bool {
    !seen.is_empty() && seen.len() < PREFACE.len() && PREFACE.starts_with(seen)
}

/// Pingora's preface peek (see the module doc): fills `buf` with the first
/// bytes (zeros after the first byte that differs from the preface, or
/// after the end of the stream), keeping them to be read again. The
/// header deadline and eviction end it with an error, as they end a slow
/// header (no `408` once part of the preface was seen).
pub(super) async fn peek(s: &mut GuardedStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let want = buf.len();
    while s.peeked.len() < want && PREFACE.starts_with(&s.peeked) {
        let mut chunk = [0u8; 64];
        let need = (want - s.peeked.len()).min(chunk.len());
        let n = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut chunk[..need]);
            s.guarded_read(cx, &mut rb).map_ok(|()| rb.filled().len())
        })
        .await?;
        if n == 0 {
            break;
        }
        s.peeked.extend_from_slice(&chunk[..n]);
    }
    let n = s.peeked.len().min(want);
    buf[..n].copy_from_slice(&s.peeked[..n]);
    buf[n..].fill(0);
    if s.peeked.as_slice() == PREFACE {
        enter(s);
    }
    Ok(true)
}

/// The preface is complete: the connection is HTTP/2 from now on. It is
/// registered under its socket digest so that its streams find it; one
/// without a digest cannot be found, so it counts one stream for good
/// (never idle, never evicted).
fn enter(s: &mut GuardedStream) {
    s.timer = None;
    s.timer_armed = false;
    s.state.since.store(now_ms(), Ordering::Relaxed);
    if let Some(d) = s.inner.get_socket_digest() {
        let key = Arc::as_ptr(&d) as usize;
        if let Ok(mut h2) = s.figures.h2.lock() {
            h2.insert(key, s.state.clone());
            s.h2_key = Some(key);
        }
    }
    if s.h2_key.is_none() {
        s.state.streams.store(1, Ordering::Relaxed);
    }
    s.state.phase.store(H2, Ordering::Relaxed);
}

/// A read of an h2c connection: no deadline (each stream is a request of
/// its own); end of stream when it was asked to close while idle.
pub(super) fn read(
    s: &mut GuardedStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<std::io::Result<()>> {
    if s.state.evict.load(Ordering::Relaxed) && s.state.streams.load(Ordering::Relaxed) == 0 {
        return Poll::Ready(Ok(()));
    }
    let r = Pin::new(&mut s.inner).poll_read(cx, buf);
    if r.is_pending() {
        s.state.waker.register(cx.waker());
    }
    r
}

/// One stream of an h2c connection in flight: the connection is busy
/// until it is dropped.
pub struct H2Stream(Arc<ConnState>);

/// Counts a request on an h2c connection (`digest` is the session's) as
/// one of its streams in flight, until the guard returned is dropped.
/// `None` for a connection that is not h2c on this listener.
pub fn h2_stream(
    figures: &ListenerFigures,
    digest: Option<&pingora::protocols::Digest>,
) -> Option<H2Stream> {
    let key = Arc::as_ptr(digest?.socket_digest.as_ref()?) as usize;
    let state = figures.h2.lock().ok()?.get(&key)?.clone();
    state.streams.fetch_add(1, Ordering::Relaxed);
    Some(H2Stream(state))
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.since.store(now_ms(), Ordering::Relaxed);
            if self.0.evict.load(Ordering::Relaxed) {
                // Asked to close while busy: now it can.
                self.0.waker.wake();
            }
        }
    }
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Stream")
    }
}
