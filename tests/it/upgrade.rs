//! Protocol upgrades are opt-in per upstream (`upgrade: [websocket]`):
//! without it nothing switches protocols past graceway, with it the tunnel
//! is counted and idles out on `timeouts.stream_idle`. Rows of
//! `docs/reliability.md`'s hostile table.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{metric_value, EmojiConfig, Graceway};

/// An upstream that answers every request with `101 Switching Protocols`
/// (asked for or not) and then echoes and records every byte it gets.
struct Switcher {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
}

fn switcher() -> Switcher {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let rec = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(16) {
            let Ok(mut s) = conn else { continue };
            let rec = rec.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    match s.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                rec.lock().unwrap().extend_from_slice(&head);
                let _ = s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Switcher { port, received }
}

const UPGRADE: &[u8] = b"GET /v1/ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn read_some(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    let mut closed = false;
    while Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[test]
fn without_upgrade_listed_nothing_is_tunnelled_and_a_101_is_a_502() {
    let up = switcher();
    let g = Graceway::start_with_token("tok-upgrade-1\n", &EmojiConfig::new(up.port).build());
    let mut s = TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
    s.write_all(UPGRADE).unwrap();
    let (answer, _) = read_some(&mut s, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    // The upstream was sent a plain request: no Upgrade, no upgrade token.
    let head = String::from_utf8_lossy(&up.received.lock().unwrap()).to_ascii_lowercase();
    assert!(head.starts_with("get /v1/ws"), "{head}");
    assert!(!head.contains("\r\nupgrade:"), "{head}");
    assert!(!head.contains("connection: upgrade"), "{head}");
    // Whatever the client writes next never reaches the upstream raw.
    let _ = s.write_all(b"TRACE /admin/../../secret HTTP/1.1\r\nHost: h\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    let seen = String::from_utf8_lossy(&up.received.lock().unwrap()).into_owned();
    assert!(!seen.contains("TRACE"), "{seen}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = rt.block_on(g.metrics());
    for (result, n) in [("stripped", 1.0), ("refused-101", 1.0), ("tunnelled", 0.0)] {
        let series = format!("graceway_upgrades_total{{result=\"{result}\",upstream=\"emoji\"}}");
        assert_eq!(metric_value(&m, &series), Some(n), "{series}: {m}");
    }
}

#[test]
fn a_listed_upgrade_tunnels_is_counted_and_idles_out() {
    let up = switcher();
    let cfg = EmojiConfig::new(up.port)
        .upstream("    upgrade: [websocket]")
        .build()
        .replace("read: 2s }", "read: 2s, stream_idle: 1s }");
    assert!(cfg.contains("stream_idle: 1s"), "{cfg}");
    let g = Graceway::start_with_token("tok-upgrade-2\n", &cfg);
    let mut s = TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
    s.write_all(UPGRADE).unwrap();
    let (answer, _) = read_some(&mut s, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let head = String::from_utf8_lossy(&up.received.lock().unwrap()).to_ascii_lowercase();
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("authorization: bearer tok-upgrade-2"),
        "{head}"
    );
    // Bytes pass both ways.
    s.write_all(b"ping-frame").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping-frame");
    // Idle for longer than stream_idle: the tunnel is closed, cleanly: a
    // WebSocket close frame (1001, going away), then the end.
    let t = Instant::now();
    let mut closed = false;
    let mut tail = Vec::new();
    while t.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => tail.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the idle tunnel stayed open");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(
        tail,
        [0x88, 0x02, 0x03, 0xE9],
        "a close frame, 1001: {}",
        g.logs()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = rt.block_on(g.metrics());
    let series = "graceway_upgrades_total{result=\"tunnelled\",upstream=\"emoji\"}";
    assert_eq!(metric_value(&m, series), Some(1.0), "{m}");
}
