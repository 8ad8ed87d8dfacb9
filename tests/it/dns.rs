//! Upstream DNS is looked up again on a schedule (`dns_refresh`) and after a
//! failed connect, so an API that moves its address needs no reload. The
//! test controls a name through `/etc/hosts` (root only; CI runs as root)
//! and moves it between two loopback addresses.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use crate::support::{
    client, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};

/// Held while a test of this process rewrites `/etc/hosts` (each edit
/// reads the file and writes it back: two at once would lose one).
static HOSTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Lines of `/etc/hosts` a test owns; removed on drop.
struct HostsEntry {
    name: String,
}

impl HostsEntry {
    fn set(&self, ip: &str) {
        self.set_all(&[ip]);
    }

    /// The name resolves to every one of `ips`, in this order.
    fn set_all(&self, ips: &[&str]) {
        let _edit = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let mut kept: Vec<&str> = hosts
            .lines()
            .filter(|l| !l.ends_with(&format!(" {}", self.name)))
            .collect();
        let lines: Vec<String> = ips.iter().map(|ip| format!("{ip} {}", self.name)).collect();
        kept.extend(lines.iter().map(String::as_str));
        let tmp = "/etc/hosts.graceway-test";
        std::fs::write(tmp, kept.join("\n") + "\n").unwrap();
        // /etc/hosts may be a bind mount: copy over it rather than rename.
        std::fs::copy(tmp, "/etc/hosts").unwrap();
        let _ = std::fs::remove_file(tmp);
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        let _edit = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(hosts) = std::fs::read_to_string("/etc/hosts") {
            let kept: Vec<&str> = hosts
                .lines()
                .filter(|l| !l.ends_with(&format!(" {}", self.name)))
                .collect();
            let _ = std::fs::write("/etc/hosts", kept.join("\n") + "\n");
        }
    }
}

/// A tiny server on 127.0.0.2 that answers every request with `body`.
fn second_address(port: u16, body: &'static str) {
    let l = TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2");
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk) {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=60\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
    })
}

async fn body(g: &Graceway, path: &str) -> (bool, String) {
    let r = client().get(g.url(path)).send().await.unwrap();
    let degraded = r.headers().get("x-graceway-degraded").is_some();
    (degraded, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_upstream_is_found_again_without_a_reload() {
    if !is_root() {
        eprintln!("skipped: the test edits /etc/hosts, which needs root (CI runs as root)");
        return;
    }
    let first =
        MockUpstream::start(|_| MockReply::ok("first").header("Cache-Control", "max-age=60"));
    let port = first.port;
    second_address(port, "second");
    let hosts = HostsEntry {
        name: format!("graceway-dns-test-{}", std::process::id()),
    };
    hosts.set("127.0.0.1");
    let start = |refresh: &str| {
        let dir = TestDir::new();
        dir.write("token", "tok-dns");
        let cfg = EmojiConfig::new(port)
            .upstream(&format!("    dns_refresh: {refresh}"))
            .build()
            .replace("http://127.0.0.1:", &format!("http://{}:", hosts.name));
        Graceway::start_in(dir, &cfg)
    };
    // On a schedule: every second.
    let scheduled = start("1s");
    // Only after a failed connect.
    let on_failure = start("0s");
    assert_eq!(body(&scheduled, "/v1/a").await, (false, "first".into()));
    assert_eq!(body(&on_failure, "/v1/a").await, (false, "first".into()));

    hosts.set("127.0.0.2");
    wait_for_async(
        "the scheduled lookup to find the new address",
        Duration::from_secs(15),
        || async { (body(&scheduled, "/v1/a").await == (false, "second".into())).then_some(()) },
    )
    .await;
    assert!(
        scheduled.logs().contains("now resolves to 127.0.0.2"),
        "{}",
        scheduled.logs()
    );
    // Without a schedule the old address still answers.
    assert_eq!(body(&on_failure, "/v1/b").await, (false, "first".into()));
    drop(first);
    // The old address refuses: this request gets the copy, and the failed
    // connect triggers a lookup; the next ones go to the new address.
    let (degraded, text) = body(&on_failure, "/v1/a").await;
    assert!(degraded && text == "first", "{degraded} {text}");
    wait_for_async(
        "the lookup after a failed connect",
        Duration::from_secs(10),
        || async { (body(&on_failure, "/v1/c").await == (false, "second".into())).then_some(()) },
    )
    .await;
    assert!(
        on_failure
            .logs()
            .contains("looked up after a failed connect"),
        "{}",
        on_failure.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_of_a_name_is_used_and_one_that_refuses_is_skipped() {
    if !is_root() {
        eprintln!("skipped: the test edits /etc/hosts, which needs root (CI runs as root)");
        return;
    }
    let first =
        MockUpstream::start(|_| MockReply::ok("first").header("Cache-Control", "max-age=60"));
    let port = first.port;
    let hosts = HostsEntry {
        name: format!("graceway-two-addresses-{}", std::process::id()),
    };
    hosts.set_all(&["127.0.0.2", "127.0.0.1"]);
    let start = || {
        let dir = TestDir::new();
        dir.write("token", "tok-two");
        let cfg = EmojiConfig::new(port)
            .health("{ open_after: 2 }")
            .upstream("    dns_refresh: 0s")
            .build()
            .replace("http://127.0.0.1:", &format!("http://{}:", hosts.name));
        Graceway::start_in(dir, &cfg)
    };
    // 127.0.0.2 refuses connections (nothing listens there): every request
    // is answered by 127.0.0.1, none degraded, the breaker stays closed.
    let g = start();
    for i in 0..20 {
        assert_eq!(
            body(&g, &format!("/v1/{i}")).await,
            (false, "first".into()),
            "{}",
            g.logs()
        );
    }
    let m = g.metrics().await;
    let failovers = crate::support::metric_value(
        &m,
        r#"graceway_upstream_address_failovers_total{upstream="emoji"}"#,
    );
    assert_eq!(failovers, Some(1.0), "held after its first refusal");
    assert_eq!(
        g.status().await["upstreams"][0]["breakers"]["health"]["open"],
        false
    );
    assert!(g.logs().contains("skipping that address"), "{}", g.logs());

    // Both addresses answer: requests go to each in turn.
    second_address(port, "second");
    let g = start();
    let mut seen = std::collections::HashSet::new();
    for i in 0..10 {
        seen.insert(body(&g, &format!("/v1/{i}")).await.1);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}
