//! The fleet tier against real `redis-server` processes: a replica serves
//! what another stored, a record's TTL is the upstream's `max_stale`, and
//! a Redis that is slow, down, restarted, corrupt, password-protected,
//! TLS-only or a cluster never fails a request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::mock::TlsFixture;
use crate::support::redis::Redis;
use crate::support::{
    client, metric_value, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};

const TOKEN: &str = "tok-fleet-1";

/// A vendor that answers until `revoke` is set, then refuses the token.
fn vendor() -> (MockUpstream, Arc<AtomicBool>) {
    MockUpstream::revocable(|req| {
        MockReply::ok(&format!(r#"{{"path":"{}"}}"#, req.path()))
            .header("Cache-Control", "max-age=60")
    })
}

fn start(up: &MockUpstream, redis: &str) -> Graceway {
    let dir = TestDir::new();
    dir.write("token", TOKEN);
    let cfg = EmojiConfig::new(up.port)
        .health("{ retry_after: 30s, max_retry_after: 60s }")
        .upstream("    stale: { max_stale: 1h }")
        .top(&format!("cache: {{ redis: {redis} }}"))
        .build();
    Graceway::start_in(dir, &cfg)
}

async fn fleet_status(g: &Graceway) -> serde_json::Value {
    g.status().await["cache"]["fleet"].clone()
}

async fn wait_fleet(
    g: &Graceway,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = fleet_status(g).await;
        if f(&s) {
            return s;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after 15s waiting for {what}; cache.fleet: {s:#}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_what_another_stored_with_the_ttl_of_max_stale() {
    let redis = Redis::start(&[]);
    let (up, revoked) = vendor();
    let spec = format!("{{ url: \"{}\", key_prefix: \"fleet-a:\" }}", redis.url());
    let a = start(&up, &spec);
    let b = start(&up, &spec);
    wait_fleet(&a, "A's fleet tier up", |s| s["up"] == true).await;
    for i in 0..5 {
        assert_eq!(a.get(&format!("/v1/item/{i}")).await.status(), 200);
    }
    wait_fleet(&a, "A's writes", |s| s["writes"].as_u64() >= Some(5)).await;
    // Keys: prefix, version, upstream, a hash; never a path or a token.
    let keys = redis.cli(&["--scan", "--pattern", "fleet-a:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    for k in &keys {
        assert!(
            k.starts_with("fleet-a:v1:emoji:") && k.len() == "fleet-a:v1:emoji:".len() + 64,
            "{k}"
        );
        let ttl: u64 = redis.cli(&["PTTL", k]).trim().parse().unwrap();
        assert!(
            (3_500_000..=3_600_000).contains(&ttl),
            "TTL {ttl} ms is not max_stale (1h)"
        );
        assert!(!redis.cli(&["GET", k]).contains(TOKEN));
    }

    revoked.store(true, Ordering::Relaxed);
    wait_fleet(&b, "B's fleet tier up", |s| s["up"] == true).await;
    for i in 0..5 {
        let r = b.get(&format!("/v1/item/{i}")).await;
        assert_eq!(r.status(), 200, "B serves A's copy");
        assert_eq!(r.headers()["x-graceway-degraded"], "token-rejected");
        let cs = r.headers()["cache-status"].to_str().unwrap().to_string();
        assert!(
            cs.starts_with("graceway-fleet; hit, graceway; fwd=stale"),
            "{cs}"
        );
        assert_eq!(
            r.text().await.unwrap(),
            format!(r#"{{"path":"/v1/item/{i}"}}"#)
        );
    }
    // Kept locally: the second time it is B's own copy.
    let r = b.get("/v1/item/0").await;
    assert!(!r.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("graceway-fleet"));
    assert_eq!(fleet_status(&b).await["hits"], 5);
    let m = b.metrics().await;
    assert_eq!(metric_value(&m, "graceway_fleet_up"), Some(1.0));
    assert_eq!(
        metric_value(
            &m,
            "graceway_fleet_operations_total{op=\"get\",result=\"hit\"}"
        ),
        Some(5.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_killed_or_restarted_redis_never_fails_a_request() {
    let mut redis = Redis::start(&[]);
    let (up, revoked) = vendor();
    let g = start(
        &up,
        &format!("{{ url: \"{}\", timeout: 50ms }}", redis.url()),
    );
    wait_fleet(&g, "the fleet tier up", |s| s["up"] == true).await;
    assert_eq!(g.get("/v1/kept").await.status(), 200);

    // Paused: reads wait at most the timeout, then the breaker skips Redis.
    redis.signal("STOP");
    revoked.store(true, Ordering::Relaxed);
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        let r = g.get(&format!("/v1/never/{i}")).await;
        worst = worst.max(t.elapsed());
        assert_eq!(r.status(), 503, "no copy anywhere: a clear 503");
        let r = g.get("/v1/kept").await;
        assert_eq!(r.status(), 200, "the local copy");
    }
    assert!(
        worst < Duration::from_millis(400),
        "a request waited {worst:?} on a paused Redis"
    );
    let s = wait_fleet(&g, "the fleet tier reported down", |s| s["up"] == false).await;
    assert!(s["last_error"].is_string(), "{s}");
    redis.signal("CONT");

    // Killed under load: nothing fails (the token is still refused: the
    // answers are the local copy).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), g.url("/v1/kept"));
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                match client().get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Restarted: reconnects by itself, writes resume.
    redis.restart();
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "{ok} ok");
    assert!(ok > 10);
    wait_fleet(&g, "the fleet tier up again", |s| s["up"] == true).await;
    // The vendor takes the token back; a reload re-enables it.
    revoked.store(false, Ordering::Relaxed);
    let attempt = g.reload_attempt().await;
    g.signal("HUP");
    g.wait_reload(attempt).await;
    let before = fleet_status(&g).await["writes"].as_u64().unwrap();
    for i in 0..3 {
        g.get(&format!("/v1/after/{i}")).await;
    }
    wait_fleet(&g, "writes after the restart", |s| {
        s["writes"].as_u64() > Some(before)
    })
    .await;
    assert!(!redis.cli(&["--scan"]).trim().is_empty());
    assert!(!g.logs().contains(" ERROR "), "{}", g.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_unknown_version_records_are_ignored_and_counted() {
    let redis = Redis::start(&[]);
    let (up, revoked) = vendor();
    let g = start(&up, &format!("{{ url: \"{}\" }}", redis.url()));
    wait_fleet(&g, "the fleet tier up", |s| s["up"] == true).await;
    let key = |path: &str| {
        graceway::cache::fleet::redis_key(
            "graceway:",
            "emoji",
            &graceway::cache::key_of("emoji", path),
        )
    };
    redis.cli(&["SET", &key("/v1/garbage"), "not a record"]);
    // Version 99, then plausible bytes.
    redis.cli(&[
        "SET",
        &key("/v1/future"),
        "\u{63}ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    ]);
    revoked.store(true, Ordering::Relaxed);
    for p in ["/v1/garbage", "/v1/future"] {
        let r = g.get(p).await;
        assert_eq!(r.status(), 503, "{p}: never served");
    }
    let s = fleet_status(&g).await;
    assert_eq!(s["corrupt"], 2, "{s}");
    let m = g.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "graceway_fleet_operations_total{op=\"get\",result=\"corrupt\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        g.logs().matches("does not decode").count(),
        1,
        "logged once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_acl_users_and_a_wrong_password() {
    let mut redis = Redis::start(&[
        "--requirepass",
        "s3cret-pass",
        "--user",
        "fleet",
        "on",
        ">fleet-pass",
        "~*",
        "+@all",
    ]);
    redis.cli_auth(&["-a", "s3cret-pass", "--no-auth-warning"]);
    let (up, _revoked) = vendor();
    for url in [
        format!("redis://:s3cret-pass@127.0.0.1:{}/2", redis.port),
        format!("redis://fleet:fleet-pass@127.0.0.1:{}/3", redis.port),
    ] {
        let g = start(&up, &format!("{{ url: \"{url}\" }}"));
        wait_fleet(&g, "the fleet tier up with credentials", |s| {
            s["up"] == true
        })
        .await;
        g.get("/v1/pw").await;
        let s = wait_fleet(&g, "a write", |s| s["writes"].as_u64() >= Some(1)).await;
        assert!(!s.to_string().contains("pass"), "password shown: {s}");
        assert!(s["target"].as_str().unwrap().contains(":***@"), "{s}");
    }
    // Databases 2 and 3 each got their copy.
    assert_eq!(redis.cli(&["-n", "2", "DBSIZE"]).trim(), "1");
    assert_eq!(redis.cli(&["-n", "3", "DBSIZE"]).trim(), "1");

    let g = start(
        &up,
        &format!("{{ url: \"redis://:wrong@127.0.0.1:{}\" }}", redis.port),
    );
    let s = wait_fleet(&g, "the auth error", |s| s["last_error"].is_string()).await;
    assert_eq!(s["up"], false);
    let e = s["last_error"].as_str().unwrap().to_ascii_lowercase();
    assert!(e.contains("auth") || e.contains("pass"), "{s}");
    assert!(!s.to_string().contains("wrong"), "password shown: {s}");
    assert_eq!(g.get("/v1/still").await.status(), 200);
    assert!(
        g.logs()
            .contains("fleet tier: cannot connect to Redis redis://:***@"),
        "{}",
        g.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verified_against_a_ca_the_test_made() {
    let fx = TlsFixture::new();
    let redis = Redis::start_tls(&fx);
    let (up, revoked) = vendor();
    let dir = TestDir::new();
    dir.write("token", TOKEN);
    dir.write("redis-ca.pem", &fx.ca_pem);
    let cfg = EmojiConfig::new(up.port)
        .top(&format!(
            "cache: {{ redis: {{ url: \"rediss://127.0.0.1:{}\", ca_file: \"{{dir}}/redis-ca.pem\", timeout: 2s }} }}",
            redis.port
        ))
        .build();
    let a = Graceway::start_in(dir, &cfg);
    wait_fleet(&a, "the TLS fleet tier up", |s| s["up"] == true).await;
    a.get("/v1/tls").await;
    wait_fleet(&a, "a write over TLS", |s| s["writes"].as_u64() >= Some(1)).await;
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "1");
    // A second replica reads it back over TLS.
    let dir = TestDir::new();
    dir.write("token", TOKEN);
    dir.write("redis-ca.pem", &fx.ca_pem);
    let b = Graceway::start_in(dir, &cfg);
    wait_fleet(&b, "B's TLS fleet tier up", |s| s["up"] == true).await;
    revoked.store(true, Ordering::Relaxed);
    let r = b.get("/v1/tls").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("graceway-fleet; hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_spreads_copies_across_slots() {
    let (nodes, addrs) = crate::support::redis::cluster(3);
    let urls: Vec<String> = addrs.iter().map(|a| format!("\"redis://{a}\"")).collect();
    let spec = format!("{{ cluster: [{}], timeout: 2s }}", urls.join(", "));
    let (up, revoked) = vendor();
    let a = start(&up, &spec);
    wait_fleet(&a, "the cluster fleet tier up", |s| s["up"] == true).await;
    // All at once, so that the write task finds several copies queued and
    // batches keys of different hash slots (one pipeline per slot).
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = a.url(&format!("/v1/c/{i}"));
        requests.spawn(async move { client().get(url).send().await.unwrap().status() });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let s = wait_fleet(&a, "20 writes", |s| s["writes"].as_u64() >= Some(20)).await;
    assert_eq!(s["errors"], 0, "{s:#}");
    let per_node: Vec<u64> = nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).trim().parse().unwrap_or(0))
        .collect();
    assert_eq!(per_node.iter().sum::<u64>(), 20, "{per_node:?}");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "one slot range only: {per_node:?}"
    );
    let b = start(&up, &spec);
    wait_fleet(&b, "B's cluster fleet tier up", |s| s["up"] == true).await;
    revoked.store(true, Ordering::Relaxed);
    for i in 0..20 {
        let r = b.get(&format!("/v1/c/{i}")).await;
        assert_eq!(r.status(), 200, "/v1/c/{i}");
    }
    assert_eq!(fleet_status(&b).await["hits"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_writes_but_reads_and_requests_go_on() {
    let redis = Redis::start(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let big = "x".repeat(200 << 10);
    let (up, revoked) = MockUpstream::revocable(move |req| {
        MockReply::ok(&format!("{}{}", req.path(), big)).header("Cache-Control", "max-age=60")
    });
    let spec = format!("{{ url: \"{}\" }}", redis.url());
    let a = start(&up, &spec);
    wait_fleet(&a, "the fleet tier up", |s| s["up"] == true).await;
    // ~200 KB copies into 3 MB: the first fit, then Redis answers OOM.
    for i in 0..40 {
        let r = a.get(&format!("/v1/big/{i}")).await;
        assert_eq!(r.status(), 200);
        // Read to the end: a client that hangs up mid-body leaves no copy
        // (on a loaded machine most of these 200 KB bodies were still
        // being sent when the response was dropped, and too few copies
        // were kept to fill Redis).
        assert_eq!(
            r.bytes().await.unwrap().len(),
            format!("/v1/big/{i}").len() + (200 << 10)
        );
    }
    let s = wait_fleet(&a, "OOM errors", |s| s["errors"].as_u64() > Some(0)).await;
    assert!(s["last_error"].as_str().unwrap().contains("OOM"), "{s}");
    assert_eq!(s["up"], true, "a full Redis is up: reads still work: {s}");
    // Another replica still reads what did fit.
    let stored = (0..40)
        .find(|i| {
            let key = graceway::cache::fleet::redis_key(
                "graceway:",
                "emoji",
                &graceway::cache::key_of("emoji", &format!("/v1/big/{i}")),
            );
            redis.cli(&["EXISTS", &key]).trim() == "1"
        })
        .expect("some copies fit before Redis was full");
    let b = start(&up, &spec);
    wait_fleet(&b, "B up", |s| s["up"] == true).await;
    revoked.store(true, Ordering::Relaxed);
    let r = b.get(&format!("/v1/big/{stored}")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("graceway-fleet; hit"));
}
