//! Spending the vendor's calls with care, through the real binary:
//! collapsed forwarding (`cache.coalesce`), fresh hits and revalidation
//! (`upstreams[].cache.fresh: honor`). The mock holds its answers
//! (`MockReply::hold`) so a test sees who waits while a fetch is in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    client, metric_value, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream,
};

const WAITING: &str = r#"graceway_coalesce_waiting{upstream="emoji"}"#;

fn waits(outcome: &str) -> String {
    format!(r#"graceway_coalesce_waits_total{{outcome="{outcome}",upstream="emoji"}}"#)
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `n` concurrent GETs of `path`: (status, Cache-Status, body) each.
fn herd(g: &Graceway, path: &str, n: usize) -> Vec<tokio::task::JoinHandle<(u16, String, String)>> {
    let c = client();
    (0..n)
        .map(|_| {
            let (c, url) = (c.clone(), g.url(path));
            tokio::spawn(async move {
                let r = c.get(url).send().await.unwrap();
                let cs = header(&r, "cache-status");
                (r.status().as_u16(), cs, r.text().await.unwrap())
            })
        })
        .collect()
}

async fn answers(
    herd: Vec<tokio::task::JoinHandle<(u16, String, String)>>,
) -> Vec<(u16, String, String)> {
    let mut out = Vec::new();
    for h in herd {
        out.push(h.await.unwrap());
    }
    out
}

async fn metric(g: &Graceway, series: &str) -> f64 {
    metric_value(&g.metrics().await, series).unwrap_or(0.0)
}

/// Waits until `series` reads `want`.
async fn wait_metric(g: &Graceway, series: &str, want: f64) {
    wait_for_async(
        &format!("{series} = {want}"),
        Duration::from_secs(20),
        || async { (metric(g, series).await == want).then_some(()) },
    )
    .await;
}

async fn wait_calls(up: &MockUpstream, want: usize) {
    wait_for_async(
        &format!("{want} vendor calls"),
        Duration::from_secs(20),
        || async { (up.request_count() >= want).then_some(()) },
    )
    .await;
}

/// A vendor that holds every answer until `release` is set.
fn held(release: &Arc<AtomicBool>, cache_control: &'static str) -> MockUpstream {
    let release = release.clone();
    MockUpstream::start(move |r| {
        MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.target))
            .header("Cache-Control", cache_control)
            .hold(&release)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_herd_of_200_identical_requests_costs_one_vendor_call() {
    let release = Arc::new(AtomicBool::new(false));
    let up = held(&release, "max-age=60");
    let cfg = EmojiConfig::new(up.port)
        .top("log: { access: true }")
        .build();
    let g = Graceway::start_with_token("tok-herd\n", &cfg);

    let herd = herd(&g, "/v1/emojis/smile", 200);
    wait_calls(&up, 1).await;
    wait_metric(&g, WAITING, 199.0).await;
    assert_eq!(up.request_count(), 1, "only the lead reaches the vendor");
    release.store(true, Ordering::SeqCst);

    let got = answers(herd).await;
    assert!(got
        .iter()
        .all(|(s, _, b)| *s == 200 && b == r#"{"path":"/v1/emojis/smile"}"#));
    let coalesced = got
        .iter()
        .filter(|(_, cs, _)| cs == "graceway; hit; detail=coalesced")
        .count();
    assert_eq!(
        coalesced,
        199,
        "{:?}",
        got.iter().map(|g| &g.1).collect::<Vec<_>>()
    );
    assert_eq!(
        got.iter()
            .filter(|(_, cs, _)| cs == "graceway; fwd=miss")
            .count(),
        1
    );
    assert_eq!(up.request_count(), 1);
    assert_eq!(metric(&g, &waits("answered")).await, 199.0);
    assert_eq!(metric(&g, WAITING).await, 0.0);
    let m = g.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"graceway_cache_hits_total{kind="coalesced",upstream="emoji"}"#
        ),
        Some(199.0)
    );
    let calls = &g.status().await["upstreams"][0]["calls"];
    assert_eq!(calls["coalesced"], 199, "{calls}");
    assert_eq!(calls["waiting"], 0, "{calls}");
    // The access log says which answers were coalesced.
    let logs = g.logs();
    assert_eq!(
        logs.matches("outcome=hit reason=coalesced").count(),
        199,
        "{logs}"
    );

    // Another key is a fetch of its own.
    let r = client()
        .get(g.url("/v1/emojis/frown"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "cache-status"), "graceway; fwd=miss");
    assert_eq!(up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_coalescing_off_every_request_is_a_vendor_call() {
    let release = Arc::new(AtomicBool::new(false));
    let up = held(&release, "max-age=60");
    let cfg = EmojiConfig::new(up.port)
        .top("cache: { coalesce: { wait: 0s } }")
        .build();
    let g = Graceway::start_with_token("tok-herd\n", &cfg);
    let herd = herd(&g, "/v1/emojis/smile", 20);
    wait_calls(&up, 20).await;
    release.store(true, Ordering::SeqCst);
    let got = answers(herd).await;
    assert!(got
        .iter()
        .all(|(s, cs, _)| *s == 200 && cs == "graceway; fwd=miss"));
    assert_eq!(up.request_count(), 20);
    assert_eq!(metric(&g, WAITING).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leaders_client_leaving_does_not_fail_its_waiters() {
    use std::io::Write;
    let release = Arc::new(AtomicBool::new(false));
    let up = held(&release, "max-age=60");
    let g = Graceway::start_with_token("tok-leave\n", &EmojiConfig::new(up.port).build());

    let mut lead = std::net::TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
    lead.write_all(b"GET /v1/emojis/smile HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_calls(&up, 1).await;
    let herd = herd(&g, "/v1/emojis/smile", 5);
    wait_metric(&g, WAITING, 5.0).await;
    drop(lead);
    // The lead's fetch ends with its client (see docs/how-it-works.md):
    // one waiter leads a second one, the others wait for it.
    wait_calls(&up, 2).await;
    wait_metric(&g, WAITING, 4.0).await;
    release.store(true, Ordering::SeqCst);

    let got = answers(herd).await;
    assert!(
        got.iter()
            .all(|(s, _, b)| *s == 200 && b == r#"{"path":"/v1/emojis/smile"}"#),
        "{got:?}"
    );
    assert_eq!(
        got.iter()
            .filter(|(_, cs, _)| cs == "graceway; hit; detail=coalesced")
            .count(),
        4
    );
    assert_eq!(up.request_count(), 2);
    // Each waiter heard the lead abandon its fetch once.
    assert_eq!(metric(&g, &waits("abandoned")).await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_that_may_not_be_shared_sends_each_waiter_itself() {
    for (path, cc, status) in [
        ("/v1/emojis/nostore", "no-store", 200),
        ("/v1/emojis/private", "private, max-age=60", 200),
        ("/v1/emojis/broken", "max-age=60", 500),
    ] {
        // A 5xx with no copy to answer from is graceway's 503 to each.
        let answered = if status == 500 { 503 } else { status };
        let release = Arc::new(AtomicBool::new(false));
        let rel = release.clone();
        let up = MockUpstream::start(move |r| {
            MockReply::status(status, &format!(r#"{{"path":"{}"}}"#, r.target))
                .header("Cache-Control", cc)
                .hold(&rel)
        });
        let g = Graceway::start_with_token("tok-alone\n", &EmojiConfig::new(up.port).build());
        let herd = herd(&g, path, 5);
        wait_calls(&up, 1).await;
        wait_metric(&g, WAITING, 4.0).await;
        release.store(true, Ordering::SeqCst);
        let got = answers(herd).await;
        // Each waiter asked the vendor itself and got the vendor's answer,
        // never the lead's error as if it were its own.
        assert!(
            got.iter()
                .all(|(s, cs, _)| *s == answered && !cs.contains("hit")),
            "{path}: {got:?}"
        );
        assert_eq!(up.request_count(), 5, "{path}");
        assert_eq!(metric(&g, &waits("alone")).await, 4.0, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_on_a_failing_fetch_are_answered_from_the_copy_without_more_calls() {
    let failing = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (f, rel) = (failing.clone(), release.clone());
    let up = MockUpstream::start(move |r| {
        if f.load(Ordering::SeqCst) {
            MockReply::status(503, r#"{"error":"down"}"#).hold(&rel)
        } else {
            MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.target))
                .header("Cache-Control", "max-age=60")
        }
    });
    let g = Graceway::start_with_token("tok-fail\n", &EmojiConfig::new(up.port).build());
    let r = g.get("/v1/emojis/smile").await;
    assert_eq!(r.status(), 200);
    failing.store(true, Ordering::SeqCst);

    let herd = herd(&g, "/v1/emojis/smile", 5);
    wait_calls(&up, 2).await;
    wait_metric(&g, WAITING, 4.0).await;
    release.store(true, Ordering::SeqCst);
    let got = answers(herd).await;
    assert!(
        got.iter()
            .all(|(s, cs, b)| *s == 200 && cs.contains("fwd=stale") && b.contains("smile")),
        "{got:?}"
    );
    assert_eq!(up.request_count(), 2, "the waiters cost no vendor call");
    assert_eq!(metric(&g, &waits("degraded")).await, 4.0);
}

/// A vendor whose answers carry `cache_control` and `ETag: "v1"`, and
/// that answers a matching `If-None-Match` with a 304.
fn validating(cache_control: &'static str) -> MockUpstream {
    MockUpstream::start(move |r| {
        if r.header("if-none-match") == Some("\"v1\"") {
            return MockReply::status(304, "")
                .header("Cache-Control", cache_control)
                .header("ETag", "\"v1\"");
        }
        MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.target))
            .header("Cache-Control", cache_control)
            .header("ETag", "\"v1\"")
    })
}

fn honoring(port: u16) -> String {
    EmojiConfig::new(port)
        .upstream("    cache: { fresh: honor }")
        .build()
}

#[tokio::test]
async fn fresh_hits_within_max_age_and_a_304_renews_the_copy_after() {
    let up = validating("max-age=1");
    let g = Graceway::start_with_token("tok-fresh\n", &honoring(up.port));
    let r = g.get("/v1/emojis/smile").await;
    assert_eq!(header(&r, "cache-status"), "graceway; fwd=miss");
    let r = g.get("/v1/emojis/smile").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "cache-status").starts_with("graceway; hit; ttl="));
    assert_eq!(r.text().await.unwrap(), r#"{"path":"/v1/emojis/smile"}"#);
    assert_eq!(up.request_count(), 1, "a fresh hit costs no call");

    // Past max-age the copy is asked about with its validator; the 304
    // renews it and the client gets the copy's body (it sent no
    // validator, so a 304 is not its answer).
    let r = wait_for_async("the copy to go stale", Duration::from_secs(10), || async {
        let r = g.get("/v1/emojis/smile").await;
        (!header(&r, "cache-status").contains("hit")).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "cache-status"),
        "graceway; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(r.text().await.unwrap(), r#"{"path":"/v1/emojis/smile"}"#);
    assert_eq!(up.request_count(), 2);
    assert_eq!(up.requests()[1].header("if-none-match"), Some("\"v1\""));
    let r = g.get("/v1/emojis/smile").await;
    assert!(header(&r, "cache-status").starts_with("graceway; hit; ttl="));
    assert_eq!(up.request_count(), 2, "the renewed copy is fresh again");
    let m = g.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"graceway_cache_revalidations_total{mode="request",result="304",upstream="emoji"}"#
        ),
        Some(1.0)
    );

    // A client's own validator gets a 304 from the copy.
    let r = client()
        .get(g.url("/v1/emojis/smile"))
        .header("If-None-Match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(up.request_count(), 2);
}

#[tokio::test]
async fn no_store_private_and_no_cache_are_never_fresh_hits() {
    let up = MockUpstream::start(|r| {
        let cc = match r.path() {
            "/v1/private" => "private, max-age=60",
            "/v1/nostore" => "no-store, max-age=60",
            "/v1/nocache" => "no-cache, max-age=60",
            _ => "max-age=60",
        };
        if cc.starts_with("no-cache") && r.header("if-none-match") == Some("\"v1\"") {
            return MockReply::status(304, "").header("ETag", "\"v1\"");
        }
        MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.target))
            .header("Cache-Control", cc)
            .header("ETag", "\"v1\"")
    });
    let g = Graceway::start_with_token("tok-cc\n", &honoring(up.port));
    for path in ["/v1/private", "/v1/nostore", "/v1/nocache", "/v1/public"] {
        for _ in 0..2 {
            let r = g.get(path).await;
            assert_eq!(r.status(), 200, "{path}");
            assert!(r.text().await.unwrap().contains(path));
        }
    }
    let calls = |p: &str| up.requests().iter().filter(|r| r.path() == p).count();
    assert_eq!(calls("/v1/private"), 2);
    assert_eq!(calls("/v1/nostore"), 2);
    assert_eq!(calls("/v1/public"), 1);
    // no-cache: kept, but every use asks the vendor first, conditionally.
    assert_eq!(calls("/v1/nocache"), 2);
    let second = up
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/v1/nocache")
        .nth(1)
        .unwrap();
    assert_eq!(second.header("if-none-match"), Some("\"v1\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let release = Arc::new(AtomicBool::new(false));
    let rel = release.clone();
    let up = MockUpstream::start(move |r| {
        let reply = MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.target))
            .header("Cache-Control", "max-age=0, stale-while-revalidate=60");
        if r.header("if-none-match").is_some() || r.header("x-refresh").is_some() {
            reply.hold(&rel)
        } else {
            reply.header("ETag", "\"v1\"")
        }
    });
    let g = Graceway::start_with_token("tok-swr\n", &honoring(up.port));
    let r = g.get("/v1/emojis/smile").await;
    assert_eq!(header(&r, "cache-status"), "graceway; fwd=miss");

    // While the one refresh is held at the vendor, every request is
    // answered from the copy: none of them waited for the vendor.
    let got = answers(herd(&g, "/v1/emojis/smile", 10)).await;
    assert!(!release.load(Ordering::SeqCst));
    assert!(
        got.iter().all(|(s, cs, b)| *s == 200
            && cs.ends_with("detail=stale-while-revalidate")
            && b.contains("smile")),
        "{got:?}"
    );
    wait_calls(&up, 2).await;
    assert_eq!(up.request_count(), 2, "one background refresh for the key");
    assert_eq!(up.requests()[1].header("if-none-match"), Some("\"v1\""));
    release.store(true, Ordering::SeqCst);
    wait_metric(
        &g,
        r#"graceway_cache_revalidations_total{mode="background",result="200",upstream="emoji"}"#,
        1.0,
    )
    .await;
    let m = g.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"graceway_cache_hits_total{kind="stale-while-revalidate",upstream="emoji"}"#
        ),
        Some(10.0)
    );
    let calls = &g.status().await["upstreams"][0]["calls"];
    assert_eq!(calls["stale_while_revalidate_hits"], 10, "{calls}");
    assert_eq!(calls["revalidated_200"], 1, "{calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_breaker_is_open_each_copy_is_refreshed_once_per_window() {
    let version = Arc::new(std::sync::atomic::AtomicU16::new(1));
    let v = version.clone();
    let up = MockUpstream::start(move |r| match v.load(Ordering::SeqCst) {
        0 => MockReply::status(503, r#"{"error":"down"}"#),
        n => MockReply::ok(&format!(r#"{{"v":{n},"path":"{}"}}"#, r.target))
            .header("Cache-Control", "max-age=0")
            .header("ETag", &format!("\"v{n}\"")),
    });
    let cfg = EmojiConfig::new(up.port)
        .health("{ open_after: 2, retry_after: 30s }")
        .upstream("    cache: { fresh: honor }")
        .build();
    let g = Graceway::start_with_token("tok-open\n", &cfg);
    for p in ["/v1/a", "/v1/b"] {
        assert_eq!(g.get(p).await.status(), 200);
    }
    version.store(0, Ordering::SeqCst);
    wait_for_async(
        "the health breaker open",
        Duration::from_secs(15),
        || async {
            let r = g.get("/v1/a").await;
            assert_eq!(r.status(), 200);
            (g.status().await["upstreams"][0]["breakers"]["health"]["open"] == true).then_some(())
        },
    )
    .await;
    let before = up.request_count();
    for _ in 0..5 {
        let r = g.get("/v1/a").await;
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains(r#""v":1"#));
    }
    let failed =
        r#"graceway_cache_revalidations_total{mode="background",result="failed",upstream="emoji"}"#;
    wait_metric(&g, failed, 1.0).await;
    assert_eq!(
        up.request_count(),
        before + 1,
        "one refresh of /v1/a this window"
    );

    // The vendor is back: /v1/b's first request while the breaker is open
    // is answered from its copy and starts its refresh, which renews it.
    version.store(2, Ordering::SeqCst);
    let r = g.get("/v1/b").await;
    assert!(r.text().await.unwrap().contains(r#""v":1"#));
    let renewed =
        r#"graceway_cache_revalidations_total{mode="background",result="200",upstream="emoji"}"#;
    wait_metric(&g, renewed, 1.0).await;
    let r = g.get("/v1/b").await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(r#""v":2"#), "{}", g.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_sharing_redis_fetch_a_key_once_for_the_fleet() {
    let redis = crate::support::redis::Redis::start(&[]);
    let release = Arc::new(AtomicBool::new(false));
    let up = held(&release, "max-age=60");
    let cfg = EmojiConfig::new(up.port)
        .top(&format!(
            "cache: {{ redis: {{ url: \"{}\" }}, coalesce: {{ wait: 10s, fleet: true }} }}",
            redis.url()
        ))
        .build();
    let replicas: Vec<Graceway> = (0..3)
        .map(|_| Graceway::start_with_token("tok-fleet-herd\n", &cfg))
        .collect();
    for g in &replicas {
        wait_for_async("the fleet tier up", Duration::from_secs(15), || async {
            (g.status().await["cache"]["fleet"]["up"] == true).then_some(())
        })
        .await;
    }
    // 20 requests to each replica: one replica's lead takes the fleet's
    // fetch, the other two replicas' leads wait for it in Redis, and every
    // other request waits for its own replica's lead.
    let herds: Vec<_> = replicas
        .iter()
        .map(|g| herd(g, "/v1/emojis/smile", 20))
        .collect();
    wait_calls(&up, 1).await;
    // 19 waiting on the fetching replica, 20 on each other one (its lead
    // waits in Redis, counted too).
    wait_for_async("59 waiting", Duration::from_secs(20), || async {
        let mut n = 0.0;
        for g in &replicas {
            n += metric(g, WAITING).await;
        }
        (n == 59.0).then_some(())
    })
    .await;
    assert_eq!(up.request_count(), 1);
    release.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for h in herds {
        all.extend(answers(h).await);
    }
    assert_eq!(all.len(), 60);
    assert!(
        all.iter()
            .all(|(s, _, b)| *s == 200 && b == r#"{"path":"/v1/emojis/smile"}"#),
        "{all:?}"
    );
    assert_eq!(up.request_count(), 1, "one vendor call for the fleet");
    let from_fleet = all
        .iter()
        .filter(|(_, cs, _)| cs == "graceway-fleet; hit, graceway; hit; detail=coalesced")
        .count();
    assert_eq!(from_fleet, 2, "the two other replicas' leads");
    let mut fleet_waits = 0.0;
    for g in &replicas {
        fleet_waits += metric(g, &waits("fleet")).await;
    }
    assert_eq!(fleet_waits, 2.0);
}

#[tokio::test]
async fn a_stale_copy_replaced_by_a_new_200_says_so() {
    let up = MockUpstream::start(|r| {
        MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.target)).header("Cache-Control", "max-age=1")
    });
    let g = Graceway::start_with_token("tok-refreshed\n", &honoring(up.port));
    let r = g.get("/v1/emojis/smile").await;
    assert_eq!(header(&r, "cache-status"), "graceway; fwd=miss");
    let r = wait_for_async("the copy to go stale", Duration::from_secs(10), || async {
        let r = g.get("/v1/emojis/smile").await;
        (!header(&r, "cache-status").contains("hit")).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "cache-status"),
        "graceway; fwd=stale; fwd-status=200"
    );
    assert_eq!(up.request_count(), 2);
}
