//! Stopping and upgrading without loss: SIGTERM answers what is in flight
//! and exits as soon as nothing is, the accept window keeps serving a
//! sidecar's application, two graceful upgrades in a row under keep-alive
//! load fail no request and keep the last-good cache, a truncated config is
//! refused, and a normal load run logs no ERROR.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    client, wait_for, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, BIN,
};

const TOKEN: &str = "tok-drain-1";

/// A keep-alive HTTP/1.1 client on a raw socket, as an application's
/// connection pool is: it reuses its connection and reconnects when an
/// answer says `Connection: close`.
struct KeepAlive {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
}

struct Answer {
    status: u16,
    close: bool,
    body: String,
}

impl KeepAlive {
    fn new(port: u16) -> KeepAlive {
        KeepAlive { port, conn: None }
    }

    fn get(&mut self, path: &str) -> Result<Answer, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            self.conn = Some(BufReader::new(s));
        }
        let r = self.exchange(path);
        if r.as_ref().map_or(true, |a| a.close) {
            self.conn = None;
        }
        r
    }

    fn exchange(&mut self, path: &str) -> Result<Answer, String> {
        let conn = self.conn.as_mut().unwrap();
        conn.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        conn.read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if line.is_empty() {
            return Err("closed before an answer".into());
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut len, mut close) = (0usize, false);
        loop {
            let mut h = String::new();
            conn.read_line(&mut h)
                .map_err(|e| format!("read header: {e}"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        Ok(Answer {
            status,
            close,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

fn start(cfg: EmojiConfig) -> Graceway {
    Graceway::start_with_token(TOKEN, &cfg.build())
}

#[test]
fn sigterm_answers_every_request_in_flight_then_exits_at_once() {
    let up = MockUpstream::start(|_| {
        let mut r = MockReply::ok(r#"{"slow":true}"#);
        r.delay = Duration::from_secs(2);
        r
    });
    let mut g = start(
        EmojiConfig::new(up.port)
            .read_timeout("5s")
            .server("graceful_shutdown_timeout: 10s"),
    );
    // An idle keep-alive client from before the signal.
    let mut idle = KeepAlive::new(g.listen);
    let _ = idle.get("/v1/warm");

    let port = g.listen;
    let clients: Vec<_> = (0..10)
        .map(|i| std::thread::spawn(move || KeepAlive::new(port).get(&format!("/v1/slow/{i}"))))
        .collect();
    wait_for("10 requests upstream", Duration::from_secs(5), || {
        (up.request_count() >= 11).then_some(())
    });
    let signalled = Instant::now();
    g.signal("TERM");
    for c in clients {
        let a = c.join().unwrap().expect("answered");
        assert_eq!(a.status, 200);
        assert!(
            a.close,
            "the answer during the drain says Connection: close"
        );
    }
    // Exits as soon as they are done: not after the 10 s timeout.
    let status = g.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "{status:?}\n{}", g.logs());
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    // The idle keep-alive connection was closed, not left hanging.
    let conn = idle.conn.as_mut().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(conn.get_mut().read(&mut buf).unwrap_or(0), 0);
    let logs = g.logs();
    assert!(!logs.contains(" ERROR "), "{logs}");
    assert!(!g.dir.file("graceway.pid").exists(), "pid file removed");
}

#[test]
fn requests_still_in_flight_at_the_timeout_get_503_then_graceway_exits() {
    let up = MockUpstream::start(|_| {
        let mut r = MockReply::ok(r#"{"slow":true}"#);
        r.delay = Duration::from_secs(8);
        r
    });
    let mut g = start(
        EmojiConfig::new(up.port)
            .read_timeout("20s")
            .server("graceful_shutdown_timeout: 1s"),
    );
    let port = g.listen;
    let clients: Vec<_> = (0..3)
        .map(|i| std::thread::spawn(move || KeepAlive::new(port).get(&format!("/v1/slow/{i}"))))
        .collect();
    wait_for("3 requests upstream", Duration::from_secs(5), || {
        (up.request_count() >= 3).then_some(())
    });
    let signalled = Instant::now();
    g.signal("TERM");
    for c in clients {
        let a = c.join().unwrap().expect("answered, not an empty reply");
        assert_eq!(a.status, 503);
        assert!(a.close, "the cut answer says Connection: close");
        assert!(a.body.contains("shutting down"), "{}", a.body);
    }
    let took = signalled.elapsed();
    // Cut at the timeout (1 s, plus the 100 ms the listeners take to
    // close), not at Pingora's grace period a second later.
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert!(
        took >= Duration::from_secs(1),
        "cut before the timeout: {took:?}"
    );
    let status = g.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}\n{}", g.logs());
    let logs = g.logs();
    assert!(
        logs.contains("cut now (3 upstream connection(s) closed"),
        "{logs}"
    );
    assert!(!logs.contains(" ERROR "), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_window_keeps_serving_new_connections() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let mut g = start(EmojiConfig::new(up.port).server("grace_period: 2s"));
    let signalled = Instant::now();
    g.signal("TERM");
    // A sidecar's application, stopped at the same moment, still sends.
    wait_for_async("readiness to turn 503", Duration::from_secs(2), || async {
        let r = client().get(g.admin_url("/readyz")).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    let body: serde_json::Value = client()
        .get(g.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["draining"], true);
    for i in 0..3 {
        let port = g.listen;
        let a =
            tokio::task::spawn_blocking(move || KeepAlive::new(port).get(&format!("/v1/late/{i}")))
                .await
                .unwrap()
                .expect("served in the accept window");
        assert_eq!(a.status, 200);
        assert!(a.close);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(signalled.elapsed() < Duration::from_secs(2));
    let status = tokio::task::spawn_blocking(move || {
        let st = g.wait_exit(Duration::from_secs(10));
        (st, g)
    })
    .await
    .unwrap();
    assert!(status.0.success());
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "left before the window closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_config_is_refused_on_reload_and_the_token_keeps_flowing() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = start(EmojiConfig::new(up.port));
    let good = std::fs::read_to_string(&g.config).unwrap();
    // A failed template render: the file ends before `credentials:`.
    let cut = &good[..good.find("    credentials:").unwrap()];
    std::fs::write(&g.config, cut).unwrap();
    let before = g.reload_attempt().await;
    g.signal("HUP");
    let r = g.wait_reload(before).await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("upstreams[0].credentials: is required"),
        "{r}"
    );
    assert_eq!(
        client().get(g.url("/v1/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(up.requests().last().unwrap().bearer(), Some(TOKEN));
}

#[test]
fn a_normal_load_run_logs_no_error_line() {
    let up = MockUpstream::start(|r| {
        if r.path().starts_with("/v1/slow") {
            let mut m = MockReply::ok("{}");
            m.delay = Duration::from_millis(300);
            m
        } else {
            MockReply::ok(r#"{"ok":true}"#).header("Cache-Control", "max-age=60")
        }
    });
    let g = start(EmojiConfig::new(up.port));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, done, port) = (stop.clone(), done.clone(), g.listen);
            std::thread::spawn(move || {
                let mut c = KeepAlive::new(port);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if w == 3 && i.is_multiple_of(20) {
                        // A client that gives up on a slow answer.
                        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        s.write_all(b"GET /v1/slow HTTP/1.1\r\nHost: h\r\n\r\n")
                            .unwrap();
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    if c.get(&format!("/v1/items/{}", i % 50))
                        .is_ok_and(|a| a.status == 200)
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        done.load(Ordering::Relaxed) > 200,
        "{}",
        done.load(Ordering::Relaxed)
    );
    let logs = g.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Starts `graceway run --upgrade` for the config of `g`, logging to
/// `upgrade-<n>.log`, and waits until it listens on the upgrade socket.
fn start_upgrade(g: &Graceway, n: usize) -> Child {
    let sock = g.dir.file("graceway.upgrade.sock");
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::File::create(g.dir.file(&format!("upgrade-{n}.log"))).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(&g.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    wait_for(
        "the new process's upgrade socket",
        Duration::from_secs(20),
        || sock.exists().then_some(()),
    );
    child
}

fn wait_child(c: &mut Child, limit: Duration) -> std::process::ExitStatus {
    wait_for("the old process to exit", limit, || {
        c.try_wait().ok().flatten()
    })
}

#[test]
fn two_upgrades_under_keepalive_load_fail_nothing_and_keep_the_store() {
    let (up, rejecting) = MockUpstream::revocable(|req| {
        MockReply::ok(&format!(r#"{{"path":"{}"}}"#, req.path()))
            .header("Cache-Control", "max-age=60")
    });
    let mut g = start(
        EmojiConfig::new(up.port)
            .server("graceful_shutdown_timeout: 10s")
            .top("cache: { persist: { path: \"{dir}/store.redb\" } }"),
    );
    // Paths only the first process will ever see.
    let mut c = KeepAlive::new(g.listen);
    for i in 0..20 {
        assert_eq!(c.get(&format!("/v1/first/{i}")).unwrap().status, 200);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|w| {
            let (stop, failures, answered, port) =
                (stop.clone(), failures.clone(), answered.clone(), g.listen);
            std::thread::spawn(move || {
                let mut c = KeepAlive::new(port);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match c.get(&format!("/v1/live/{w}/{}", i % 10)) {
                        Ok(a) if a.status == 200 => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(a) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", a.status, a.body)),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    // Upgrade 1: B takes over from A.
    let mut b = Reap(start_upgrade(&g, 1));
    g.signal("QUIT");
    let st = g.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "A: {st:?}\n{}", g.logs());
    // B opens the persist file once A let go of it.
    wait_for(
        "B to take over the persist file",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(g.dir.file("upgrade-1.log"))
                .ok()?
                .contains("last-good copies left by the previous process")
                .then_some(())
        },
    );
    // Upgrade 2: C takes over from B.
    let mut c2 = Reap(start_upgrade(&g, 2));
    let ok = Command::new("kill")
        .arg("-QUIT")
        .arg(b.0.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let st = wait_child(&mut b.0, Duration::from_secs(30));
    let log_b = std::fs::read_to_string(g.dir.file("upgrade-1.log")).unwrap();
    assert!(st.success(), "B: {st:?}\n{log_b}");

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    let failed = failures.lock().unwrap().clone();
    let log_c = std::fs::read_to_string(g.dir.file("upgrade-2.log")).unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}\nA:\n{}\nB:\n{log_b}\nC:\n{log_c}",
        failed.len(),
        answered.load(Ordering::Relaxed),
        &failed[..failed.len().min(5)],
        g.logs()
    );
    assert!(answered.load(Ordering::Relaxed) > 100);
    eprintln!(
        "upgrade load: {} answered, 0 failed",
        answered.load(Ordering::Relaxed)
    );

    // C holds the copies only A saw, and keeps persisting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log_c = loop {
        let log = std::fs::read_to_string(g.dir.file("upgrade-2.log")).unwrap();
        if log.contains("last-good copies left by the previous process")
            || Instant::now() > deadline
        {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        log_c.contains("last-good copies left by the previous process"),
        "C did not take over the persist file:\n{log_c}\nB:\n{log_b}"
    );
    rejecting.store(true, Ordering::Relaxed);
    let mut c = KeepAlive::new(g.listen);
    for i in 0..20 {
        let a = c.get(&format!("/v1/first/{i}")).unwrap();
        assert_eq!(
            a.status,
            200,
            "{}\nC:\n{}",
            a.body,
            std::fs::read_to_string(g.dir.file("upgrade-2.log")).unwrap()
        );
        assert_eq!(a.body, format!(r#"{{"path":"/v1/first/{i}"}}"#));
    }
    for log in [
        g.logs(),
        log_b,
        std::fs::read_to_string(g.dir.file("upgrade-2.log")).unwrap(),
    ] {
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c2.0.id().to_string())
        .status();
    let st = wait_child(&mut c2.0, Duration::from_secs(30));
    assert!(st.success(), "C: {st:?}");
}

/// Kills a process the test started if the test ends early (a failed
/// assertion), so that no graceway outlives its test.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
