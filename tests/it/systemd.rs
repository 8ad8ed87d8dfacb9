//! systemd readiness (`Type=notify`): a datagram socket the test binds as
//! `NOTIFY_SOCKET` hears READY=1 only once both listeners accept,
//! RELOADING=1 with MONOTONIC_USEC then READY=1 around a reload, WATCHDOG=1
//! while `WATCHDOG_USEC` is set, and STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::{EmojiConfig, Graceway, MockReply, MockUpstream, TestDir};

/// Reads notify messages until one contains `want` (or panics at the deadline).
fn expect(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(msg.clone());
            if msg.contains(want) {
                return msg;
            }
        }
    }
    panic!("no `{want}` from graceway; got {seen:?}");
}

#[test]
fn notify_ready_reloading_watchdog_and_stopping() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let dir = TestDir::new();
    dir.write("token", "tok-systemd");
    let path = dir.file("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let g = Graceway::spawn_in(
        dir,
        &EmojiConfig::new(up.port).build(),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    let ready = expect(&sock, "READY=1", &mut seen);
    // Ready means ready: both listeners accept now.
    assert!(std::net::TcpStream::connect(("127.0.0.1", g.listen)).is_ok());
    assert!(std::net::TcpStream::connect(("127.0.0.1", g.admin)).is_ok());
    assert!(ready.contains("STATUS=serving"), "{ready}");
    expect(&sock, "WATCHDOG=1", &mut seen);

    g.signal("HUP");
    let reloading = expect(&sock, "RELOADING=1", &mut seen);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    expect(&sock, "READY=1", &mut seen);

    g.signal("TERM");
    expect(&sock, "STOPPING=1", &mut seen);
}
