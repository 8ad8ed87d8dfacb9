//! Reading the vendor's signals: a forbidden path is not a dead token, a
//! quota is not a revocation, and deprecation, sunset and quota headers
//! reach the operator before users notice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{
    client, metric_value, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, Recorded,
    TestDir,
};

const TOKEN: &str = "tok-signals-1";
const STANDBY: &str = "tok-signals-2";

fn start(cfg: EmojiConfig) -> Graceway {
    let dir = TestDir::new();
    dir.write("token", TOKEN);
    dir.write("standby", STANDBY);
    Graceway::start_in(dir, &cfg.build())
}

/// `/admin/*` is forbidden to the token (RFC 6750 `insufficient_scope`),
/// everything else answers 200.
fn scoped_vendor(r: &Recorded) -> MockReply {
    if r.path().starts_with("/admin/") {
        MockReply::status(403, r#"{"error":"insufficient_scope","scope":"admin"}"#).header(
            "WWW-Authenticate",
            r#"Bearer realm="api", error="insufficient_scope", scope="admin""#,
        )
    } else {
        MockReply::ok(r#"{"items":[1,2,3]}"#).header("Cache-Control", "max-age=60")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hammering_a_forbidden_path_changes_nothing_for_others() {
    let up = MockUpstream::start(scoped_vendor);
    let g = start(
        EmojiConfig::new(up.port)
            .tokens("        - { file: \"{dir}/token\" }\n        - { file: \"{dir}/standby\" }"),
    );
    let c = client();
    let attacker = {
        let (c, url) = (c.clone(), g.url("/admin/x"));
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..60 {
                let r = c.get(&url).send().await.unwrap();
                got.push((r.status().as_u16(), r.text().await.unwrap()));
            }
            got
        })
    };
    for i in 0..60 {
        let r = c.get(g.url(&format!("/items/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", g.logs());
    }
    for (status, body) in attacker.await.unwrap() {
        assert_eq!(status, 403);
        assert!(
            body.contains("insufficient_scope"),
            "the vendor's own answer: {body}"
        );
    }
    // Only the first token was ever used: no failover, nothing rejected.
    assert!(up.requests().iter().all(|r| r.bearer() == Some(TOKEN)));
    let st = g.status().await;
    let u = &st["upstreams"][0];
    assert_eq!(u["tokens"][0]["state"], "active", "{u:#}");
    assert_eq!(u["breakers"]["auth"]["open"], false);
    assert_eq!(u["breakers"]["health"]["open"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_without_an_error_code_makes_the_token_suspect_and_the_probe_decides() {
    // `/private/*` answers a bare 403; the probe path works.
    let up = MockUpstream::start(|r| {
        if r.path().starts_with("/private/") {
            MockReply::status(403, r#"{"message":"Forbidden"}"#)
        } else {
            MockReply::ok("{}")
        }
    });
    let g =
        start(EmojiConfig::new(up.port).upstream("      probe: { path: /ping, interval: 60s }"));
    let c = client();
    // The probe's interval is 60 s: none has run yet.
    let probes_before = up.requests().iter().filter(|r| r.path() == "/ping").count();
    assert_eq!(probes_before, 0);
    let r = c.get(g.url("/private/x")).send().await.unwrap();
    assert_ne!(r.status(), 200);
    assert_eq!(
        g.status().await["upstreams"][0]["tokens"][0]["state"],
        "suspect"
    );
    // The suspicion wakes the probe at once (interval is 60 s); it answers
    // 200, so the token is active again and never was rejected.
    let st = wait_for_async(
        "the probe to clear the suspicion",
        Duration::from_secs(10),
        || async {
            let probes = up.requests().iter().filter(|r| r.path() == "/ping").count();
            let st = g.status().await;
            (probes > probes_before && st["upstreams"][0]["tokens"][0]["state"] == "active")
                .then_some(st)
        },
    )
    .await;
    assert_eq!(st["upstreams"][0]["breakers"]["auth"]["open"], false);
    assert!(!g.logs().contains("rejected with 403"), "{}", g.logs());
    assert_eq!(c.get(g.url("/items/1")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_probe_a_refusal_on_a_second_path_confirms() {
    let revoked = Arc::new(AtomicBool::new(false));
    let rv = revoked.clone();
    let up = MockUpstream::start(move |r| {
        if rv.load(Ordering::Relaxed) || r.path().starts_with("/private/") {
            MockReply::status(401, r#"{"message":"Unauthorized"}"#)
        } else {
            MockReply::ok("{}").header("Cache-Control", "max-age=60")
        }
    });
    let g = start(EmojiConfig::new(up.port).health("{ retry_after: 30s, max_retry_after: 60s }"));
    let c = client();
    // One path refused twice (under credentials.suspect_after, 3): only
    // suspect. (A third refusal in a row, with no success in between,
    // would reject it: see lifecycle::a_key_revoked_with_a_bare_401_...)
    for _ in 0..2 {
        c.get(g.url("/private/x")).send().await.unwrap();
    }
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["tokens"][0]["state"], "suspect",
        "{st:#}"
    );
    assert_eq!(c.get(g.url("/items/1")).send().await.unwrap().status(), 200);
    // The 200 clears the suspicion.
    assert_eq!(
        g.status().await["upstreams"][0]["tokens"][0]["state"],
        "active"
    );
    // A real revocation: refusals on two paths confirm it.
    revoked.store(true, Ordering::Relaxed);
    c.get(g.url("/items/1")).send().await.unwrap();
    assert_eq!(
        g.status().await["upstreams"][0]["tokens"][0]["state"],
        "suspect"
    );
    let r = c.get(g.url("/items/2")).send().await.unwrap();
    assert_eq!(r.headers()["x-graceway-degraded"], "token-rejected");
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["tokens"][0]["state"], "rejected",
        "{st:#}"
    );
    assert_eq!(st["upstreams"][0]["breakers"]["auth"]["open"], false);
    // From now on the copy is served without asking the vendor.
    let before = up.request_count();
    let r = c.get(g.url("/items/1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-graceway-degraded"], "token-rejected");
    assert_eq!(up.request_count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_403_is_rate_limited_with_retry_after_from_the_reset() {
    let limited = Arc::new(AtomicBool::new(false));
    let l = limited.clone();
    let up = MockUpstream::start(move |_| {
        if l.load(Ordering::Relaxed) {
            MockReply::status(403, r#"{"message":"API rate limit exceeded"}"#)
                .header("X-RateLimit-Limit", "5000")
                .header("X-RateLimit-Remaining", "0")
                .header("X-RateLimit-Reset", &(unix_now() + 120).to_string())
        } else {
            MockReply::ok("{}")
                .header("Cache-Control", "max-age=60")
                .header("X-RateLimit-Limit", "5000")
                .header("X-RateLimit-Remaining", "4999")
        }
    });
    let g = start(EmojiConfig::new(up.port));
    let c = client();
    assert_eq!(c.get(g.url("/items/1")).send().await.unwrap().status(), 200);
    limited.store(true, Ordering::Relaxed);
    let r = c.get(g.url("/items/1")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the copy");
    assert_eq!(r.headers()["x-graceway-degraded"], "rate-limited");
    let r = c.get(g.url("/items/never-seen")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-graceway-degraded"], "rate-limited");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((100..=120).contains(&retry), "Retry-After {retry}");
    let st = g.status().await;
    let t = &st["upstreams"][0]["tokens"][0];
    assert_eq!(t["state"], "active", "{t:#}");
    assert_eq!(t["quota"]["remaining"], 0, "{t:#}");
    assert_eq!(t["quota"]["limit"], 5000, "{t:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_gauges_from_both_header_families() {
    let family = Arc::new(AtomicBool::new(false));
    let f = family.clone();
    let up = MockUpstream::start(move |_| {
        if f.load(Ordering::Relaxed) {
            MockReply::ok("{}")
                .header("X-RateLimit-Limit", "5000")
                .header("X-RateLimit-Remaining", "7")
                .header("X-RateLimit-Reset", "1900000000")
        } else {
            MockReply::ok("{}")
                .header("RateLimit", r#""default";r=42;t=30"#)
                .header("RateLimit-Policy", r#""default";q=100;w=60"#)
        }
    });
    let g = start(EmojiConfig::new(up.port));
    let c = client();
    c.get(g.url("/a")).send().await.unwrap();
    let m = g.metrics().await;
    let series = |name: &str| format!("{name}{{token=\"0\",upstream=\"emoji\"}}");
    assert_eq!(
        metric_value(&m, &series("graceway_token_quota_remaining")),
        Some(42.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, &series("graceway_token_quota_limit")),
        Some(100.0)
    );
    let reset = metric_value(&m, &series("graceway_token_quota_reset_timestamp_seconds")).unwrap();
    assert!((reset - (unix_now() + 30) as f64).abs() < 5.0, "{reset}");
    family.store(true, Ordering::Relaxed);
    c.get(g.url("/a")).send().await.unwrap();
    let m = g.metrics().await;
    assert_eq!(
        metric_value(&m, &series("graceway_token_quota_remaining")),
        Some(7.0)
    );
    assert_eq!(
        metric_value(&m, &series("graceway_token_quota_limit")),
        Some(5000.0)
    );
    assert_eq!(
        metric_value(&m, &series("graceway_token_quota_reset_timestamp_seconds")),
        Some(1_900_000_000.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecation_and_sunset_reach_metrics_status_log_and_webhook_once() {
    let hook = MockUpstream::start(|_| MockReply::ok(""));
    let sunset = "Fri, 01 Jan 2027 00:00:00 GMT";
    let up = MockUpstream::start(move |_| {
        MockReply::ok("{}")
            .header("Deprecation", "@1796083200")
            .header("Sunset", sunset)
            .header(
                "Link",
                r#"<https://api.example/changes>; rel="deprecation", <https://api.example/v2>; rel="successor-version""#,
            )
    });
    let g = start(EmojiConfig::new(up.port).top(&format!(
        r#"alerts: {{ webhook: "http://127.0.0.1:{}/hook" }}"#,
        hook.port
    )));
    let c = client();
    for i in 0..5 {
        assert_eq!(
            c.get(g.url(&format!("/a/{i}")))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let m = g.metrics().await;
    assert_eq!(
        metric_value(&m, "graceway_upstream_deprecated{upstream=\"emoji\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "graceway_upstream_sunset_timestamp_seconds{upstream=\"emoji\"}"
        ),
        Some(1_798_761_600.0)
    );
    let st = g.status().await;
    let n = &st["upstreams"][0]["tokens"][0]["notice"];
    assert_eq!(n["deprecated"], true, "{n:#}");
    assert_eq!(n["deprecation_at"], "2026-12-01T00:00:00Z");
    assert_eq!(n["sunset_at"], "2027-01-01T00:00:00Z");
    assert_eq!(n["links"][1]["rel"], "successor-version");
    assert_eq!(n["links"][1]["url"], "https://api.example/v2");
    let (code, out, _) = crate::support::run_cli(&["status", "--admin", &g.admin_url("")]);
    assert_eq!(code, 0);
    assert!(
        out.contains("DEPRECATED (from 2026-12-01T00:00:00Z)"),
        "{out}"
    );
    assert!(out.contains("SUNSET at 2027-01-01T00:00:00Z"), "{out}");

    // One webhook event and one log line for the notice, however many
    // answers carried it.
    let events = wait_for_async("the notice event", Duration::from_secs(10), || async {
        let ev: Vec<serde_json::Value> = hook
            .requests()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["kind"] == "notice")
            .collect();
        (!ev.is_empty()).then_some(ev)
    })
    .await;
    for i in 5..10 {
        c.get(g.url(&format!("/a/{i}"))).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let total = hook
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["kind"] == "notice")
        .count();
    assert_eq!(total, 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        e["to"], "deprecation at 2026-12-01T00:00:00Z; sunset at 2027-01-01T00:00:00Z",
        "{e}"
    );
    assert!(e["reason"]
        .as_str()
        .unwrap()
        .contains("successor-version: https://api.example/v2"));
    let logs = g.logs();
    assert_eq!(
        logs.matches("the vendor announced deprecation").count(),
        1,
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendors_words_on_a_rejection_reach_status_and_log() {
    let up = MockUpstream::start(|r| {
        if r.bearer() == Some(TOKEN) {
            MockReply::status(401, "{}").header(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer error="invalid_token", error_description="token {TOKEN} has been deprecated""#
                ),
            )
        } else {
            MockReply::ok("{}")
        }
    });
    let g = start(
        EmojiConfig::new(up.port)
            .tokens("        - { file: \"{dir}/token\" }\n        - { file: \"{dir}/standby\" }"),
    );
    let c = client();
    assert_eq!(c.get(g.url("/a")).send().await.unwrap().status(), 200);
    let st = g.status().await;
    let t = &st["upstreams"][0]["tokens"][0];
    assert_eq!(t["state"], "rejected");
    assert_eq!(
        t["detail"], "invalid_token (token [token] has been deprecated)",
        "the echoed token is redacted: {t:#}"
    );
    let logs = g.logs();
    assert!(
        logs.contains("invalid_token (token [token] has been deprecated)"),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN));
    assert!(!st.to_string().contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_429_failover_a_spent_token_is_skipped_until_its_reset() {
    // The primary's quota is spent; the standby has plenty.
    let up = MockUpstream::start(|r| {
        if r.bearer() == Some(TOKEN) {
            MockReply::status(429, r#"{"message":"slow down"}"#).header("Retry-After", "30")
        } else {
            MockReply::ok("{}").header("Cache-Control", "max-age=60")
        }
    });
    let g = start(
        EmojiConfig::new(up.port)
            .tokens("        - { file: \"{dir}/token\" }\n        - { file: \"{dir}/standby\" }")
            .upstream("      failover_on: [401, 403, 429]"),
    );
    let c = client();
    // Invisible to the client: the same request goes out again with the standby.
    let r = c.get(g.url("/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-graceway-degraded").is_none());
    let st = g.status().await;
    let t = &st["upstreams"][0]["tokens"][0];
    assert_eq!(t["state"], "rate-limited", "{t:#}");
    assert!(t["cool_until"].is_string(), "{t:#}");
    // Later requests skip the cooling token: no more 429s asked for.
    let before = up
        .requests()
        .iter()
        .filter(|r| r.bearer() == Some(TOKEN))
        .count();
    for i in 0..5 {
        assert_eq!(
            c.get(g.url(&format!("/b/{i}")))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let after = up
        .requests()
        .iter()
        .filter(|r| r.bearer() == Some(TOKEN))
        .count();
    assert_eq!(before, after);
    assert_eq!(st["upstreams"][0]["breakers"]["auth"]["open"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_429_failover_a_429_is_served_stale_and_the_token_stays_active() {
    let limited = Arc::new(AtomicBool::new(false));
    let l = limited.clone();
    let up = MockUpstream::start(move |_| {
        if l.load(Ordering::Relaxed) {
            MockReply::status(429, "{}").header("Retry-After", "30")
        } else {
            MockReply::ok("{}").header("Cache-Control", "max-age=60")
        }
    });
    let g = start(
        EmojiConfig::new(up.port)
            .tokens("        - { file: \"{dir}/token\" }\n        - { file: \"{dir}/standby\" }"),
    );
    let c = client();
    c.get(g.url("/a")).send().await.unwrap();
    limited.store(true, Ordering::Relaxed);
    let r = c.get(g.url("/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-graceway-degraded"], "rate-limited");
    let r = c.get(g.url("/never-seen")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "30");
    assert!(
        up.requests().iter().all(|r| r.bearer() == Some(TOKEN)),
        "no failover"
    );
    assert_eq!(
        g.status().await["upstreams"][0]["tokens"][0]["state"],
        "active"
    );
}
