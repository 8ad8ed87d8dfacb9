//! The fleet ledger beyond verdicts, with real graceway processes and a
//! real `redis-server`: the auth breaker's trials are the fleet's (one per
//! token per window, even when client requests carry them because no path
//! is kept to replay), and the vendor's quota figures and deprecation
//! notices one replica meets show on every replica.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ledger::{replica_with, token_state};
use crate::support::redis::Redis;
use crate::support::{wait_for_async, Graceway, MockReply, MockUpstream};

/// The dead-token requests a vendor port saw: (token, when).
type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

fn replica(up: &MockUpstream, redis: &Redis, tokens: &[&str], health: &str) -> Graceway {
    let spec = format!("{{ url: \"{}\", timeout: 500ms }}", redis.url());
    replica_with(up, &spec, tokens, health, "")
}

/// Three replicas whose tokens are both dead from the start: no request
/// ever succeeds, so no path is kept for a background trial to replay and
/// client requests carry every trial. Each replica's auth breaker opens
/// within milliseconds of the others' and tries every second; without the
/// fleet's lock the three would send the same token within milliseconds
/// of each other each second. With it, each token is sent at most once
/// per window for the fleet, and when the vendor takes the primary back
/// the replica that tried it tells the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_the_fleets_trials_one_per_token_per_window() {
    let redis = Redis::start(&[]);
    let accepted: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let seen: Seen = Arc::default();
    let ports: Vec<MockUpstream> = (0..3)
        .map(|_| {
            let (accepted, seen) = (accepted.clone(), seen.clone());
            MockUpstream::start(move |req| {
                let token = req.bearer().unwrap_or_default().to_string();
                if accepted.lock().unwrap().as_deref() == Some(token.as_str()) {
                    return MockReply::ok(r#"{"fresh":true}"#);
                }
                seen.lock().unwrap().push((token, Instant::now()));
                MockReply::revoked(401, "{}")
            })
        })
        .collect();
    let tokens = ["tok-primary", "tok-standby"];
    let health = "{ retry_after: 1s, max_retry_after: 1s }";
    let replicas: Vec<Graceway> = ports
        .iter()
        .map(|p| replica(p, &redis, &tokens, health))
        .collect();
    // Every replica meets both refusals (or learns them) and opens its
    // auth breaker: 503, nothing kept to answer with.
    for g in &replicas {
        assert_eq!(g.get("/v1/items").await.status(), 503);
    }
    for g in &replicas {
        wait_for_async("both tokens rejected", Duration::from_secs(10), || async {
            let (a, b) = (token_state(g, 0).await, token_state(g, 1).await);
            (a["state"] == "rejected" && b["state"] == "rejected").then_some(())
        })
        .await;
    }
    let start = Instant::now();
    // Clients keep asking every replica (bounded: 4 s of rounds).
    while start.elapsed() < Duration::from_secs(4) {
        for g in &replicas {
            let _ = g.get("/v1/items").await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let trials: Vec<(String, Instant)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at >= start)
        .cloned()
        .collect();
    assert!(
        trials.len() >= 3,
        "trials went on for 4 s: {} dead-token requests",
        trials.len()
    );
    for token in tokens {
        let mut at: Vec<Instant> = trials
            .iter()
            .filter(|(t, _)| t == token)
            .map(|(_, a)| *a)
            .collect();
        at.sort();
        for w in at.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(600),
                "{token} was sent twice within {gap:?} by the fleet (one trial per token per 1 s window): {:?}",
                at.iter().map(|a| *a - start).collect::<Vec<_>>()
            );
        }
    }
    // The vendor takes the primary back: whoever tries it next tells the
    // fleet, and every replica answers fresh.
    *accepted.lock().unwrap() = Some("tok-primary".into());
    for g in &replicas {
        wait_for_async("a fresh answer", Duration::from_secs(15), || async {
            let r = g.get("/v1/items").await;
            (r.status() == 200 && r.headers().get("x-graceway-degraded").is_none()).then_some(())
        })
        .await;
    }
    let mut from_fleet = 0;
    for g in &replicas {
        let t = token_state(g, 0).await;
        assert_eq!(t["state"], "active", "{t:#}");
        if t["learned"]["from"] == "fleet" && t["learned"]["finding"] == "recovered" {
            from_fleet += 1;
        }
    }
    assert!(
        from_fleet >= 1,
        "a replica that did not try the primary learned its recovery from the fleet"
    );
}

/// The vendor states the token's quota and a sunset to replica A only:
/// replica B shows both without sending a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_and_a_sunset_one_replica_reads_show_on_every_replica() {
    let redis = Redis::start(&[]);
    let a_port = MockUpstream::start(|_| {
        MockReply::ok("{}")
            .header("x-ratelimit-limit", "100")
            .header("x-ratelimit-remaining", "42")
            .header("x-ratelimit-reset", "30")
            .header("deprecation", "@1790000000")
            .header("sunset", "Fri, 01 Jan 2027 00:00:00 GMT")
            .header(
                "link",
                "<https://api.example/v2>; rel=\"successor-version\"",
            )
    });
    let b_port = MockUpstream::start(|_| MockReply::ok("{}"));
    let health = "{ retry_after: 1s, max_retry_after: 30s }";
    let a = replica(&a_port, &redis, &["tok-one"], health);
    let b = replica(&b_port, &redis, &["tok-one"], health);
    assert_eq!(a.get("/v1/items").await.status(), 200);
    wait_for_async(
        "the quota and the notice on B",
        Duration::from_secs(10),
        || async {
            let t = token_state(&b, 0).await;
            (t["quota"]["remaining"] == 42 && !t["notice"].is_null()).then_some(t)
        },
    )
    .await;
    let t = token_state(&b, 0).await;
    assert_eq!(t["quota"]["limit"], 100, "{t:#}");
    assert!(t["quota"]["reset_at"].is_string(), "{t:#}");
    assert_eq!(t["notice"]["deprecated"], true, "{t:#}");
    assert_eq!(t["notice"]["sunset_at"], "2027-01-01T00:00:00Z", "{t:#}");
    // The vendor's link text stays with the replica that saw it.
    assert_eq!(t["notice"]["links"], serde_json::json!([]), "{t:#}");
    assert_eq!(
        token_state(&a, 0).await["notice"]["links"][0]["rel"],
        "successor-version"
    );
    // The token's state is still its own: figures do not name an origin.
    assert!(t["learned"].is_null(), "{t:#}");
    assert_eq!(b_port.request_count(), 0, "B sent nothing");
}
