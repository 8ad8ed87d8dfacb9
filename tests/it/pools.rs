//! Token pools and pacing (`credentials.select`, `sticky_header`,
//! `queue`) through the real binary: round robin spreads first attempts,
//! most_remaining follows the vendor's own quota headers, a sticky header
//! keeps a client on one token and moves only its clients when that token
//! is revoked, and a request that finds every token's quota spent waits
//! for the vendor's reset (or gets the copy, or a 503 with `Retry-After`)
//! and is never sent to a certain refusal.
//!
//! The vendor here enforces its quotas like a real one: a request over
//! quota is answered 429, and every 429 the mock sends is counted, so a
//! test can say that graceway sent none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{
    client, metric_value, wait_for, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream,
    Recorded, TestDir,
};

const TOKENS: [&str; 3] = ["tok-pool-a", "tok-pool-b", "tok-pool-c"];

fn three_tokens() -> &'static str {
    "        - { file: \"{dir}/token\" }\n        - { file: \"{dir}/t1\" }\n        - { file: \"{dir}/t2\" }"
}

fn two_tokens() -> &'static str {
    "        - { file: \"{dir}/token\" }\n        - { file: \"{dir}/t1\" }"
}

fn start(cfg: EmojiConfig) -> Graceway {
    let dir = TestDir::new();
    dir.write("token", TOKENS[0]);
    dir.write("t1", TOKENS[1]);
    dir.write("t2", TOKENS[2]);
    Graceway::start_in(dir, &cfg.build())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The token (index into [`TOKENS`]) each recorded request carried.
fn carried(up: &MockUpstream) -> Vec<usize> {
    up.requests()
        .iter()
        .map(|r| {
            TOKENS
                .iter()
                .position(|t| r.bearer() == Some(t))
                .unwrap_or_else(|| panic!("a request without a pool token: {r:?}"))
        })
        .collect()
}

fn count(of: &[usize], token: usize) -> usize {
    of.iter().filter(|t| **t == token).count()
}

async fn get(g: &Graceway, path: &str) -> reqwest::Response {
    client().get(g.url(path)).send().await.unwrap()
}

fn picks(m: &str, token: usize, pick: &str) -> f64 {
    metric_value(
        m,
        &format!(r#"graceway_token_picks_total{{pick="{pick}",token="{token}",upstream="emoji"}}"#),
    )
    .unwrap_or(0.0)
}

/// The access log lines written so far (stdout).
fn access_lines(g: &Graceway) -> Vec<String> {
    std::fs::read_to_string(g.dir.file("stdout.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" upstream="))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_first_attempts_over_the_tokens() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = start(
        EmojiConfig::new(up.port)
            .tokens(three_tokens())
            .upstream("      select: round_robin")
            .top("log: { access: true }"),
    );
    for i in 0..30 {
        assert_eq!(get(&g, &format!("/rr/{i}")).await.status(), 200);
    }
    let got = carried(&up);
    assert_eq!(got.len(), 30, "{}", g.logs());
    // One after another: each token takes every third request.
    for t in 0..3 {
        assert_eq!(count(&got, t), 10, "token {t} in {got:?}");
    }
    assert!(got.windows(2).all(|w| w[0] != w[1]), "rotates: {got:?}");
    let m = g.metrics().await;
    for t in 0..3 {
        assert_eq!(picks(&m, t, "round_robin"), 10.0, "token {t}");
    }
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["pool"]["select"], "round_robin",
        "{st:#}"
    );
    assert_eq!(st["upstreams"][0]["pool"]["queue"]["waiting"], 0);
    // The access log says how each token was chosen.
    let lines = wait_for("30 access lines", Duration::from_secs(10), || {
        let l = access_lines(&g);
        (l.len() >= 30).then_some(l)
    });
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" pick=round_robin queued_ms=-")),
        "{lines:#?}"
    );

    // A token out of the pool (revoked): the other two share the turns,
    // and the request that met the revocation is retried with the next.
    let revoked = TOKENS[1];
    up.set_handler(move |r: &Recorded| {
        if r.bearer() == Some(revoked) {
            MockReply::revoked(401, "{}")
        } else {
            MockReply::ok("{}")
        }
    });
    for i in 0..20 {
        assert_eq!(get(&g, &format!("/rr2/{i}")).await.status(), 200);
    }
    let after: Vec<usize> = carried(&up)[30..].to_vec();
    // At most one request met token 1 before it was known rejected.
    assert!(count(&after, 1) <= 1, "{after:?}");
    let first_attempts = after.len() - count(&after, 1);
    assert_eq!(first_attempts, 20, "{after:?}");
    let (a, c) = (count(&after, 0), count(&after, 2));
    assert!(a.abs_diff(c) <= 2, "the two left share evenly: {after:?}");
}

