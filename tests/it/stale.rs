//! The last-good cache through the real binary: what is stored, every
//! trigger in `stale.on`, the degradation headers, limits and persistence.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::mock::Wire;
use crate::support::{
    client, metric_value, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};

/// A mock whose answers the test switches: `status` 200 means normal JSON
/// with the path in the body; anything else is that status.
struct Switch {
    status: Arc<AtomicU16>,
    wire: Arc<std::sync::Mutex<Wire>>,
}

fn switchable() -> (MockUpstream, Switch) {
    let status = Arc::new(AtomicU16::new(200));
    let wire = Arc::new(std::sync::Mutex::new(Wire::Normal));
    let (s, w) = (status.clone(), wire.clone());
    let up = MockUpstream::start(move |r| {
        let st = s.load(Ordering::SeqCst);
        let wire = *w.lock().unwrap();
        let reply = if st == 200 {
            MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.target))
                .header("Cache-Control", "max-age=60")
                .header("ETag", "\"v1\"")
        } else {
            MockReply::status(
                st,
                r#"{"error":"upstream says no","secret_detail":"internal"}"#,
            )
        };
        reply.wire(wire)
    });
    (up, Switch { status, wire })
}

fn config(port: u16, extra_upstream: &str, extra_top: &str) -> String {
    EmojiConfig::new(port)
        .read_timeout("1s")
        .upstream(extra_upstream)
        .top(extra_top)
        .build()
}

fn start(port: u16, extra_upstream: &str, extra_top: &str) -> Graceway {
    Graceway::start_with_token("tok-stale\n", &config(port, extra_upstream, extra_top))
}

