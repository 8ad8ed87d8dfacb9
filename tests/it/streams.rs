//! Streams: Server-Sent Events the way LLM APIs send them. A pause between
//! events is not an upstream failure, and an event stream is never kept
//! and replayed as a last-good copy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{client, EmojiConfig, Graceway};

/// An upstream on raw sockets: `/v1/events` streams 3 events `pause`
/// apart (chunked, `text/event-stream`, and a Cache-Control that would let
/// it be kept); anything else answers JSON at once. While `down`, 503.
fn sse_upstream(pause: Duration, down: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(500) {
            let Ok(s) = conn else { continue };
            let down = down.clone();
            std::thread::spawn(move || serve(s, pause, &down));
        }
    });
    port
}

fn serve(s: TcpStream, pause: Duration, down: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        if down.load(Ordering::Relaxed) {
            let body = r#"{"error":"down"}"#;
            let _ = write!(w, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            continue;
        }
        if path.starts_with("/v1/events") {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n");
            for i in 0..3 {
                if i > 0 {
                    std::thread::sleep(pause);
                }
                let ev = format!("id: {i}\ndata: event {i}\n\n");
                if write!(w, "{:x}\r\n{ev}\r\n", ev.len()).is_err() {
                    return;
                }
            }
            let _ = w.write_all(b"0\r\n\r\n");
        } else {
            let body = r#"{"plain":true}"#;
            let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    }
}

/// Reads a whole streamed answer with a raw socket: (status line, events).
fn read_stream(port: u16, accept_events: bool) -> (String, usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let accept = if accept_events {
        "Accept: text/event-stream\r\n"
    } else {
        ""
    };
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: h\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    (status, text.matches("data: event").count())
}

/// Plain GETs beside the streams: how many were not a fresh 200.
async fn plain_traffic(g: &Graceway, for_: Duration) -> usize {
    let c = client();
    let t0 = Instant::now();
    let mut bad = 0;
    while t0.elapsed() < for_ {
        let r = c.get(g.url("/v1/plain")).send().await.unwrap();
        if r.status() != 200 || r.headers().contains_key("x-graceway-degraded") {
            bad += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_streams_pause_past_the_read_timeout_and_complete() {
    // timeouts.read is 2 s; events come 3 s apart.
    let port = sse_upstream(Duration::from_secs(3), Arc::new(AtomicBool::new(false)));
    let g = Graceway::start_with_token("tok-sse\n", &EmojiConfig::new(port).build());
    let listen = g.listen;
    let streams: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || read_stream(listen, true)))
        .collect();
    let bad = plain_traffic(&g, Duration::from_secs(7)).await;
    for s in streams {
        let (status, events) = s.join().unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(events, 3, "the stream was cut");
    }
    assert_eq!(bad, 0, "plain GETs were degraded beside the streams");
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["breakers"]["health"]["open"], false,
        "{st:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unannounced_stream_cut_by_the_read_timeout_is_not_an_upstream_failure_nor_replayed() {
    let down = Arc::new(AtomicBool::new(false));
    let port = sse_upstream(Duration::from_secs(3), down.clone());
    let g = Graceway::start_with_token("tok-sse\n", &EmojiConfig::new(port).build());
    let listen = g.listen;
    // No Accept header: graceway learns it is a stream from the answer, so
    // the 3 s pause meets timeouts.read (2 s) and the stream is cut; six
    // of them would open the health breaker (open_after 5) if they counted.
    let streams: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || read_stream(listen, false)))
        .collect();
    let bad = plain_traffic(&g, Duration::from_secs(4)).await;
    for s in streams {
        let (status, events) = s.join().unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(events, 1, "cut at the first pause");
    }
    assert_eq!(bad, 0, "plain GETs were degraded after the cut streams");
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["breakers"]["health"]["open"], false,
        "{st:#}"
    );
    assert_eq!(
        st["upstreams"][0]["stored"]["entries"], 1,
        "only /v1/plain: {st:#}"
    );
    // The upstream fails: the event stream is not replayed from a copy.
    down.store(true, Ordering::Relaxed);
    let (status, events) = read_stream(listen, true);
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert_eq!(events, 0);
    assert!(!g.logs().contains(" ERROR "), "{}", g.logs());
}