/// A vendor with a quota per token: each answer states what is left
/// (`X-RateLimit-*`), each request spends one.
fn metered_vendor(left: Arc<Mutex<HashMap<String, u64>>>) -> MockUpstream {
    MockUpstream::start(move |r| {
        let mut left = left.lock().unwrap();
        let token = r.bearer().unwrap_or("").to_string();
        let n = left.entry(token).or_insert(0);
        *n = n.saturating_sub(1);
        MockReply::ok("{}")
            .header("X-RateLimit-Limit", "100")
            .header("X-RateLimit-Remaining", &n.to_string())
            .header("X-RateLimit-Reset", &(unix_now() + 3600).to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_remaining_follows_the_vendors_quota_headers() {
    let left = Arc::new(Mutex::new(HashMap::from([
        (TOKENS[0].to_string(), 30u64),
        (TOKENS[1].to_string(), 20u64),
    ])));
    let up = metered_vendor(left.clone());
    let g = start(
        EmojiConfig::new(up.port)
            .tokens(two_tokens())
            .upstream("      select: most_remaining"),
    );
    // Neither quota is known: both count as full, the first goes first;
    // the second is then unknown (full) and goes next, so both are learned.
    for i in 0..2 {
        assert_eq!(get(&g, &format!("/m/{i}")).await.status(), 200);
    }
    assert_eq!(carried(&up), [0, 1]);
    // From then on the token with the most left: token 0 until it is down
    // to token 1's figure, then they take turns.
    for i in 0..30 {
        assert_eq!(get(&g, &format!("/m/x{i}")).await.status(), 200);
    }
    let got = carried(&up);
    assert!(got[2..12].iter().all(|t| *t == 0), "token 0 first: {got:?}");
    let (a, b) = {
        let left = left.lock().unwrap();
        (left[TOKENS[0]], left[TOKENS[1]])
    };
    assert_eq!(a + b, 50 - 32);
    assert!(a.abs_diff(b) <= 1, "kept level: {a} and {b} left; {got:?}");
    let st = g.status().await;
    let t = &st["upstreams"][0]["tokens"];
    assert_eq!(t[0]["quota"]["remaining"].as_u64(), Some(a), "{t:#}");
    assert_eq!(t[1]["quota"]["remaining"].as_u64(), Some(b), "{t:#}");
    let m = g.metrics().await;
    assert_eq!(
        picks(&m, 0, "most_remaining") + picks(&m, 1, "most_remaining"),
        32.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_header_keeps_a_client_on_one_token_and_a_revocation_moves_only_its_clients() {
    let revoked: Arc<Mutex<Option<&'static str>>> = Arc::default();
    let r = revoked.clone();
    let up = MockUpstream::start(move |req| {
        if req.bearer().is_some() && req.bearer() == *r.lock().unwrap() {
            MockReply::revoked(401, "{}")
        } else {
            MockReply::ok("{}")
        }
    });
    let g = start(
        EmojiConfig::new(up.port)
            .tokens(three_tokens())
            .upstream("      select: round_robin\n      sticky_header: X-Session-Id")
            .top("log: { access: true }"),
    );
    let c = client();
    let sessions: Vec<String> = (0..8).map(|i| format!("session-value-{i}-zq")).collect();
    // Where each session lands: 5 requests each, interleaved.
    let mut home = vec![None; sessions.len()];
    for round in 0..5 {
        for (i, s) in sessions.iter().enumerate() {
            let before = up.request_count();
            let r = c
                .get(g.url(&format!("/s/{round}")))
                .header("X-Session-Id", s)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let t = carried(&up)[before];
            assert_eq!(
                *home[i].get_or_insert(t),
                t,
                "session {i} moved in round {round}"
            );
        }
    }
    let home: Vec<usize> = home.into_iter().map(Option::unwrap).collect();
    let used: std::collections::HashSet<_> = home.iter().collect();
    assert!(used.len() >= 2, "8 sessions on one token: {home:?}");
    // Without the header, select applies (round robin).
    let before = up.request_count();
    for i in 0..3 {
        assert_eq!(get(&g, &format!("/plain/{i}")).await.status(), 200);
    }
    let plain = carried(&up)[before..].to_vec();
    assert_eq!(plain.len(), 3);
    assert!(plain.windows(2).all(|w| w[0] != w[1]), "{plain:?}");

    // Session 0's token is revoked: its next request meets the 401 and is
    // retried (the client sees 200), then stays on its new token; every
    // session on another token stays where it was.
    let lost = home[0];
    *revoked.lock().unwrap() = Some(TOKENS[lost]);
    let mut moved_to = vec![None; sessions.len()];
    for round in 0..3 {
        for (i, s) in sessions.iter().enumerate() {
            let before = up.request_count();
            let r = c
                .get(g.url(&format!("/t/{round}")))
                .header("X-Session-Id", s)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "session {i} round {round}");
            assert!(r.headers().get("x-graceway-degraded").is_none());
            let last = *carried(&up).last().unwrap();
            assert_ne!(last, lost);
            if home[i] == lost {
                let to = *moved_to[i].get_or_insert(last);
                assert_eq!(to, last, "session {i} moved twice");
            } else {
                assert_eq!(
                    carried(&up)[before..],
                    [home[i]],
                    "session {i} moved though its token is fine"
                );
            }
        }
    }
    // The header's value is in no log line, access log included.
    let lines = wait_for("the access lines", Duration::from_secs(10), || {
        let l = access_lines(&g);
        (l.len() >= 40 + 3 + 24).then_some(l)
    });
    assert!(
        lines.iter().any(|l| l.contains(" pick=sticky ")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains(" pick=round_robin ")));
    let logs = format!("{}\n{}", g.logs(), lines.join("\n"));
    assert!(
        !logs.contains("session-value-"),
        "a sticky value was logged"
    );
    for t in TOKENS {
        assert!(!logs.contains(t), "a token value was logged");
    }
    assert!(!g.status().await.to_string().contains("session-value-"));
    assert_eq!(
        g.status().await["upstreams"][0]["pool"]["sticky_header"],
        "x-session-id"
    );
}

/// A vendor that enforces `limit` requests per token per window of
/// `window` seconds, stating its quota (`X-RateLimit-Reset` as a Unix
/// time) on every answer, and answering 429 past it. Returns the mock
/// and a log of (unix millis at arrival, status answered).
type Arrivals = Arc<Mutex<Vec<(u128, u16)>>>;

fn quota_vendor(limit: u64, window: u64) -> (MockUpstream, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let state: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::default();
    let a = arrivals.clone();
    let up = MockUpstream::start(move |r| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let secs = now.as_secs();
        let mut state = state.lock().unwrap();
        let (reset_at, used) = state
            .entry(r.bearer().unwrap_or("").to_string())
            .or_insert((0, 0));
        if secs >= *reset_at {
            (*reset_at, *used) = (secs + window, 0);
        }
        let status = if *used >= limit { 429 } else { 200 };
        if status == 200 {
            *used += 1;
        }
        a.lock().unwrap().push((now.as_millis(), status));
        let reply = if status == 200 {
            MockReply::ok("{}").header("Cache-Control", "max-age=60")
        } else {
            MockReply::status(429, r#"{"message":"slow down"}"#)
        };
        reply
            .header("X-RateLimit-Limit", &limit.to_string())
            .header("X-RateLimit-Remaining", &(limit - *used).to_string())
            .header("X-RateLimit-Reset", &reset_at.to_string())
    });
    (up, arrivals)
}

fn refused_429s(a: &Arrivals) -> usize {
    a.lock().unwrap().iter().filter(|(_, s)| *s == 429).count()
}

fn waits(m: &str, outcome: &str) -> f64 {
    metric_value(
        m,
        &format!(r#"graceway_token_queue_waits_total{{outcome="{outcome}",upstream="emoji"}}"#),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_waits_for_the_vendors_reset_then_sends() {
    // 2 requests per 4 s window; the third waits for the reset.
    let (up, arrivals) = quota_vendor(2, 4);
    let g = start(
        EmojiConfig::new(up.port)
            .upstream("      queue: { max_wait: 6s }")
            .top("log: { access: true }"),
    );
    for p in ["/q/1", "/q/2"] {
        assert_eq!(get(&g, p).await.status(), 200);
    }
    // The second answer said 0 left: the token waits for its reset.
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["tokens"][0]["state"], "rate-limited",
        "{st:#}"
    );
    let reset_ms = u128::from(
        st["upstreams"][0]["tokens"][0]["quota"]["reset_at"]
            .as_str()
            .map(|s| humantime::parse_rfc3339(s).unwrap())
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    ) * 1000;
    let t0 = Instant::now();
    let r = get(&g, "/q/3").await;
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert!(r.headers().get("x-graceway-degraded").is_none());
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    assert!(
        arrivals[2].0 >= reset_ms,
        "sent before the reset: {arrivals:?}, reset {reset_ms}"
    );
    assert!(arrivals.iter().all(|(_, s)| *s == 200), "{arrivals:?}");
    assert!(t0.elapsed() < Duration::from_secs(6));
    let m = g.metrics().await;
    assert_eq!(waits(&m, "sent"), 1.0, "{m}");
    assert_eq!(
        metric_value(&m, r#"graceway_token_queue_waiting{upstream="emoji"}"#),
        Some(0.0)
    );
    let lines = wait_for("3 access lines", Duration::from_secs(10), || {
        let l = access_lines(&g);
        (l.len() >= 3).then_some(l)
    });
    let queued = lines
        .iter()
        .find(|l| l.contains(" GET /q/3 "))
        .expect("the waiting request's line");
    let ms: u64 = queued
        .split(" queued_ms=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queued_ms in {queued}"));
    assert!(ms > 0 && ms < 6000, "{queued}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_wait_a_request_over_quota_gets_the_copy_or_a_503_and_is_never_sent() {
    // A 30 s window: its reset is past `max_wait`.
    let (up, arrivals) = quota_vendor(2, 30);
    let g = start(
        EmojiConfig::new(up.port)
            .tokens(two_tokens())
            .upstream("      queue: { max_wait: 1s }"),
    );
    // Both tokens spend their quota (failover order: token 0, then 1
    // once 0 is known spent).
    for p in ["/a", "/b", "/c", "/d"] {
        assert_eq!(get(&g, p).await.status(), 200, "{p}");
    }
    assert_eq!(carried(&up), [0, 0, 1, 1]);
    // Known over quota: /a from its copy, a new path 503 with Retry-After;
    // neither reaches the vendor.
    let r = get(&g, "/a").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-graceway-degraded"], "rate-limited");
    let r = get(&g, "/never-seen").await;
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(up.request_count(), 4, "sent over quota");
    assert_eq!(refused_429s(&arrivals), 0);
    // They never waited: the reset is too far.
    let m = g.metrics().await;
    assert_eq!(
        waits(&m, "sent") + waits(&m, "copy") + waits(&m, "refused"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_at_once_and_the_waiter_is_sent_at_the_reset() {
    let (up, arrivals) = quota_vendor(1, 4);
    let g =
        start(EmojiConfig::new(up.port).upstream("      queue: { max_wait: 8s, max_queued: 1 }"));
    assert_eq!(get(&g, "/first").await.status(), 200);
    // This one waits for the reset.
    let waiter = {
        let url = g.url("/waiter");
        tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
    };
    let admin = g.admin_url("/metrics");
    wait_for_async("a request in the queue", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let m = client().get(&admin).send().await.ok()?.text().await.ok()?;
            (metric_value(&m, r#"graceway_token_queue_waiting{upstream="emoji"}"#)? == 1.0)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        g.status().await["upstreams"][0]["pool"]["queue"]["waiting"],
        1
    );
    // The queue is full: answered at once, no copy for this path.
    let r = get(&g, "/full").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-graceway-degraded"], "rate-limited");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(waiter.await.unwrap(), 200);
    let m = g.metrics().await;
    assert_eq!(waits(&m, "refused"), 1.0, "{m}");
    assert_eq!(waits(&m, "sent"), 1.0, "{m}");
    assert_eq!(up.request_count(), 2, "{:?}", arrivals.lock().unwrap());
    assert_eq!(refused_429s(&arrivals), 0);
}