async fn get(g: &Graceway, path: &str) -> reqwest::Response {
    client().get(g.url(path)).send().await.unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Fills the cache with `path`, switches the upstream to `status`, and
/// checks the stale answer and its headers.
async fn assert_stale_on_status(status: u16, reason: &str) {
    let (up, sw) = switchable();
    let g = start(up.port, "", "");
    let r = get(&g, "/v1/emojis/smile").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "cache-status"), Some("graceway; fwd=miss"));
    sw.status.store(status, Ordering::SeqCst);

    let r = get(&g, "/v1/emojis/smile").await;
    assert_eq!(r.status(), 200, "status {status}: {}", g.logs());
    assert_eq!(header(&r, "x-graceway-degraded"), Some(reason));
    assert_eq!(
        header(&r, "cache-status"),
        Some(format!("graceway; fwd=stale; fwd-status={status}; detail={reason}").as_str())
    );
    assert!(header(&r, "age").is_some());
    assert!(
        header(&r, "warning").is_none(),
        "Warning only when configured"
    );
    assert_eq!(header(&r, "etag"), Some("\"v1\""));
    let body = r.text().await.unwrap();
    assert_eq!(body, r#"{"path":"/v1/emojis/smile"}"#);

    // Without a copy: 503 JSON naming the reason, never the upstream body.
    let r = get(&g, "/v1/emojis/never-fetched").await;
    assert_eq!(r.status(), 503);
    assert!(header(&r, "retry-after").is_some());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], reason);
    assert_eq!(body["upstream"], "emoji");
    assert!(!body.to_string().contains("secret_detail"));

    let m = g.metrics().await;
    assert!(
        m.contains(&format!(
            "graceway_stale_served_total{{reason=\"{reason}\",upstream=\"emoji\"}} 1"
        )),
        "{m}"
    );
    assert!(m.contains("graceway_degraded{upstream=\"emoji\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_on_401_and_403() {
    assert_stale_on_status(401, "token-rejected").await;
    assert_stale_on_status(403, "token-rejected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_on_429_and_5xx() {
    assert_stale_on_status(429, "rate-limited").await;
    for s in [500, 502, 503, 504] {
        assert_stale_on_status(s, "upstream-5xx").await;
    }
}

/// Timeouts, refused and reset connections: no upstream header exists, the
/// answer comes from the error path with `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_on_timeout_reset_and_refused() {
    let (up, sw) = switchable();
    let g = start(up.port, "", "");
    assert_eq!(get(&g, "/v1/a").await.status(), 200);

    *sw.wire.lock().unwrap() = Wire::Hang;
    let t0 = Instant::now();
    let r = get(&g, "/v1/a").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-graceway-degraded"), Some("upstream-timeout"));
    assert_eq!(
        header(&r, "cache-status"),
        Some("graceway; fwd=stale; detail=upstream-timeout")
    );
    assert_eq!(header(&r, "connection"), Some("close"));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "answered before the read timeout"
    );

    *sw.wire.lock().unwrap() = Wire::Close;
    let r = get(&g, "/v1/a").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-graceway-degraded"),
        Some("upstream-unreachable")
    );
    let r = get(&g, "/v1/no-copy").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["reason"],
        "upstream-unreachable"
    );

    drop(up); // the port now refuses connections
    let r = get(&g, "/v1/a").await;
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert_eq!(
        header(&r, "x-graceway-degraded"),
        Some("upstream-unreachable")
    );
    assert_eq!(r.text().await.unwrap(), r#"{"path":"/v1/a"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_can_be_left_out() {
    let (up, sw) = switchable();
    let g = start(up.port, "    stale: { on: [401, timeout] }", "");
    assert_eq!(get(&g, "/v1/a").await.status(), 200);
    sw.status.store(503, Ordering::SeqCst);
    // 5xx is not in stale.on: the upstream's answer goes through.
    let r = get(&g, "/v1/a").await;
    assert_eq!(r.status(), 503);
    assert!(header(&r, "x-graceway-degraded").is_none());
    assert!(r.text().await.unwrap().contains("upstream says no"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_stored() {
    let up = MockUpstream::start(|r| {
        let base = MockReply::ok(r#"{"x":1}"#);
        match r.path() {
            "/v1/no-store" => base.header("Cache-Control", "no-store"),
            "/v1/private" => base.header("Cache-Control", "private, max-age=60"),
            "/v1/cookie-set" => base.header("Set-Cookie", "a=b"),
            "/v1/big" => MockReply::ok(&"x".repeat(3000)),
            "/v1/big-chunked" => MockReply::ok(&"y".repeat(3000)).wire(Wire::Chunked),
            _ => base,
        }
    });
    let g = start(
        up.port,
        "",
        "cache: { memory_bytes: 1MiB, max_object_bytes: 2KiB }",
    );
    let c = client();
    for p in ["/v1/no-store", "/v1/private", "/v1/cookie-set"] {
        let r = c.get(g.url(p)).send().await.unwrap();
        assert_eq!(
            header(&r, "cache-status"),
            Some("graceway; fwd=miss"),
            "{p}"
        );
    }
    let r = c.get(g.url("/v1/big")).send().await.unwrap();
    assert_eq!(header(&r, "cache-status"), Some("graceway; fwd=miss"));
    assert_eq!(
        r.text().await.unwrap().len(),
        3000,
        "oversize bodies stream through"
    );
    let r = c.get(g.url("/v1/big-chunked")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap().len(), 3000);
    let r = c
        .get(g.url("/v1/with-auth"))
        .header("Authorization", "Bearer client-own")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "cache-status"), Some("graceway; fwd=miss"));
    let r = c
        .get(g.url("/v1/with-cookie"))
        .header("Cookie", "session=1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "cache-status"), Some("graceway; fwd=miss"));
    // The control: a plain GET is stored.
    let r = c.get(g.url("/v1/plain")).send().await.unwrap();
    assert_eq!(header(&r, "cache-status"), Some("graceway; fwd=miss"));

    up.set_handler(|_| MockReply::status(401, "{}"));
    for p in [
        "/v1/no-store",
        "/v1/private",
        "/v1/cookie-set",
        "/v1/big",
        "/v1/big-chunked",
        "/v1/with-auth",
        "/v1/with-cookie",
    ] {
        let r = c.get(g.url(p)).send().await.unwrap();
        assert_eq!(r.status(), 503, "{p} must have no copy");
    }
    assert_eq!(
        c.get(g.url("/v1/plain")).send().await.unwrap().status(),
        200
    );
    let st = g.status().await;
    assert_eq!(st["cache"]["entries"], 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_expires_copies() {
    let (up, sw) = switchable();
    let g = start(up.port, "    stale: { max_stale: 1s }", "");
    assert_eq!(get(&g, "/v1/a").await.status(), 200);
    sw.status.store(502, Ordering::SeqCst);
    assert_eq!(get(&g, "/v1/a").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = get(&g, "/v1/a").await;
    assert_eq!(
        r.status(),
        503,
        "a copy older than max_stale must not be served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_directives_are_honoured_unless_overridden() {
    for (directives, override_, served) in [
        ("max-age=0, must-revalidate", "", false),
        (
            "max-age=0, must-revalidate",
            "    stale: { origin_directives: ignore }",
            true,
        ),
        ("max-age=0, stale-if-error=1", "", true),
        // RFC 9111 §5.2.2.10: s-maxage implies proxy-revalidate, so a copy
        // past its s-maxage is never served stale (a fresh one still is).
        ("max-age=60, s-maxage=0", "", false),
        (
            "max-age=60, s-maxage=0",
            "    stale: { origin_directives: ignore }",
            true,
        ),
        ("s-maxage=60", "", true),
    ] {
        let d = directives.to_string();
        let up = MockUpstream::start(move |_| MockReply::ok("{}").header("Cache-Control", &d));
        let g = start(up.port, override_, "");
        assert_eq!(get(&g, "/v1/a").await.status(), 200);
        up.set_handler(|_| MockReply::status(500, "{}"));
        assert_eq!(
            get(&g, "/v1/a").await.status() == 200,
            served,
            "{directives} {override_}"
        );
    }
    // stale-if-error=1 stops serving after a second.
    let up = MockUpstream::start(|_| {
        MockReply::ok("{}").header("Cache-Control", "max-age=0, stale-if-error=1")
    });
    let g = start(up.port, "", "");
    assert_eq!(get(&g, "/v1/a").await.status(), 200);
    up.set_handler(|_| MockReply::status(500, "{}"));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(get(&g, "/v1/a").await.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keys_copies_by_request_headers() {
    let up = MockUpstream::start(|r| {
        let lang = r.header("accept-language").unwrap_or("none").to_string();
        MockReply::ok(&format!(r#"{{"lang":"{lang}"}}"#)).header("Vary", "Accept-Language")
    });
    let g = start(up.port, "", "");
    let c = client();
    for l in ["en", "fr"] {
        let r = c
            .get(g.url("/v1/greet"))
            .header("Accept-Language", l)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    up.set_handler(|_| MockReply::status(503, "{}"));
    for l in ["en", "fr"] {
        let r = c
            .get(g.url("/v1/greet"))
            .header("Accept-Language", l)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!(r#"{{"lang":"{l}"}}"#));
    }
    let r = c
        .get(g.url("/v1/greet"))
        .header("Accept-Language", "de")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "no copy for an unseen variant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_conditional_requests_on_a_stale_copy() {
    let (up, sw) = switchable();
    let g = start(up.port, "    stale: { warning_header: true }", "");
    let c = client();
    assert_eq!(get(&g, "/v1/a").await.status(), 200);
    sw.status.store(401, Ordering::SeqCst);

    let r = c.head(g.url("/v1/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-graceway-degraded"), Some("token-rejected"));
    assert_eq!(
        header(&r, "content-length"),
        Some(r#"{"path":"/v1/a"}"#.len().to_string().as_str())
    );
    assert_eq!(header(&r, "warning"), Some("110 - \"Response is Stale\""));

    let r = c
        .get(g.url("/v1/a"))
        .header("If-None-Match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "x-graceway-degraded"), Some("token-rejected"));
    assert_eq!(header(&r, "etag"), Some("\"v1\""));
    let r = c
        .get(g.url("/v1/a"))
        .header("If-None-Match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"path":"/v1/a"}"#);
    // Several ETags, the matching one weak and not first (pingora-core's
    // conditional filter); If-Modified-Since is ignored next to it.
    let r = c
        .get(g.url("/v1/a"))
        .header("If-None-Match", r#""other", W/"v1""#)
        .header("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "x-graceway-degraded"), Some("token-rejected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_budget_holds_under_distinct_keys() {
    let up = MockUpstream::start(|r| MockReply::ok(&format!("{}{}", r.target, "z".repeat(1000))));
    let g = start(
        up.port,
        "",
        "cache: { memory_bytes: 64KiB, max_object_bytes: 4KiB }",
    );
    let c = client();
    let budget = 64 * 1024;
    let mut max_seen = 0;
    for i in 0..400 {
        // Twice: past half the budget a key is kept on its second ask.
        for _ in 0..2 {
            let r = c.get(g.url(&format!("/v1/item/{i}"))).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        if i % 20 == 0 {
            let st = g.status().await;
            let bytes = st["cache"]["bytes"].as_i64().unwrap();
            max_seen = max_seen.max(bytes);
            assert!(
                bytes <= budget,
                "store holds {bytes} bytes, budget {budget}"
            );
        }
    }
    let st = g.status().await;
    assert!(st["cache"]["bytes"].as_i64().unwrap() <= budget);
    assert!(st["cache"]["entries"].as_i64().unwrap() > 10, "{st}");
    assert!(
        max_seen > budget / 2,
        "the test never filled the cache: {max_seen}"
    );
    let evictions = metric_value(&g.metrics().await, "graceway_cache_evictions_total").unwrap();
    assert!(evictions > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_persistence_serves_stale() {
    let (up, sw) = switchable();
    let dir = TestDir::new();
    dir.write("token", "tok-persist\n");
    let yaml = config(
        up.port,
        "",
        "cache: { persist: { path: \"{dir}/store/stale.redb\" } }",
    );
    let mut g = Graceway::start_in(dir, &yaml);
    for p in ["/v1/a", "/v1/b"] {
        assert_eq!(get(&g, p).await.status(), 200);
    }
    // The writer thread is asynchronous: give it a moment by polling the
    // file's size.
    let store_file = g.dir.file("store/stale.redb");
    wait_for_async(
        "the persist file to be written",
        Duration::from_secs(10),
        || async {
            (std::fs::metadata(&store_file).map(|m| m.len()).unwrap_or(0) > 0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let persist = g.dir.file("store/stale.redb");
    g.stop();

    // The outage starts while graceway is down.
    sw.status.store(401, Ordering::SeqCst);
    let dir2 = TestDir::new();
    dir2.write("token", "tok-persist\n");
    let yaml2 = config(
        up.port,
        "",
        &format!(
            "cache: {{ persist: {{ path: \"{}\" }} }}",
            persist.display()
        ),
    );
    let g2 = Graceway::start_in(dir2, &yaml2);
    let r = get(&g2, "/v1/b").await;
    assert_eq!(r.status(), 200, "{}", g2.logs());
    assert_eq!(header(&r, "x-graceway-degraded"), Some("token-rejected"));
    assert_eq!(r.text().await.unwrap(), r#"{"path":"/v1/b"}"#);
    assert!(
        g2.logs().contains("restored 2 last-good copies"),
        "{}",
        g2.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_persist_file_is_moved_aside() {
    let (up, _sw) = switchable();
    let dir = TestDir::new();
    dir.write("token", "tok-corrupt\n");
    std::fs::write(
        dir.file("stale.redb"),
        b"this is not a redb file, it is garbage",
    )
    .unwrap();
    let yaml = config(
        up.port,
        "",
        "cache: { persist: { path: \"{dir}/stale.redb\" } }",
    );
    let g = Graceway::start_in(dir, &yaml);
    assert_eq!(get(&g, "/v1/a").await.status(), 200);
    assert!(g.logs().contains("is damaged"), "{}", g.logs());
    let aside = std::fs::read_dir(g.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("stale.redb.corrupt-")
        });
    assert!(
        aside,
        "the corrupt file should be kept aside for inspection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_sees_401_during_revocation_under_concurrency() {
    let revoked = Arc::new(AtomicBool::new(false));
    let rv = revoked.clone();
    let up = MockUpstream::start(move |r| {
        if rv.load(Ordering::SeqCst) {
            MockReply::revoked(401, r#"{"error":"invalid_token"}"#)
        } else {
            MockReply::ok(&format!(r#"{{"p":"{}"}}"#, r.target))
        }
    });
    let g = start(up.port, "", "");
    let c = client();
    for i in 0..20 {
        assert_eq!(
            c.get(g.url(&format!("/v1/e/{i}")))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    revoked.store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for n in 0..1000 {
        let c = c.clone();
        let url = g.url(&format!("/v1/e/{}", n % 20));
        tasks.push(tokio::spawn(async move {
            let r = c.get(&url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let mut stale = 0;
    for (n, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        assert!(status != 401 && status != 403, "request {n} saw {status}");
        assert_eq!(status, 200);
        assert_eq!(body, format!(r#"{{"p":"/v1/e/{}"}}"#, n % 20));
        stale += 1;
    }
    assert_eq!(stale, 1000);
    // Once rejected, the token is not sent again (no usable token left).
    assert!(up.request_count() < 20 + 1000 / 2, "{}", up.request_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_body_failure_is_an_error_not_a_short_answer() {
    let up = MockUpstream::start(|_| MockReply::ok(&"q".repeat(10_000)).wire(Wire::Truncate));
    let g = start(up.port, "", "");
    let r = get(&g, "/v1/cut").await;
    assert_eq!(r.status(), 200, "the header was already on its way");
    assert!(
        r.bytes().await.is_err(),
        "a cut body must surface as an error"
    );
    // Nothing was stored from the broken answer.
    up.set_handler(|_| MockReply::status(500, "{}"));
    assert_eq!(get(&g, "/v1/cut").await.status(), 503);
}

/// Several degraded answers over one client connection: the request-phase
/// short-circuit, the response-phase rewrite, and the direct write for an
/// empty upstream body all keep the connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_answers_keep_the_client_connection() {
    use std::io::{BufRead, BufReader, Read, Write};
    let up = MockUpstream::start(|r| match r.path() {
        "/v1/fill" | "/v1/fill2" => MockReply::ok("{\"ok\":1}"),
        _ => MockReply::ok("{}"),
    });
    // A high open_after keeps the health breaker out of this test: it is
    // about the response-phase paths (tests/breaker.rs covers the breaker).
    let g = start(up.port, "    health: { open_after: 100 }", "");
    let c = client();
    assert_eq!(c.get(g.url("/v1/fill")).send().await.unwrap().status(), 200);
    assert_eq!(
        c.get(g.url("/v1/fill2")).send().await.unwrap().status(),
        200
    );

    let port = g.listen;
    let one_connection = move |paths: Vec<&'static str>| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut answers = Vec::new();
        for p in paths {
            write!(s, "GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            let mut len = 0;
            let mut degraded = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                let l = line.to_ascii_lowercase();
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if let Some(v) = l.strip_prefix("x-graceway-degraded:") {
                    degraded = v.trim().to_string();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            answers.push((
                status.trim().to_string(),
                degraded,
                String::from_utf8(body).unwrap(),
            ));
        }
        answers
    };

    // Response phase, upstream body with a length (rewrite).
    up.set_handler(|_| MockReply::status(503, "{\"down\":true}"));
    let a = tokio::task::spawn_blocking({
        let f = one_connection;
        move || f(vec!["/v1/fill", "/v1/fill2", "/v1/fill"])
    })
    .await
    .unwrap();
    for (s, d, b) in &a {
        assert!(s.contains("200"), "{a:?}");
        assert_eq!(d, "upstream-5xx");
        assert!(b.contains("ok"));
    }
    // Response phase, upstream `Content-Length: 0` (direct write).
    up.set_handler(|_| MockReply::status(502, ""));
    let a = tokio::task::spawn_blocking({
        let f = one_connection;
        move || f(vec!["/v1/fill", "/v1/fill2", "/v1/fill"])
    })
    .await
    .unwrap();
    for (s, d, b) in &a {
        assert!(
            s.contains("200") && d == "upstream-5xx" && b.contains("ok"),
            "{a:?}"
        );
    }
    // Token rejected with an empty body, then the request-phase
    // short-circuit (no usable token) on the same connection.
    up.set_handler(|_| MockReply::revoked(401, ""));
    let before = up.request_count();
    let a = tokio::task::spawn_blocking({
        let f = one_connection;
        move || f(vec!["/v1/fill", "/v1/fill2", "/v1/fill", "/v1/fill2"])
    })
    .await
    .unwrap();
    for (s, d, _) in &a {
        assert!(s.contains("200") && d == "token-rejected", "{a:?}");
    }
    assert_eq!(
        up.request_count() - before,
        1,
        "after the rejection nothing goes upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_off_paths_does_not_push_out_popular_copies() {
    // ~1 KB bodies in a 256 KiB tier: about 120 copies fit.
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = down.clone();
    let up = MockUpstream::start(move |r| {
        if d.load(Ordering::Relaxed) {
            return MockReply::status(503, r#"{"error":"down"}"#);
        }
        MockReply::ok(&format!(
            r#"{{"path":"{}","pad":"{}"}}"#,
            r.target,
            "p".repeat(900)
        ))
    });
    let g = start(
        up.port,
        "",
        "cache: { memory_bytes: 256KiB, max_object_bytes: 64KiB }",
    );
    let c = client();
    for round in 0..3 {
        for i in 0..50 {
            let r = c
                .get(g.url(&format!("/v1/popular/{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "round {round}");
        }
    }
    // One client, one-off paths (cache-busting queries), several at a time.
    let flood: Vec<_> = (0..8)
        .map(|w| {
            let (c, url) = (c.clone(), g.url("/v1/search"));
            tokio::spawn(async move {
                for i in 0..400 {
                    let r = c.get(format!("{url}?q={w}-{i}")).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for f in flood {
        f.await.unwrap();
    }
    let m = g.metrics().await;
    assert!(
        metric_value(&m, "graceway_cache_admissions_deferred_total") > Some(2000.0),
        "{m}"
    );
    // The outage: every popular copy is still there.
    down.store(true, Ordering::Relaxed);
    let mut served = 0;
    for i in 0..50 {
        let r = c
            .get(g.url(&format!("/v1/popular/{i}")))
            .send()
            .await
            .unwrap();
        if r.status() == 200 && r.headers().contains_key("x-graceway-degraded") {
            served += 1;
        }
    }
    assert_eq!(served, 50, "popular copies served after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_credential_is_never_stored_and_keys_hold_no_path() {
    // A fixed body, so that the only place a path could be is a key.
    let status = Arc::new(AtomicU16::new(200));
    let s = status.clone();
    let up = MockUpstream::start(move |_| match s.load(Ordering::SeqCst) {
        200 => MockReply::ok(r#"{"items":[]}"#),
        st => MockReply::status(st, r#"{"error":"down"}"#),
    });
    let mut g = start(
        up.port,
        "",
        "cache: { persist: { path: \"{dir}/store.redb\" } }",
    );
    let secret = "/v1/items?api_key=CLIENTSECRET&x=1";
    let plain = "/v1/items?page=2";
    assert_eq!(get(&g, secret).await.status(), 200);
    assert_eq!(get(&g, plain).await.status(), 200);
    let st = g.status().await;
    assert_eq!(st["upstreams"][0]["stored"]["entries"], 1, "{st:#}");
    status.store(503, Ordering::SeqCst);
    let r = get(&g, secret).await;
    assert_eq!(r.status(), 503, "a copy of a credentialed request was kept");
    let r = get(&g, plain).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-graceway-degraded").is_some());
    // The persist file names neither path (keys are SHA-256 hashes).
    let store = g.dir.file("store.redb");
    g.stop();
    let bytes = std::fs::read(&store).unwrap();
    for needle in ["CLIENTSECRET", "/v1/items", "page=2"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is in the persist file"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_matches_accept_encoding_as_a_set_counts_age_from_the_origin_date_and_promises_no_ranges(
) {
    let status = Arc::new(AtomicU16::new(200));
    let s = status.clone();
    let up = MockUpstream::start(move |_| match s.load(Ordering::SeqCst) {
        200 => {
            let date =
                httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(30));
            MockReply::ok(r#"{"v":1}"#)
                .header("Vary", "Accept-Encoding")
                .header("Accept-Ranges", "bytes")
                .header("Date", &date)
        }
        st => MockReply::status(st, r#"{"error":"down"}"#),
    });
    let g = start(up.port, "", "");
    let c = client();
    let get_with = |ae: &'static str| {
        let c = c.clone();
        let url = g.url("/v1/enc");
        async move {
            c.get(url)
                .header("Accept-Encoding", ae)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(get_with("gzip, deflate").await.status(), 200);
    status.store(503, Ordering::SeqCst);
    let r = get_with("deflate,gzip").await;
    assert_eq!(r.status(), 200, "the same set of codings selects the copy");
    assert!(r.headers().contains_key("x-graceway-degraded"));
    let age: u64 = r.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age >= 30, "Age counts from the origin's Date: {age}");
    assert!(
        r.headers().get("accept-ranges").is_none(),
        "{:?}",
        r.headers()
    );
    let r = get_with("br").await;
    assert_eq!(r.status(), 503, "another coding is another variant");
}
