//! The upstream-health breaker (hanging, refusing and failing upstreams
//! answered at once from the cache) and reload preflight.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::mock::Wire;
use crate::support::{
    client, run_cli, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};

const NORMAL: u8 = 0;
const HANG: u8 = 1;
const FAIL: u8 = 2;

/// An upstream switched between normal answers, hanging, and 503.
fn switchable() -> (MockUpstream, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(NORMAL));
    let m = mode.clone();
    let up = MockUpstream::start(move |r| match m.load(Ordering::SeqCst) {
        HANG => MockReply::ok("{}").wire(Wire::Hang),
        FAIL => MockReply::status(503, r#"{"error":"down"}"#),
        _ => MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.path())),
    });
    (up, mode)
}

fn config(port: u16, health: &str, extra: &str) -> String {
    EmojiConfig::new(port)
        .health(health)
        .upstream(extra)
        .build()
}

fn start(port: u16, health: &str, extra: &str) -> Graceway {
    Graceway::start_with_token("tok-health\n", &config(port, health, extra))
}

fn degraded(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("x-graceway-degraded")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_is_answered_at_once_after_the_breaker_opens() {
    let (up, mode) = switchable();
    let g = start(
        up.port,
        "{ open_after: 2, retry_after: 1s, max_retry_after: 4s }",
        "",
    );
    let c = client();
    for p in ["/v1/a", "/v1/b"] {
        assert_eq!(c.get(g.url(p)).send().await.unwrap().status(), 200);
    }
    mode.store(HANG, Ordering::SeqCst);
    // open_after: 2 slow answers (each waits the 2 s read timeout).
    for _ in 0..2 {
        let t0 = Instant::now();
        let r = c.get(g.url("/v1/a")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(degraded(&r).as_deref(), Some("upstream-timeout"));
        assert!(t0.elapsed() >= Duration::from_millis(1900));
    }
    let before = up.request_count();
    let t_open = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while t_open.elapsed() < Duration::from_millis(3500) {
        let t0 = Instant::now();
        let r = c.get(g.url("/v1/b")).send().await.unwrap();
        let took = t0.elapsed();
        assert_eq!(r.status(), 200);
        assert_eq!(degraded(&r).as_deref(), Some("upstream-timeout"));
        assert_eq!(r.text().await.unwrap(), r#"{"path":"/v1/b"}"#);
        // The half-open trial itself waits for the timeout; the rest must not.
        if took < Duration::from_millis(1500) {
            slowest = slowest.max(took);
            answered += 1;
        }
    }
    assert!(answered > 20, "{answered}");
    assert!(
        slowest < Duration::from_millis(500),
        "slowest short-circuit: {slowest:?}"
    );
    let trials = up.request_count() - before;
    // retry_after 1s: trial at ~1s (waits 2s), next window doubles to 2s.
    assert!((1..=2).contains(&trials), "half-open trials: {trials}");
    let st = g.status().await;
    let h = &st["upstreams"][0]["breakers"]["health"];
    assert_eq!(h["open"], true, "{st}");
    assert_eq!(h["reason"], "upstream-timeout");
    assert_eq!(st["upstreams"][0]["state"], "degraded");
    let m = g.metrics().await;
    assert!(
        m.contains("graceway_upstream_breaker_open{upstream=\"emoji\"} 1"),
        "{m}"
    );

    // Recovery: the next trial succeeds and closes it.
    mode.store(NORMAL, Ordering::SeqCst);
    wait_for_async("the breaker to close", Duration::from_secs(15), || async {
        let r = c.get(g.url("/v1/b")).send().await.unwrap();
        degraded(&r).is_none().then_some(())
    })
    .await;
    let m = g.metrics().await;
    assert!(m.contains("graceway_upstream_breaker_open{upstream=\"emoji\"} 0"));
    let logs = g.logs();
    assert_eq!(logs.matches("health breaker open").count(), 1, "{logs}");
    assert_eq!(logs.matches("health breaker closed").count(), 1, "{logs}");
    // The state watch reports the transitions too (log and webhook).
    assert!(
        logs.contains("health-breaker closed -> open (upstream-timeout)"),
        "{logs}"
    );
    crate::support::wait_for(
        "the state watch to see the close",
        Duration::from_secs(5),
        || {
            g.logs()
                .contains("health-breaker open -> closed")
                .then_some(())
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_and_5xx_streaks_open_it() {
    let (up, mode) = switchable();
    let g = start(
        up.port,
        "{ open_after: 3, retry_after: 10s, max_retry_after: 10s }",
        "",
    );
    let c = client();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    mode.store(FAIL, Ordering::SeqCst);
    for _ in 0..3 {
        let r = c.get(g.url("/v1/a")).send().await.unwrap();
        assert_eq!(degraded(&r).as_deref(), Some("upstream-5xx"));
    }
    let before = up.request_count();
    for _ in 0..20 {
        let r = c.get(g.url("/v1/a")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(degraded(&r).as_deref(), Some("upstream-5xx"));
    }
    assert_eq!(up.request_count(), before, "open: nothing goes upstream");
    // A path without a copy gets the 503 at once too.
    let r = c.get(g.url("/v1/none")).send().await.unwrap();
    assert_eq!(r.status(), 503);

    // Refused connections.
    let (up2, _) = switchable();
    let g2 = start(
        up2.port,
        "{ open_after: 2, retry_after: 10s, max_retry_after: 10s }",
        "",
    );
    assert_eq!(c.get(g2.url("/v1/a")).send().await.unwrap().status(), 200);
    drop(up2);
    for _ in 0..2 {
        let r = c.get(g2.url("/v1/a")).send().await.unwrap();
        assert_eq!(degraded(&r).as_deref(), Some("upstream-unreachable"));
    }
    let st = g2.status().await;
    assert_eq!(st["upstreams"][0]["breakers"]["health"]["open"], true);
    assert_eq!(
        st["upstreams"][0]["breakers"]["health"]["reason"],
        "upstream-unreachable"
    );
}

/// Short-circuit answers while the breaker is open keep the client's
/// connection: many answers over one socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_answers_keep_the_connection() {
    use std::io::{BufRead, BufReader, Read, Write};
    let (up, mode) = switchable();
    let g = start(
        up.port,
        "{ open_after: 1, retry_after: 30s, max_retry_after: 30s }",
        "",
    );
    assert_eq!(
        client().get(g.url("/v1/a")).send().await.unwrap().status(),
        200
    );
    mode.store(FAIL, Ordering::SeqCst);
    assert_eq!(
        client().get(g.url("/v1/a")).send().await.unwrap().status(),
        200
    );
    let port = g.listen;
    let got = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut n = 0;
        for _ in 0..200 {
            write!(s, "GET /v1/a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut len = 0;
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with("HTTP/1.1 200"), "{line}");
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            n += 1;
        }
        n
    })
    .await
    .unwrap();
    assert_eq!(got, 200, "200 answers over one connection");
}

fn preflight_config(port: u16) -> String {
    EmojiConfig::new(port)
        .upstream("      probe: { path: /v1/ping, interval: 60s }\n      preflight: true")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_a_token_the_upstream_refuses() {
    let up = MockUpstream::start(|r| match r.bearer() {
        Some("tok-old") | Some("tok-good") => MockReply::ok("{}"),
        _ => MockReply::revoked(401, "{}"),
    });
    let dir = TestDir::new();
    dir.write("token", "tok-old\n");
    dir.write("token.refused", "tok-refused\n");
    dir.write("token.good", "tok-good\n");
    let g = Graceway::start_in(dir, &preflight_config(up.port));
    let c = client();
    let seen = |up: &MockUpstream| {
        up.requests()
            .iter()
            .rev()
            .find(|r| r.path() != "/v1/ping")
            .and_then(|r| r.bearer().map(str::to_string))
    };

    // Rotation to a refused token, via the file + `graceway reload`.
    let cfg = g.config.clone();
    std::fs::copy(g.dir.file("token.refused"), g.dir.file("token")).unwrap();
    let (code, out, err) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || run_cli(&["reload", "-c", cfg.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_ne!(code, 0, "{out}{err}");
    let fp = graceway::tokens::fingerprint("tok-refused");
    assert!(err.contains(&fp) && err.contains("401"), "{err}");
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    assert_eq!(
        seen(&up).as_deref(),
        Some("tok-old"),
        "the old token still serves"
    );
    let st = g.status().await;
    assert_eq!(st["reload"]["ok"], false);
    assert!(st["reload"]["message"].as_str().unwrap().contains(&fp));
    let m = g.metrics().await;
    assert!(m.contains("graceway_token_reloads_total{result=\"failed\"}"));
    assert!(g.logs().contains(&fp));

    // A good token passes.
    std::fs::copy(g.dir.file("token.good"), g.dir.file("token")).unwrap();
    let (code, out, err) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || run_cli(&["reload", "-c", cfg.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    assert_eq!(seen(&up).as_deref(), Some("tok-good"));
    assert!(!g.logs().contains("tok-refused") && !g.logs().contains("tok-good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_with_the_upstream_down_still_applies() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let port = up.port;
    let g = Graceway::start_with_token("tok-before\n", &preflight_config(port));
    drop(up); // the upstream is down during the rotation
    let before = g.reload_attempt().await;
    g.dir.write("token", "tok-after\n");
    let r = g.wait_reload(before).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        g.logs().contains("preflight could not check token"),
        "{}",
        g.logs()
    );
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["tokens"][0]["fingerprint"],
        graceway::tokens::fingerprint("tok-after")
    );
}

/// With a probe configured, live requests never trial an open breaker; the
/// probe does, on the breaker's schedule (retry_after), not every
/// `probe.interval` (60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_retests_an_open_breaker_on_its_schedule() {
    let (up, mode) = switchable();
    let g = start(
        up.port,
        "{ open_after: 2, retry_after: 1s, max_retry_after: 2s }",
        "      probe: { path: /v1/ping, interval: 60s }",
    );
    let c = client();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    mode.store(FAIL, Ordering::SeqCst);
    for _ in 0..2 {
        c.get(g.url("/v1/a")).send().await.unwrap();
    }
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["breakers"]["health"]["open"], true,
        "{st}"
    );
    let live_before = up
        .requests()
        .iter()
        .filter(|r| r.path() != "/v1/ping")
        .count();
    mode.store(NORMAL, Ordering::SeqCst);
    let t0 = Instant::now();
    wait_for_async(
        "the probe to close the breaker",
        Duration::from_secs(10),
        || async {
            let r = c.get(g.url("/v1/a")).send().await.unwrap();
            degraded(&r).is_none().then_some(())
        },
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    let pings = up
        .requests()
        .iter()
        .filter(|r| r.path() == "/v1/ping")
        .count();
    assert!(pings >= 1, "the probe did the test");
    let live_during = up
        .requests()
        .iter()
        .filter(|r| r.path() != "/v1/ping")
        .count()
        - live_before;
    assert!(
        live_during <= 1,
        "live requests were short-circuited while open: {live_during}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_upstream_is_logged_once_a_second_not_once_per_flip() {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    let up = MockUpstream::start(move |_| {
        if n2.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
            MockReply::status(500, r#"{"error":"flap"}"#)
        } else {
            MockReply::ok("{}")
        }
    });
    let g = Graceway::start_with_token(
        "tok-flap\n",
        &EmojiConfig::new(up.port)
            .health("{ open_after: 1, retry_after: 1ms, max_retry_after: 1ms }")
            .build(),
    );
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let c = client();
            let url = g.url(&format!("/v1/flap/{w}"));
            tokio::spawn(async move {
                for _ in 0..60 {
                    let _ = c.get(&url).send().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs() + 1;
    let logs = g.logs();
    let lines = logs.matches("health breaker").count() as u64;
    assert!(n.load(Ordering::Relaxed) > 100, "the upstream was asked");
    assert!(
        lines <= 2 * secs + 2,
        "{lines} breaker lines in {secs} s:\n{logs}"
    );
}

/// A vendor whose answers the test switches: 200, 503, or a revoked token.
fn switchable_vendor() -> (MockUpstream, Arc<AtomicU8>) {
    // 0: fine, 1: 503, 2: the token is revoked (invalid_token).
    let mode = Arc::new(AtomicU8::new(0));
    let m = mode.clone();
    let up = MockUpstream::start(move |_| match m.load(Ordering::SeqCst) {
        0 => MockReply::ok(r#"{"fine":true}"#),
        1 => MockReply::status(503, r#"{"error":"down"}"#),
        _ => MockReply::revoked(401, r#"{"error":"invalid_token"}"#),
    });
    (up, mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_client_and_no_probe_a_background_trial_finds_the_recovery() {
    for (broken, breaker) in [(1u8, "health"), (2u8, "auth")] {
        let (up, mode) = switchable_vendor();
        let g = Graceway::start_with_token(
            "tok-trial\n",
            &EmojiConfig::new(up.port)
                .health("{ open_after: 2, retry_after: 1s, max_retry_after: 2s }")
                .build(),
        );
        let c = client();
        assert_eq!(
            c.get(g.url("/v1/a?page=1")).send().await.unwrap().status(),
            200
        );
        mode.store(broken, Ordering::SeqCst);
        for _ in 0..3 {
            let r = c.get(g.url("/v1/a?page=1")).send().await.unwrap();
            assert!(r.headers().contains_key("x-graceway-degraded"), "{breaker}");
        }
        let st = g.status().await;
        assert_eq!(
            st["upstreams"][0]["breakers"][breaker]["open"], true,
            "{st:#}"
        );
        // The vendor recovers; no client asks anything.
        let asked = up.request_count();
        mode.store(0, Ordering::SeqCst);
        wait_for_async(
            "a background trial to close the breaker",
            Duration::from_secs(6),
            || async {
                let st = g.status().await;
                (st["upstreams"][0]["breakers"][breaker]["open"] == false).then_some(())
            },
        )
        .await;
        let trial = &up.requests()[asked..];
        assert!(!trial.is_empty(), "{breaker}: no trial was sent");
        assert_eq!(
            trial[0].target, "/v1/a?page=1",
            "the last kept path, replayed"
        );
        assert_eq!(trial[0].bearer(), Some("tok-trial"));
        // The next client gets a fresh answer at once.
        let r = c.get(g.url("/v1/a?page=1")).send().await.unwrap();
        assert!(
            r.headers().get("x-graceway-degraded").is_none(),
            "{breaker}"
        );
    }
}
