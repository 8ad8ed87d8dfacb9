//! Micro benchmarks of the per-request work graceway adds on top of
//! Pingora: routing, picking a token, looking up a last-good copy, the
//! breaker checks. `cargo bench --bench hot_path`; prints ns per operation.
//! No harness crate: a plain timing loop with `black_box`, median of 5.
//!
//! `GRACEWAY_BENCH_SMOKE=1` runs every case a few times only: `./dev test`
//! does that (`cargo test --bench hot_path`), so the benchmark cannot rot
//! unseen again (it had panicked at start since `credentials` became
//! required).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use graceway::cache::{Cache, CachedResponse, Recorded, StoreKey};
use graceway::generation::breaker::Breaker;
use graceway::generation::{Router, UpstreamStatus};

fn time<F: FnMut()>(name: &str, iters: u32, mut f: F) {
    let iters = if std::env::var_os("GRACEWAY_BENCH_SMOKE").is_some() {
        (iters / 10_000).max(1)
    } else {
        iters
    };
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..iters {
            f();
        }
        samples.push(t0.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{name:<40} {:>8.1} ns/op", samples[2]);
}

fn main() {
    let yaml = r#"
listen: "127.0.0.1:18080"
pid_file: /tmp/graceway-bench.pid
upstreams:
  - { name: a, url: "http://127.0.0.1:1", match: { path_prefix: "/" }, credentials: none }
  - { name: b, url: "http://127.0.0.1:2", match: { path_prefix: "/v1/special/" }, credentials: none }
  - { name: c, url: "http://127.0.0.1:3", match: { host: "emoji.internal" }, credentials: none }
  - { name: d, url: "http://127.0.0.1:4", match: { path_prefix: "/v2/" }, credentials: none }
"#;
    let cfg = graceway::config::parse(yaml, std::path::Path::new("/")).expect("bench config");
    let router = Router::new(&cfg.upstreams);
    time("router: longest prefix", 1_000_000, || {
        black_box(router.route(
            black_box(Some("api.example")),
            black_box("/v1/special/emojis/smile"),
        ));
    });
    time("router: host match", 1_000_000, || {
        black_box(router.route(black_box(Some("EMOJI.internal")), black_box("/v1/x")));
    });

    let store = Cache::new(64 << 20, 1 << 20, None);
    let owner = Arc::new(UpstreamStatus::new("a"));
    let req = pingora::http::RequestHeader::build("GET", b"/v1/emojis/smile?size=2", None).unwrap();
    let key = store.primary_key("a", &req);
    store.insert(
        key,
        None,
        Arc::new(CachedResponse::new(
            Recorded {
                headers: vec![(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                )],
                body: bytes::Bytes::from_static(br#"{"name":"smile"}"#),
                stored_at: SystemTime::now(),
                fresh_for: std::time::Duration::ZERO,
                must_revalidate: false,
                stale_if_error: None,
            },
            owner,
            StoreKey::of_request("a", &req),
        )),
        false,
    );
    time("store: primary key + lookup (hit)", 500_000, || {
        black_box(store.lookup(black_box("a"), black_box(&req)));
    });
    time("store: memory key alone (SipHash-128)", 1_000_000, || {
        black_box(store.primary_key(black_box("a"), black_box(&req)));
    });
    time(
        "store: stored key (SHA-256, per copy kept)",
        1_000_000,
        || {
            black_box(StoreKey::of_request(black_box("a"), black_box(&req)));
        },
    );
    // Admission past half the budget: one swap (the key is its own hash).
    let full = Cache::new(1, 1, None);
    let full_key = full.primary_key("a", &req);
    full.insert(full_key, None, store.lookup("a", &req).unwrap(), false);
    let other = full.primary_key(
        "a",
        &pingora::http::RequestHeader::build("GET", b"/some-key", None).unwrap(),
    );
    time("store: admission check (tier half full)", 1_000_000, || {
        black_box(full.admit(black_box(&other)));
    });

    // Echoed tokens: an ordinary answer's headers, and a body per byte.
    let reflections = graceway::tokens::reflect::Reflections::from_values([
        ("tok-primary-7f3a9c2e1b", 0),
        ("tok-standby-00aa11bb22", 1),
    ]);
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json; charset=utf-8"),
        ("date", "Tue, 01 Dec 2026 21:00:00 GMT"),
        ("cache-control", "max-age=60"),
        ("etag", "\"5d1e9f0a2b3c\""),
        ("x-request-id", "0f3c9a4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b"),
        ("ratelimit-remaining", "97"),
        ("vary", "Accept-Encoding"),
        ("server", "vendor"),
    ] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    time("reflect: scan 8 response headers (none)", 1_000_000, || {
        black_box(reflections.scrub_headers(black_box(&headers)));
    });
    let body = vec![b'x'; 16 * 1024];
    time("reflect: find in a 16 KiB body (none)", 20_000, || {
        black_box(reflections.find(black_box(&body)));
    });
    time(
        "reflect: scrub a 16 KiB body in 1 KiB chunks",
        20_000,
        || {
            let mut s = reflections.body_scrubber();
            for chunk in body.chunks(1024) {
                black_box(s.push(&reflections, chunk));
            }
            black_box(s.finish(&reflections));
        },
    );

    let breaker = Breaker::new(
        5,
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    time("breaker: closed check + success", 5_000_000, || {
        black_box(breaker.is_open());
        black_box(breaker.success());
    });
}
