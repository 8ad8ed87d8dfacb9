//! The fleet ledger against a real `redis-server` and several real
//! graceway processes, each in front of its own vendor port (so each
//! replica's requests are counted apart), all sharing one vendor's idea of
//! which tokens it accepts: a revocation one replica meets moves the
//! others off the token without their own dead-token request; a replica
//! started mid-outage starts with the verdict; a recovery one replica
//! finds ends the others' stale answers; a record that names another
//! token than its key is ignored.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::redis::Redis;
use crate::support::{
    metric_value, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};

type Accepted = Arc<Mutex<HashSet<String>>>;

/// One replica's port on the vendor: 200 for an accepted token, the
/// vendor's `invalid_token` 401 otherwise.
fn vendor_port(accepted: &Accepted) -> MockUpstream {
    let accepted = accepted.clone();
    MockUpstream::start(move |req| {
        let ok = req
            .bearer()
            .is_some_and(|t| accepted.lock().unwrap().contains(t));
        if ok {
            MockReply::ok(&format!(r#"{{"path":"{}"}}"#, req.path()))
        } else {
            MockReply::revoked(401, "{}")
        }
    })
}

fn accepting(tokens: &[&str]) -> Accepted {
    Arc::new(Mutex::new(tokens.iter().map(|t| t.to_string()).collect()))
}

/// Requests the vendor port saw carrying `token`.
fn carried(up: &MockUpstream, token: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.bearer() == Some(token))
        .count()
}

fn replica(up: &MockUpstream, redis: &Redis, tokens: &[&str], extra: &str) -> Graceway {
    let spec = format!("{{ url: \"{}\", timeout: 500ms }}", redis.url());
    replica_on(up, &spec, tokens, extra)
}

/// A replica whose `cache.redis` is `spec`.
fn replica_on(up: &MockUpstream, spec: &str, tokens: &[&str], extra: &str) -> Graceway {
    let health = "{ retry_after: 30s, max_retry_after: 60s }";
    replica_with(up, spec, tokens, health, extra)
}

/// A replica whose `cache.redis` is `spec` and `health` is `health`.
pub(super) fn replica_with(
    up: &MockUpstream,
    spec: &str,
    tokens: &[&str],
    health: &str,
    extra: &str,
) -> Graceway {
    let dir = TestDir::new();
    let mut lines = String::new();
    for (i, t) in tokens.iter().enumerate() {
        dir.write(&format!("token{i}"), t);
        lines.push_str(&format!("        - {{ file: \"{{dir}}/token{i}\" }}\n"));
    }
    let cfg = EmojiConfig::new(up.port)
        .tokens(lines.trim_end())
        .health(health)
        .upstream(extra)
        .top(&format!("cache: {{ redis: {spec} }}"))
        .build();
    Graceway::start_in(dir, &cfg)
}

/// `g` is subscribed to the ledger's notifications and heard at least
/// `n` findings of other replicas by them.
async fn assert_notified(g: &Graceway, n: f64) {
    let m = g.metrics().await;
    assert_eq!(
        metric_value(&m, "graceway_ledger_subscribed"),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric_value(&m, "graceway_ledger_findings_total{direction=\"notified\"}") >= Some(n),
        "{m}"
    );
}

pub(super) async fn token_state(g: &Graceway, index: usize) -> serde_json::Value {
    g.status().await["upstreams"][0]["tokens"][index].clone()
}

async fn wait_token(
    g: &Graceway,
    index: usize,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) {
    wait_for_async(what, Duration::from_secs(10), || async {
        let t = token_state(g, index).await;
        f(&t).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_one_replica_meets_moves_every_replica_to_the_standby() {
    let redis = Redis::start(&[]);
    let accepted = accepting(&["tok-primary", "tok-standby"]);
    let ports: Vec<MockUpstream> = (0..4).map(|_| vendor_port(&accepted)).collect();
    let tokens = ["tok-primary", "tok-standby"];
    let a = replica(&ports[0], &redis, &tokens, "");
    let b = replica(&ports[1], &redis, &tokens, "");
    let c = replica(&ports[2], &redis, &tokens, "");
    for g in [&a, &b, &c] {
        let r = g.get("/v1/warm").await;
        assert_eq!(r.status(), 200);
    }
    // The vendor revokes the primary; A meets it first.
    accepted.lock().unwrap().remove("tok-primary");
    let before: Vec<usize> = ports.iter().map(|p| carried(p, "tok-primary")).collect();
    let r = a.get("/v1/items").await;
    assert_eq!(r.status(), 200, "A failed over to the standby");
    assert!(r.headers().get("x-graceway-degraded").is_none());
    // B and C learn it from the ledger, not from the vendor.
    let learned = Instant::now();
    for g in [&b, &c] {
        wait_token(g, 0, "the primary rejected from the fleet", |t| {
            t["state"] == "rejected" && t["learned"]["from"] == "fleet"
        })
        .await;
    }
    let took = learned.elapsed();
    let t = token_state(&b, 0).await;
    assert_eq!(t["learned"]["finding"], "rejected", "{t:#}");
    assert!(
        t["learned"]["replica"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{}", a.pid())),
        "{t:#}"
    );
    for g in [&b, &c] {
        for _ in 0..5 {
            let r = g.get("/v1/items").await;
            assert_eq!(r.status(), 200);
            assert!(r.headers().get("x-graceway-degraded").is_none());
        }
    }
    assert_eq!(
        carried(&ports[1], "tok-primary"),
        before[1],
        "B never sent the dead token"
    );
    assert_eq!(
        carried(&ports[2], "tok-primary"),
        before[2],
        "C never sent the dead token"
    );
    assert_eq!(
        carried(&ports[0], "tok-primary"),
        before[0] + 1,
        "A sent it once"
    );
    // A replica started during the outage reads the ledger before its
    // first request.
    let d = replica(&ports[3], &redis, &tokens, "");
    let r = d.get("/v1/items").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        carried(&ports[3], "tok-primary"),
        0,
        "D started with the verdict"
    );
    let t = token_state(&d, 0).await;
    assert_eq!(
        (&t["state"], &t["learned"]["from"]),
        (&"rejected".into(), &"fleet".into()),
        "{t:#}"
    );
    let m = b.metrics().await;
    assert!(
        metric_value(&m, "graceway_ledger_findings_total{direction=\"applied\"}") >= Some(1.0),
        "{m}"
    );
    // The lag, from A's finding to B applying it, is observed (in
    // milliseconds; with notifications it is often 0 ms on loopback, so
    // only its count is asserted).
    assert!(
        metric_value(&m, "graceway_ledger_lag_seconds_count") >= Some(1.0),
        "{m}"
    );
    // It arrived as a notification (the 250 ms read is the safety net).
    assert!(
        metric_value(&m, "graceway_ledger_findings_total{direction=\"notified\"}") >= Some(1.0),
        "{m}"
    );
    assert!(
        metric_value(
            &a.metrics().await,
            "graceway_ledger_findings_total{direction=\"published\"}"
        ) >= Some(1.0)
    );
    // Visible in `graceway status` too.
    let (code, out, _) = crate::support::run_cli(&["status", "--admin", &b.admin_url("")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rejected by replica") && out.contains("fleet ledger"),
        "{out}"
    );
    eprintln!("B and C applied the rejection within {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_one_replica_finds_ends_every_replicas_stale_answers() {
    let redis = Redis::start(&[]);
    let accepted = accepting(&["tok-only"]);
    let ports: Vec<MockUpstream> = (0..2).map(|_| vendor_port(&accepted)).collect();
    // A probes every 300 ms; B has no probe and its breaker would not
    // retry for 30 s: only the ledger can tell it.
    let a = replica(
        &ports[0],
        &redis,
        &["tok-only"],
        "      probe: { path: /v1/ping, interval: 300ms }",
    );
    let b = replica(&ports[1], &redis, &["tok-only"], "");
    for g in [&a, &b] {
        assert_eq!(g.get("/v1/items").await.status(), 200);
    }
    accepted.lock().unwrap().clear();
    let r = a.get("/v1/items").await;
    assert_eq!(r.headers()["x-graceway-degraded"], "token-rejected");
    wait_token(&b, 0, "the token rejected from the fleet", |t| {
        t["state"] == "rejected"
    })
    .await;
    let before = carried(&ports[1], "tok-only");
    let r = b.get("/v1/items").await;
    assert_eq!(r.status(), 200, "the last good copy");
    assert_eq!(r.headers()["x-graceway-degraded"], "token-rejected");
    assert_eq!(
        carried(&ports[1], "tok-only"),
        before,
        "B answered without the vendor"
    );
    // The vendor takes the token back; A's probe finds it.
    accepted.lock().unwrap().insert("tok-only".into());
    let back = Instant::now();
    wait_for_async("B answering fresh", Duration::from_secs(10), || async {
        let r = b.get("/v1/items").await;
        (r.status() == 200 && r.headers().get("x-graceway-degraded").is_none()).then_some(())
    })
    .await;
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "B fresh {took:?} after the vendor took the token back"
    );
    let t = token_state(&b, 0).await;
    assert_eq!(t["learned"]["finding"], "recovered", "{t:#}");
    assert_eq!(t["learned"]["from"], "fleet", "{t:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_names_another_token_than_its_key_is_ignored() {
    use graceway::tokens::ledger::{encode, Entry, Evidence, Finding, Slot, TokenId};
    let redis = Redis::start(&[]);
    let accepted = accepting(&["tok-kept"]);
    let port = vendor_port(&accepted);
    let g = replica(&port, &redis, &["tok-kept"], "");
    assert_eq!(g.get("/v1/items").await.status(), 200);
    let mine = TokenId(
        sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            b"tok-kept",
        ))
        .into(),
    );
    // A rejection of some other token, written under this token's key.
    let forged = Entry {
        token: TokenId([9; 32]),
        at_ms: u64::MAX / 2,
        origin: "intruder/1".into(),
        finding: Finding::Rejected {
            status: 401,
            evidence: Evidence::VendorSaid,
        },
        ttl_ms: 60_000,
    };
    let key = graceway::cache::ledger::key("graceway:", &mine, Slot::State);
    let mut conn = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("SET")
        .arg(&key)
        .arg(encode(&forged))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    wait_for_async(
        "the forged record counted",
        Duration::from_secs(10),
        || async {
            let m = g.metrics().await;
            (metric_value(&m, "graceway_ledger_findings_total{direction=\"ignored\"}") >= Some(1.0))
                .then_some(())
        },
    )
    .await;
    let t = token_state(&g, 0).await;
    assert_eq!(t["state"], "active", "{t:#}");
    assert_eq!(g.get("/v1/items").await.status(), 200);
    assert!(encode(&forged).len() > 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_quota_one_replica_meets_makes_every_replica_skip_the_token() {
    let redis = Redis::start(&[]);
    let spent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = |spent: Arc<std::sync::atomic::AtomicBool>| {
        MockUpstream::start(move |req| {
            if req.bearer() == Some("tok-metered")
                && spent.load(std::sync::atomic::Ordering::Relaxed)
            {
                MockReply::status(429, r#"{"error":"quota"}"#).header("Retry-After", "60")
            } else {
                MockReply::ok(r#"{"ok":true}"#)
            }
        })
    };
    let ports = [port(spent.clone()), port(spent.clone())];
    let tokens = ["tok-metered", "tok-spare"];
    let extra = "      failover_on: [401, 403, 429]";
    let a = replica(&ports[0], &redis, &tokens, extra);
    let b = replica(&ports[1], &redis, &tokens, extra);
    for g in [&a, &b] {
        assert_eq!(g.get("/v1/items").await.status(), 200);
    }
    spent.store(true, std::sync::atomic::Ordering::Relaxed);
    let r = a.get("/v1/items").await;
    assert_eq!(r.status(), 200, "A failed over to the spare");
    wait_token(&b, 0, "the cool-down from the fleet", |t| {
        t["state"] == "rate-limited" && t["learned"]["from"] == "fleet"
    })
    .await;
    let before = carried(&ports[1], "tok-metered");
    for _ in 0..5 {
        assert_eq!(b.get("/v1/items").await.status(), 200);
    }
    assert_eq!(
        carried(&ports[1], "tok-metered"),
        before,
        "B skipped the spent token"
    );
    let t = token_state(&b, 0).await;
    assert!(t["cool_until"].is_string(), "{t:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_each_replica_learns_alone_and_keeps_serving() {
    let mut redis = Redis::start(&[]);
    let accepted = accepting(&["tok-primary", "tok-standby"]);
    let ports: Vec<MockUpstream> = (0..2).map(|_| vendor_port(&accepted)).collect();
    let tokens = ["tok-primary", "tok-standby"];
    let a = replica(&ports[0], &redis, &tokens, "");
    let b = replica(&ports[1], &redis, &tokens, "");
    for g in [&a, &b] {
        assert_eq!(g.get("/v1/warm").await.status(), 200);
    }
    redis.kill();
    accepted.lock().unwrap().remove("tok-primary");
    for g in [&a, &b] {
        for _ in 0..3 {
            let r = g.get("/v1/items").await;
            assert_eq!(r.status(), 200);
            assert!(r.headers().get("x-graceway-degraded").is_none());
        }
        let t = token_state(g, 0).await;
        assert_eq!(t["state"], "rejected", "{t:#}");
        assert_eq!(t["learned"]["from"], "here", "{t:#}");
    }
    // Each met the dead token itself, once.
    assert_eq!(carried(&ports[0], "tok-primary"), 2);
    assert_eq!(carried(&ports[1], "tok-primary"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_master_cluster_a_revocation_reaches_every_replica() {
    let (_nodes, addrs) = crate::support::redis::cluster(3);
    let urls: Vec<String> = addrs.iter().map(|a| format!("\"redis://{a}\"")).collect();
    let spec = format!("{{ cluster: [{}], timeout: 2s }}", urls.join(", "));
    let accepted = accepting(&["tok-c1", "tok-c2", "tok-c3", "tok-c4"]);
    let ports: Vec<MockUpstream> = (0..2).map(|_| vendor_port(&accepted)).collect();
    // Several tokens, so that their keys fall on different masters.
    let tokens = ["tok-c1", "tok-c2", "tok-c3", "tok-c4"];
    let a = replica_on(&ports[0], &spec, &tokens, "");
    let b = replica_on(&ports[1], &spec, &tokens, "");
    for g in [&a, &b] {
        assert_eq!(g.get("/v1/warm").await.status(), 200);
    }
    // The first three die one after another; A meets each.
    for dead in ["tok-c1", "tok-c2", "tok-c3"] {
        accepted.lock().unwrap().remove(dead);
    }
    let before =
        carried(&ports[1], "tok-c1") + carried(&ports[1], "tok-c2") + carried(&ports[1], "tok-c3");
    // A request fails over once: A meets the dead ones over a few.
    let mut fresh = false;
    for _ in 0..4 {
        let r = a.get("/v1/items").await;
        if r.status() == 200 && r.headers().get("x-graceway-degraded").is_none() {
            fresh = true;
            break;
        }
    }
    assert!(fresh, "A reached the live token");
    for i in 0..3 {
        wait_token(&b, i, "a rejection from the cluster", |t| {
            t["state"] == "rejected" && t["learned"]["from"] == "fleet"
        })
        .await;
    }
    assert_eq!(b.get("/v1/items").await.status(), 200);
    let after =
        carried(&ports[1], "tok-c1") + carried(&ports[1], "tok-c2") + carried(&ports[1], "tok-c3");
    assert_eq!(after, before, "B sent none of the dead tokens");
    assert_eq!(
        carried(&ports[1], "tok-c4"),
        1,
        "B went straight to the live one"
    );
    // A Cluster passes a PUBLISH to every node: B's subscriber, on one of
    // them, heard A's findings whichever node A's publish went to.
    assert_notified(&b, 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_probing_one_token_send_one_probe_per_interval() {
    let redis = Redis::start(&[]);
    let accepted = accepting(&["tok-probed"]);
    let ports: Vec<MockUpstream> = (0..3).map(|_| vendor_port(&accepted)).collect();
    let probe = "      probe: { path: /v1/ping, interval: 400ms }";
    let replicas: Vec<Graceway> = ports
        .iter()
        .map(|p| replica(p, &redis, &["tok-probed"], probe))
        .collect();
    let pings = || -> usize {
        ports
            .iter()
            .map(|p| {
                p.requests()
                    .iter()
                    .filter(|r| r.path() == "/v1/ping")
                    .count()
            })
            .sum()
    };
    let start = pings();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = pings() - start;
    let windows = (t0.elapsed().as_millis() / 400) as usize;
    // Alone, each replica would probe once per window: three per window.
    assert!(
        sent <= windows + 3,
        "{sent} probes in {windows} windows of 400 ms for the fleet"
    );
    let mut lost = 0.0;
    for g in &replicas {
        let m = g.metrics().await;
        lost += metric_value(&m, "graceway_ledger_trials_total{result=\"lost\"}").unwrap_or(0.0);
    }
    assert!(lost >= 1.0, "some replica left a probe to another");
}

/// The ACL `docs/how-it-works.md` shows: graceway limited to its prefix
/// and the commands it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_redis_acl_is_enough_for_the_fleet_tier_and_the_ledger() {
    let redis = Redis::start(&[
        "--user",
        "graceway",
        "on",
        ">acl-pass",
        "resetkeys",
        "~graceway:*",
        "resetchannels",
        "&graceway:*",
        "-@all",
        "+get",
        "+set",
        "+mget",
        "+ping",
        "+hello",
        "+publish",
        "+subscribe",
        "+cluster|slots",
        "+cluster|shards",
    ]);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/how-it-works.md"))
        .unwrap();
    assert!(
        doc.contains("resetkeys ~graceway:* resetchannels &graceway:* -@all +get +set +mget +ping +hello +publish +subscribe +cluster|slots +cluster|shards"),
        "the ACL in the doc is the one tested here"
    );
    let accepted = accepting(&["tok-primary", "tok-standby"]);
    let ports: Vec<MockUpstream> = (0..2).map(|_| vendor_port(&accepted)).collect();
    let spec = format!(
        "{{ url: \"redis://graceway:acl-pass@127.0.0.1:{}\", timeout: 500ms }}",
        redis.port
    );
    let tokens = ["tok-primary", "tok-standby"];
    let a = replica_on(&ports[0], &spec, &tokens, "");
    let b = replica_on(&ports[1], &spec, &tokens, "");
    for g in [&a, &b] {
        assert_eq!(g.get("/v1/warm").await.status(), 200);
    }
    accepted.lock().unwrap().remove("tok-primary");
    assert_eq!(a.get("/v1/items").await.status(), 200);
    wait_token(&b, 0, "the rejection under the ACL", |t| {
        t["learned"]["from"] == "fleet"
    })
    .await;
    let s = b.status().await;
    assert_eq!(
        s["cache"]["fleet"]["errors"], 0,
        "{:#}",
        s["cache"]["fleet"]
    );
    // Notifications too: A's publish reached B's subscriber.
    assert_notified(&b, 1.0).await;
    let m = a.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "graceway_fleet_operations_total{op=\"ledger-publish\",result=\"error\"}"
        ),
        Some(0.0),
        "{m}"
    );
}
