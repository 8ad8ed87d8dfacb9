//! Hostile clients, as an attacker with a raw socket would be one: the
//! token never leaves through a side door, a route prefix is a boundary,
//! and no client's own stall, flood or framing trick degrades service for
//! others. Each case is a row of `docs/reliability.md`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{
    metric_value, raw_exchange, wait_for, EmojiConfig, Graceway, MockReply, MockUpstream, Recorded,
    TestDir,
};

const TOKEN: &str = "tok-crown-jewel-7f3a";

/// An upstream that echoes every request it receives (the way RFC 9110
/// §9.3.8 describes TRACE), so anything graceway injects would come back.
fn echoing_upstream() -> MockUpstream {
    MockUpstream::start(|r: &Recorded| MockReply::ok(&format!("{}\r\n\r\n", r.head)))
}

fn start(cfg: EmojiConfig) -> Graceway {
    Graceway::start_with_token(&format!("{TOKEN}\n"), &cfg.build())
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn trace_and_unlisted_methods_get_405_and_never_reach_the_upstream() {
    let up = echoing_upstream();
    let g = start(EmojiConfig::new(up.port));
    for method in ["TRACE", "g3t", "FOO-BAR", "PROPFIND"] {
        let r = raw_exchange(
            g.listen,
            format!("{method} /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            WAIT,
        );
        assert_eq!(r.status(), 405, "{method}: {}", r.text);
        assert!(
            r.text
                .contains("Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
                || r.text
                    .contains("allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            "{method}: {}",
            r.text
        );
        assert!(!r.text.contains(TOKEN), "{method} leaked the token");
    }
    assert_eq!(up.request_count(), 0, "{:?}", up.requests());
    // The allowed methods still go through, with the token.
    let r = raw_exchange(g.listen, get("/v1/x").as_bytes(), WAIT);
    assert_eq!(r.status(), 200, "{}", r.text);
    assert_eq!(up.requests()[0].bearer(), Some(TOKEN));
    assert!(!g.logs().contains(TOKEN));
}

#[test]
fn an_upstream_method_list_is_honoured_and_trace_is_refused_by_check() {
    let up = echoing_upstream();
    let g = start(EmojiConfig::new(up.port).upstream("    methods: [GET, PROPFIND]"));
    let r = raw_exchange(
        g.listen,
        b"PROPFIND /v1/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(r.status(), 200, "{}", r.text);
    let r = raw_exchange(
        g.listen,
        b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(r.status(), 405, "{}", r.text);
    assert!(r.text.to_ascii_lowercase().contains("allow: get, propfind"));

    let dir = TestDir::new();
    let cfg = dir.write(
        "bad.yaml",
        "upstreams: [{name: a, url: 'http://127.0.0.1:1', methods: [GET, TRACE]}]\n",
    );
    let (code, _, err) =
        crate::support::run_cli(&["check", "--skip-sources", "-c", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("upstreams[0].methods[1]"), "{err}");
}

#[test]
fn route_prefix_is_a_boundary() {
    let up = echoing_upstream();
    let g = start(EmojiConfig::new(up.port).upstream("    match: { path_prefix: \"/v1/\" }"));
    // Refused outright.
    for target in [
        "/v1/..%2fadmin",
        "/v1/..%2Fadmin",
        "/v1/..\\admin",
        "/v1/..%5cadmin",
        "/v1/../../admin",
        "x",
        "evil.example:80",
        "*",
        "/v1/a%00b",
        "/v1/%zz",
    ] {
        let r = raw_exchange(g.listen, get(target).as_bytes(), WAIT);
        assert_eq!(r.status(), 400, "{target}: {}", r.text);
    }
    // Normalized out of the prefix: no route.
    for target in ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/./../admin"] {
        let r = raw_exchange(g.listen, get(target).as_bytes(), WAIT);
        assert_eq!(r.status(), 404, "{target}: {}", r.text);
    }
    // Absolute-form naming an unknown host, and HTTP/1.1 without Host.
    let r = raw_exchange(
        g.listen,
        b"GET http://evil.example/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(r.status(), 400, "{}", r.text);
    let r = raw_exchange(
        g.listen,
        b"GET /v1/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        WAIT,
    );
    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(up.request_count(), 0, "{:?}", up.requests());

    // Normalized inside the prefix: the upstream gets the normal form.
    let host = format!("127.0.0.1:{}", up.port);
    for (target, upstream_sees) in [
        ("/v1/a/../b?q=%2e", "/v1/b?q=%2e"),
        ("/v1/%7Euser/./x", "/v1/~user/x"),
        (&*format!("http://127.0.0.1:{}/v1/abs", up.port), "/v1/abs"),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = raw_exchange(g.listen, req.as_bytes(), WAIT);
        assert_eq!(r.status(), 200, "{target}: {}", r.text);
        let last = up.requests().pop().unwrap();
        assert_eq!(last.target, upstream_sees, "{target}");
    }
    for rec in up.requests() {
        assert!(rec.target.starts_with("/v1/"), "{rec:?}");
    }
}

#[test]
fn a_slow_body_is_the_clients_stall_and_never_opens_the_breaker() {
    let up = MockUpstream::start(|_| MockReply::ok(r#"{"ok":true}"#));
    let g = start(
        EmojiConfig::new(up.port)
            .read_timeout("1s")
            .health("{ open_after: 2 }")
            .server("client_body_timeout: 1s"),
    );
    // Five attackers: a POST that promises 100 bytes and sends 10.
    let attackers: Vec<_> = (0..5)
        .map(|_| {
            let port = g.listen;
            std::thread::spawn(move || {
                raw_exchange(
                    port,
                    b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789",
                    Duration::from_secs(8),
                )
            })
        })
        .collect();
    // A normal client meanwhile sees only 200s.
    let started = Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let r = raw_exchange(g.listen, get("/v1/ok").as_bytes(), WAIT);
        statuses.push(r.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    for a in attackers {
        let r = a.join().unwrap();
        assert_eq!(r.status(), 408, "{}", r.text);
        assert!(r.closed);
        assert!(r.took < Duration::from_secs(4), "{:?}", r.took);
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(g.status());
    assert_eq!(
        status["upstreams"][0]["breakers"]["health"]["open"], false,
        "{status:#}"
    );
    let m = rt.block_on(g.metrics());
    assert!(
        metric_value(
            &m,
            "graceway_client_rejections_total{reason=\"body-timeout\"}"
        )
        .unwrap_or(0.0)
            >= 5.0,
        "{m}"
    );
    assert_no_error_lines(&g);
}

#[test]
fn a_dripped_header_is_cut_off_with_408() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = start(EmojiConfig::new(up.port).server("request_header_timeout: 1s"));
    // One byte every 200 ms: each read is quick, the header never ends.
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
    let (text, closed) = crate::support::drip(
        &mut s,
        b"GET /v1/x HTTP/1.1\r\nHost: h\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Duration::from_secs(6),
    );
    assert!(closed, "the dripping connection was not closed: {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A connection that never sends a byte is closed at the same deadline.
    let r = raw_exchange(g.listen, b"", Duration::from_secs(5));
    assert!(r.closed && r.took < Duration::from_secs(3), "{:?}", r.took);
    // A kept-alive connection may idle between requests (keep-alive
    // timeout, not the header deadline).
    let mut s = TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(1500));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(g.status());
    assert!(
        status["connections"]["proxy"]["header_timeouts"].as_u64() >= Some(2),
        "{status:#}"
    );
    assert_no_error_lines(&g);
}

#[test]
fn an_oversized_body_gets_413_and_nothing_upstream() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = start(EmojiConfig::new(up.port).server("max_request_body_bytes: 1KiB"));
    let mut req = b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'a', 2000));
    let r = raw_exchange(g.listen, &req, WAIT);
    assert_eq!(r.status(), 413, "{}", r.text);
    assert!(r.closed);
    assert_eq!(up.request_count(), 0);

    // Chunked: cut off once it passes the limit; the upstream never gets a
    // complete request.
    let mut req = b"POST /v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"400\r\n");
        req.extend(std::iter::repeat_n(b'b', 0x400));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw_exchange(g.listen, &req, WAIT);
    assert!(r.closed, "{}", r.text);
    assert!(r.status() == 413 || r.status() == 0, "{}", r.text);
    std::thread::sleep(Duration::from_millis(300));
    assert!(up.requests().iter().all(|rec| rec.body.len() <= 1024));

    // Within the limit it goes through.
    let mut req =
        b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
            .to_vec();
    req.extend(std::iter::repeat_n(b'c', 1000));
    assert_eq!(raw_exchange(g.listen, &req, WAIT).status(), 200);
    assert_no_error_lines(&g);
}

#[test]
fn framing_tricks_are_closed_canonicalized_or_refused() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = start(EmojiConfig::new(up.port));

    // CL + TE: answered, then the connection is closed (RFC 9112 §6.1).
    let r = raw_exchange(
        g.listen,
        b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        WAIT,
    );
    assert_eq!(r.status(), 200, "{}", r.text);
    assert!(
        r.closed && r.took < Duration::from_secs(3),
        "kept open: {:?}",
        r.took
    );

    // Duplicate, list-form and zero-padded Content-Length: one canonical value.
    for cl in [
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 5, 5",
        "Content-Length: 005",
    ] {
        let req =
            format!("POST /v1/cl HTTP/1.1\r\nHost: h\r\n{cl}\r\nConnection: close\r\n\r\nhello");
        let r = raw_exchange(g.listen, req.as_bytes(), WAIT);
        assert_eq!(r.status(), 200, "{cl}: {}", r.text);
        let rec = up.requests().pop().unwrap();
        assert_eq!(rec.header_count("content-length"), 1, "{cl}: {}", rec.head);
        assert_eq!(rec.header("content-length"), Some("5"), "{cl}");
        assert_eq!(rec.body, b"hello");
    }
    let before = up.request_count();
    // Codings graceway would have to drop: refused.
    for te in ["gzip, chunked", "chunked, chunked"] {
        let req = format!(
            "POST /v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let r = raw_exchange(g.listen, req.as_bytes(), WAIT);
        assert_eq!(r.status(), 400, "{te}: {}", r.text);
        assert!(r.closed);
    }
    // The request target counts toward the 64 KiB header limit.
    let req = format!(
        "GET /v1/{} HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(6000),
        "b".repeat(60 << 10)
    );
    assert_eq!(raw_exchange(g.listen, req.as_bytes(), WAIT).status(), 431);
    assert_eq!(up.request_count(), before);
    assert_no_error_lines(&g);
}

#[test]
fn a_connection_flood_is_capped_and_health_checks_still_answer() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g =
        start(EmojiConfig::new(up.port).server("max_connections: 50, request_header_timeout: 30s"));
    // A client with a kept-alive connection from before the flood.
    let mut keeper = TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
    keeper
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut keeper).starts_with("HTTP/1.1 200"));

    // 300 idle connections: 49 fit, the rest are refused with 503.
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", g.listen)) {
            flood.push(s);
        }
    }
    let refused = wait_for("refusals to be counted", Duration::from_secs(10), || {
        let n = crate::support::http_get_blocking(g.admin, "/status").ok()?;
        (n == 200).then_some(())?;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let s = rt.block_on(g.status());
        let refused = s["connections"]["proxy"]["refused"].as_u64()?;
        // Most are refused; a loaded machine that accepts the last ones
        // more than a second after the first lets those evict instead.
        (refused >= 150).then_some(s)
    });
    assert_eq!(refused["connections"]["proxy"]["max"], 50);
    // Each eviction admits its newcomer before the evicted one has gone,
    // so the count may pass the cap for a moment (by at most EVICT_SLACK,
    // 64); it settles back at the cap.
    assert!(refused["connections"]["proxy"]["open"].as_u64() <= Some(50 + 64));
    wait_for(
        "the open count to settle at the cap",
        Duration::from_secs(5),
        || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let s = rt.block_on(g.status());
            (s["connections"]["proxy"]["open"].as_u64() <= Some(50)).then_some(())
        },
    );
    assert!(refused["connections"]["nofile_soft"].as_u64() > Some(0));

    // The refused were told so, not left hanging.
    let mut told = 0;
    for s in &mut flood {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = s.read(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("too many client connections") {
                told += 1;
            }
        }
    }
    assert!(told >= 150, "{told}");
    // The idle kept-alive client was the first to make room (as nginx
    // reuses idle connections): closed, counted.
    let mut buf = [0u8; 16];
    keeper
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(matches!(keeper.read(&mut buf), Ok(0) | Err(_)));
    // During the flood: health checks answer fast, and once the silent
    // connections have held their slots for over a second, a new client
    // gets in at once (the slowest header is closed for it).
    let t = Instant::now();
    assert_eq!(
        crate::support::http_get_blocking(g.admin, "/healthz").unwrap(),
        200
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(1100));
    let r = raw_exchange(g.listen, get("/v1/x").as_bytes(), WAIT);
    assert_eq!(r.status(), 200, "{}", r.text);
    assert!(r.took < Duration::from_secs(1), "{:?}", r.took);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(g.status());
    assert!(
        s["connections"]["proxy"]["evicted"].as_u64() >= Some(2),
        "{s:#}"
    );

    // Once the flood goes, new connections are served again.
    drop(flood);
    wait_for("the cap to free up", Duration::from_secs(10), || {
        (raw_exchange(g.listen, get("/v1/x").as_bytes(), WAIT).status() == 200).then_some(())
    });
    assert_no_error_lines(&g);
}

/// An ERROR line means an operator should act; none of the above should.
fn assert_no_error_lines(g: &Graceway) {
    let logs = g.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
    assert!(!logs.contains(TOKEN));
}

#[test]
fn a_client_that_goes_away_is_its_own_outcome_not_an_error() {
    let up = MockUpstream::start(|_| {
        let mut r = MockReply::ok("{}");
        r.delay = Duration::from_millis(800);
        r
    });
    let g = start(EmojiConfig::new(up.port));
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
        s.write_all(b"GET /v1/slow HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = wait_for("the client outcome", Duration::from_secs(10), || {
        let m = rt.block_on(g.metrics());
        (metric_value(
            &m,
            "graceway_requests_total{outcome=\"client\",upstream=\"emoji\"}",
        )? >= 3.0)
            .then_some(m)
    });
    assert_eq!(
        metric_value(
            &m,
            "graceway_requests_total{outcome=\"error\",upstream=\"emoji\"}"
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            "graceway_client_rejections_total{reason=\"client-closed\"}"
        ) >= Some(3.0),
        "{m}"
    );
    let status = rt.block_on(g.status());
    assert_eq!(status["upstreams"][0]["breakers"]["health"]["open"], false);
    assert_no_error_lines(&g);
}

