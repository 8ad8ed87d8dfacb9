//! The fixed answers' framing, the choice of the connection closed to
//! make room under the cap, and the default cap.

use super::*;

/// Each fixed answer parses as a client would read it, and its
/// `Content-Length` is the body's length, so nothing stray follows.
#[test]
fn fixed_answers_are_framed_exactly() {
    for (bytes, status) in [(OVER_CAP, 503), (HEADER_TIMEOUT, 408)] {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("not a complete response head: {other:?}"),
        };
        assert_eq!(resp.code, Some(status));
        let length: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .expect("a Content-Length");
        assert_eq!(length, bytes.len() - head, "status {status}");
        let body: serde_json::Value = serde_json::from_slice(&bytes[head..]).unwrap();
        assert!(body["error"].is_string());
    }
}

fn conn(phase: u8, since: u64) -> Arc<ConnState> {
    Arc::new(ConnState {
        phase: AtomicU8::new(phase),
        since: AtomicU64::new(since),
        evict: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        streams: AtomicUsize::new(0),
    })
}

/// The index in `conns` of the victim at `now`.
fn pick(now: u64, conns: &[Arc<ConnState>]) -> Option<usize> {
    let v = victim(now, conns)?;
    conns.iter().position(|c| Arc::ptr_eq(c, v))
}

const AFTER: u64 = EVICT_AFTER.as_millis() as u64;

#[test]
fn the_connection_idle_longest_is_closed_first() {
    let now = 100_000;
    let conns = [
        conn(AWAITING, now - 50),
        conn(HEADER, 0),
        conn(AWAITING, now - 900),
        conn(IN_REQUEST, 0),
        conn(AWAITING, now - 10),
    ];
    // Idle beats a header however slow: an idle client loses nothing.
    assert_eq!(pick(now, &conns), Some(2));
    // Already asked to close: the next idle one.
    conns[2].evict.store(true, Ordering::Relaxed);
    assert_eq!(pick(now, &conns), Some(0));
}

#[test]
fn else_the_oldest_header_past_evict_after() {
    let now = 100_000;
    let conns = [
        conn(HEADER, now - AFTER - 5),
        conn(HEADER, now - AFTER - 300),
        conn(HEADER, now - AFTER + 1),
        conn(IN_REQUEST, 0),
    ];
    assert_eq!(pick(now, &conns), Some(1));
    conns[1].evict.store(true, Ordering::Relaxed);
    assert_eq!(pick(now, &conns), Some(0));
    conns[0].evict.store(true, Ordering::Relaxed);
    // One millisecond short of EVICT_AFTER: kept.
    assert_eq!(pick(now, &conns), None);
    assert_eq!(pick(now + 1, &conns), Some(2), "exactly EVICT_AFTER");
}

#[test]
fn none_when_every_connection_is_busy_or_young() {
    let now = 100_000;
    let conns = [
        conn(IN_REQUEST, 0),
        conn(HEADER, now - 10),
        conn(IN_REQUEST, now),
    ];
    assert_eq!(pick(now, &conns), None);
    assert_eq!(pick(now, &[]), None);
    // A clock read before a header began (another thread set `since`
    // after `now` was read) is not a slow header.
    assert_eq!(pick(now, &[conn(HEADER, now + 5)]), None);
}

#[test]
fn evicting_flags_the_victim_counts_it_and_moves_on() {
    let figures = ListenerFigures::default();
    let (older, newer) = (conn(AWAITING, 1), conn(AWAITING, 2));
    {
        let mut reg = figures.registry.lock().unwrap();
        reg.insert(newer.clone());
        reg.insert(conn(IN_REQUEST, 0));
        reg.insert(older.clone());
    }
    assert!(figures.evict_one());
    assert!(older.evict.load(Ordering::Relaxed));
    assert!(!newer.evict.load(Ordering::Relaxed));
    assert_eq!(figures.evicted.load(Ordering::Relaxed), 1);
    assert!(figures.evict_one());
    assert!(newer.evict.load(Ordering::Relaxed));
    assert!(
        !figures.evict_one(),
        "only a connection inside a request is left"
    );
    assert_eq!(figures.evicted.load(Ordering::Relaxed), 2);
}

#[test]
fn the_default_cap_is_half_the_descriptors_left_within_bounds() {
    assert_eq!(default_max_connections(1024), (1024 - 256) / 2);
    assert_eq!(default_max_connections(20_000), 4_096);
    assert_eq!(default_max_connections(300), 22);
    assert_eq!(default_max_connections(280), 16, "at least 16");
    assert_eq!(default_max_connections(0), 16);
}

#[test]
fn an_h2c_connection_is_idle_only_with_no_stream_open() {
    let now = 100_000;
    let conns = [
        conn(H2, now - 900),
        conn(AWAITING, now - 100),
        conn(H2, now - 500),
    ];
    conns[0].streams.store(2, Ordering::Relaxed);
    // The oldest h2c connection has streams in flight: the idle one that
    // has waited longest of the others goes.
    assert_eq!(pick(now, &conns), Some(2));
    conns[2].streams.store(1, Ordering::Relaxed);
    assert_eq!(pick(now, &conns), Some(1));
    conns[1].evict.store(true, Ordering::Relaxed);
    // Busy h2c connections are never a slow header either, however old.
    assert_eq!(pick(now + 60_000, &conns), None);
    conns[0].streams.store(0, Ordering::Relaxed);
    assert_eq!(pick(now, &conns), Some(0));
}

#[test]
fn a_partial_preface_is_only_a_start_of_it() {
    assert!(h2c::partial_preface(b"P"));
    assert!(h2c::partial_preface(b"PRI * HTTP/2.0\r\n"));
    assert!(!h2c::partial_preface(b""));
    assert!(!h2c::partial_preface(b"PO"));
    assert!(!h2c::partial_preface(b"GET / HTTP/1.1\r\n"));
    assert!(!h2c::partial_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
}
