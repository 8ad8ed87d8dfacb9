//! Client connections under hostile timing: every request on a kept-alive
//! connection has a header deadline, a cap full of idle or dripping
//! connections still lets a new client in, and pipelined requests are all
//! answered. Rows of `docs/reliability.md`'s hostile table.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{wait_for, EmojiConfig, Graceway, MockReply, MockUpstream};

const TOKEN: &str = "tok-connections-5d1e";

fn start(cfg: EmojiConfig) -> Graceway {
    Graceway::start_with_token(&format!("{TOKEN}\n"), &cfg.build())
}

/// Sends one kept-alive GET on `s` and reads its whole answer (the mock's
/// answers carry a `Content-Length`).
fn ask(s: &mut TcpStream) -> String {
    s.write_all(b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    read_answer(s)
}

fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A connection that has had one request answered (kept alive).
fn kept_alive(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let first = ask(&mut s);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    s
}

/// Drips one byte of a request header that never ends into every socket,
/// every `every`, for at most `limit`, until `stop` is set.
fn drip(
    mut socks: Vec<TcpStream>,
    every: Duration,
    limit: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<TcpStream>> {
    std::thread::spawn(move || {
        let header = b"GET /v1/drip HTTP/1.1\r\nHost: h\r\nX-Drip: ";
        let started = Instant::now();
        let mut i = 0usize;
        while started.elapsed() < limit && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let b = header.get(i).copied().unwrap_or(b'a');
            for s in &mut socks {
                let _ = s.write_all(&[b]);
            }
            i += 1;
            std::thread::sleep(every);
        }
        socks
    })
}

#[test]
fn a_kept_alive_dripper_gets_408_on_its_second_request() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = start(EmojiConfig::new(up.port).server("request_header_timeout: 1s"));
    let mut s = kept_alive(g.listen);
    // The second request, one byte every 200 ms: each read is quick, the
    // header never ends.
    let started = Instant::now();
    let (text, closed) = crate::support::drip(
        &mut s,
        b"GET /v1/x HTTP/1.1\r\nHost: h\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Duration::from_secs(6),
    );
    assert!(closed, "the dripping connection was not closed: {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(g.status());
    assert!(
        status["connections"]["proxy"]["header_timeouts"].as_u64() >= Some(1),
        "{status:#}"
    );
    assert_eq!(
        up.request_count(),
        1,
        "only the first request went upstream"
    );
}

#[test]
fn a_cap_full_of_idle_connections_lets_a_new_client_in_at_once() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = start(EmojiConfig::new(up.port).server(
        "max_connections: 20, request_header_timeout: 30s, client_keepalive_timeout: 120s",
    ));
    let mut idle: Vec<TcpStream> = (0..20).map(|_| kept_alive(g.listen)).collect();
    // Five newcomers that stay connected: each needs a slot of its own.
    let mut newcomers = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        newcomers.push(kept_alive(g.listen));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    // The oldest idle connections made room: they were closed (end of
    // stream), the others still answer.
    let mut closed = 0;
    for s in &mut idle[..5] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 5);
    assert!(ask(&mut idle[19]).starts_with("HTTP/1.1 200"));
    drop(newcomers);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(g.status());
    assert_eq!(status["connections"]["proxy"]["evicted"], 5, "{status:#}");
    assert_eq!(status["connections"]["proxy"]["refused"], 0, "{status:#}");
}

#[test]
fn a_cap_full_of_kept_alive_drippers_never_locks_out_a_new_client() {
    // Newcomers ask for a slow path, so they hold their slot (in a
    // request, not idle) and each one needs a slot of its own.
    let up = MockUpstream::start(|r| {
        let mut reply = MockReply::ok("{}");
        if r.target == "/v1/slow" {
            reply.delay = Duration::from_millis(1500);
        }
        reply
    });
    let g = start(EmojiConfig::new(up.port).server(
        "max_connections: 20, request_header_timeout: 60s, client_keepalive_timeout: 120s",
    ));
    // 20 connections that each sent one GET and now drip the next one.
    let socks: Vec<TcpStream> = (0..20).map(|_| kept_alive(g.listen)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dripper = drip(
        socks,
        Duration::from_millis(300),
        Duration::from_secs(30),
        stop.clone(),
    );
    // Every dripper is in its header (the first byte arrived).
    wait_for("the drippers to start", Duration::from_secs(5), || {
        (up.request_count() == 20).then_some(())
    });
    // A header may take up to a second before its connection can be
    // closed for a newcomer (`EVICT_AFTER`): let that second pass.
    std::thread::sleep(Duration::from_millis(1300));
    let t0 = Instant::now();
    let mut newcomers: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
            s.write_all(b"GET /v1/slow HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    let mut answered = 0;
    for s in &mut newcomers {
        let a = read_answer(s);
        assert!(a.starts_with("HTTP/1.1 200"), "a newcomer was refused: {a}");
        answered += 1;
    }
    // 1.5 s upstream delay: each newcomer was let in at once.
    assert!(
        t0.elapsed() < Duration::from_millis(3500),
        "{:?}",
        t0.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut socks = dripper.join().unwrap();
    assert_eq!(answered, 8);
    // The evicted drippers were told 408 and closed. A dripper that kept
    // writing into its closed connection may have drawn a reset, which can
    // discard the 408 before it is read: closed counts either way.
    let (mut told, mut ended) = (0, 0);
    for s in &mut socks {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 408") => {
                told += 1;
                ended += 1;
            }
            Ok(0) => ended += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => ended += 1,
            _ => {}
        }
    }
    assert!(told >= 1, "no dripper was told 408");
    assert!(ended >= 8, "{ended} drippers were closed ({told} told 408)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(g.status());
    assert!(
        status["connections"]["proxy"]["evicted"].as_u64() >= Some(8),
        "{status:#}"
    );
}

#[test]
fn three_pipelined_requests_get_three_answers_in_order() {
    let up = MockUpstream::start(|r| MockReply::ok(&format!("{{\"path\":\"{}\"}}", r.target)));
    let g = start(EmojiConfig::new(up.port));
    let mut s = TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One write: the second and third arrive before the first is answered.
    s.write_all(
        b"GET /v1/a HTTP/1.1\r\nHost: h\r\n\r\nGET /v1/b HTTP/1.1\r\nHost: h\r\n\r\nGET /v1/c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    let answers: Vec<&str> = text.matches("HTTP/1.1 200").collect();
    assert_eq!(answers.len(), 3, "{text}");
    let (a, b, c) = (
        text.find("/v1/a").unwrap(),
        text.find("/v1/b").unwrap(),
        text.find("/v1/c").unwrap(),
    );
    assert!(a < b && b < c, "out of order: {text}");
    let paths: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(paths, ["/v1/a", "/v1/b", "/v1/c"]);
}