#[test]
fn bad_hosts_path_tricks_underscores_overrides_and_connect_are_refused() {
    let up = echoing_upstream();
    let g = start(EmojiConfig::new(up.port));
    let ask = |raw: &str| raw_exchange(g.listen, raw.as_bytes(), WAIT);
    for (req, status) in [
        ("GET /v1/x HTTP/1.1\r\nHost: a b/c\r\nConnection: close\r\n\r\n", 400),
        ("GET /v1/x HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n", 400),
        (&get("/v1/..;/admin"), 400),
        (&get("/v1/x;jsessionid=1"), 400),
        (&get("/v1/%252e%252e/admin"), 400),
        (&get("/v1/..%c0%afadmin"), 400),
        (
            "POST /v1/x HTTP/1.1\r\nHost: h\r\nX-HTTP-Method-Override: TRACE\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            405,
        ),
        // Pingora answers CONNECT before any hook: 405, or 400 when
        // `Host` differs from the target (docs/reliability.md says so).
        ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
        ("CONNECT example.com:443 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ] {
        let r = ask(req);
        assert_eq!(r.status(), status, "{req:?}: {}", r.text);
        assert!(!r.text.contains(TOKEN));
    }
    assert_eq!(up.request_count(), 0, "{:?}", up.requests());
    // An allowed override passes; an underscore header does not.
    let r = ask(
        "POST /v1/x HTTP/1.1\r\nHost: h\r\nX-HTTP-Method-Override: PATCH\r\nTransfer_Encoding: chunked\r\nX_Forwarded_For: 10.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status(), 200, "{}", r.text);
    let rec = &up.requests()[0];
    assert_eq!(rec.header("x-http-method-override"), Some("PATCH"));
    assert!(rec.header("transfer_encoding").is_none(), "{rec:?}");
    assert!(rec.header("x_forwarded_for").is_none(), "{rec:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = rt.block_on(g.metrics());
    assert_eq!(
        metric_value(
            &m,
            "graceway_request_headers_dropped_total{reason=\"underscore\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert_no_error_lines(&g);
}
