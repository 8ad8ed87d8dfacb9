//! An upstream that echoes the token graceway sent it: in a header, a
//! `Location`, a query or a body. The value never reaches the client (with
//! `stale.scrub_bodies` for bodies), the memory tier, the persist file or
//! Redis. Rows of `docs/reliability.md`'s hostile table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::support::redis::Redis;
use crate::support::{metric_value, EmojiConfig, Graceway, MockReply, MockUpstream, Recorded};

/// Echoes what it was sent, until `down` (then 503).
fn echoing(down: Arc<AtomicBool>) -> MockUpstream {
    MockUpstream::start(move |r: &Recorded| {
        if down.load(Ordering::Relaxed) {
            return MockReply::status(503, r#"{"error":"down"}"#);
        }
        let auth = r.header("authorization").unwrap_or("").to_string();
        let query = r.target.split_once('?').map_or("", |(_, q)| q).to_string();
        match r.target.split('?').next().unwrap_or("") {
            "/v1/echo-header" => MockReply::ok(r#"{"ok":1}"#)
                .header("X-Echo-Authorization", &auth)
                .header("Location", &format!("/v1/next?{query}"))
                .header("X-Plain", "nothing to see"),
            "/v1/echo-body" => MockReply::ok(&format!(
                r#"{{"links":{{"self":"/v1/echo-body?{query}"}},"auth":"{auth}"}}"#
            )),
            "/v1/redirect" => MockReply::status(302, "").header(
                "Location",
                &format!("https://vendor.example/v1/next?{query}"),
            ),
            _ => MockReply::ok(r#"{"plain":true}"#),
        }
    })
}

fn header_text(r: &reqwest::Response) -> String {
    r.headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_header_and_body_tokens_never_reach_the_client_the_cache_disk_or_redis() {
    const TOKEN: &str = "tok-echoed-9b2c4d";
    let redis = Redis::start(&[]);
    let down = Arc::new(AtomicBool::new(false));
    let up = echoing(down.clone());
    let cfg = EmojiConfig::new(up.port)
        .upstream("    stale: { scrub_bodies: true }")
        .top(&format!(
            "cache: {{ persist: {{ path: \"{{dir}}/store.redb\" }}, redis: {{ url: \"{}\" }} }}",
            redis.url()
        ));
    let mut g = Graceway::start_with_token(&format!("{TOKEN}\n"), &cfg.build());

    // Fresh answers: the client sees the token masked.
    let r = g.get("/v1/echo-header").await;
    assert_eq!(r.status(), 200);
    let h = header_text(&r);
    assert!(!h.contains(TOKEN), "{h}");
    assert_eq!(r.headers()["x-echo-authorization"], "Bearer [token]");
    assert_eq!(r.headers()["x-plain"], "nothing to see");
    let r = g.get("/v1/echo-body").await;
    assert_eq!(r.status(), 200);
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.text().await.unwrap();
    assert_eq!(body.len(), len, "the length is kept");
    assert!(!body.contains(TOKEN), "{body}");
    assert!(body.contains(r#""auth":"Bearer [token]"#), "{body}");

    // The vendor goes down: the header answer was kept (masked), the body
    // answer never was.
    down.store(true, Ordering::Relaxed);
    let r = g.get("/v1/echo-header").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-graceway-degraded"));
    let h = header_text(&r);
    assert!(!h.contains(TOKEN), "{h}");
    let r = g.get("/v1/echo-body").await;
    assert_eq!(r.status(), 503, "a copy holding the token was kept");
    assert!(!r.text().await.unwrap().contains(TOKEN));

    let m = g.metrics().await;
    let series = |part: &str| {
        metric_value(
            &m,
            &format!("graceway_token_reflections_total{{part=\"{part}\",upstream=\"emoji\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(series("header") >= 1.0, "{m}");
    assert!(series("body") >= 1.0, "{m}");
    assert!(!m.contains(TOKEN));

    // Redis holds the header copy, never the value.
    let keys = redis.cli(&["--scan"]);
    assert!(!keys.trim().is_empty(), "nothing reached redis");
    for k in keys.lines().filter(|k| !k.is_empty()) {
        assert!(!k.contains("echo"), "a raw path in a Redis key: {k}");
        assert!(!redis.cli(&["GET", k]).contains(TOKEN), "{k}");
    }
    // The persist file neither (after the writer flushed on exit).
    g.stop();
    let stored = std::fs::read(g.dir.file("store.redb")).unwrap();
    assert!(
        !stored.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the token is in the persist file"
    );
    let logs = g.logs();
    assert!(!logs.contains(TOKEN));
    assert_eq!(
        logs.matches("echoed token 0").count(),
        1,
        "one WARN per token: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_query_tokens_are_taken_out_of_location_and_bodies_are_not_kept() {
    // Characters that query injection percent-encodes: the upstream sees
    // (and echoes) the encoded form.
    const TOKEN: &str = "tok/q+9=s3cret";
    const ENCODED: &str = "tok%2Fq%2B9%3Ds3cret";
    let down = Arc::new(AtomicBool::new(false));
    let up = echoing(down.clone());
    let cfg = EmojiConfig::new(up.port).upstream("      inject: { query: access_token }");
    let g = Graceway::start_with_token(&format!("{TOKEN}\n"), &cfg.build());
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let r = c.get(g.url("/v1/redirect?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(!loc.contains(ENCODED) && !loc.contains(TOKEN), "{loc}");
    assert!(loc.contains("access_token=[token]"), "{loc}");
    assert!(up.requests()[0].target.contains(ENCODED));

    let r = c.get(g.url("/v1/echo-header")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(!loc.contains(ENCODED), "{loc}");

    // Without scrub_bodies the body passes as the vendor sent it, but is
    // never kept: the outage finds no copy.
    let r = c.get(g.url("/v1/echo-body")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    down.store(true, Ordering::Relaxed);
    let r = c.get(g.url("/v1/echo-body")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = c.get(g.url("/v1/echo-header")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the masked header copy was kept");
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(!loc.contains(ENCODED), "{loc}");
    assert!(!g.logs().contains(TOKEN) && !g.logs().contains(ENCODED));
}
