//! OAuth2 against an identity provider that misbehaves: an upstream that
//! refuses every token it mints, JWTs whose `exp` comes before `expires_in`
//! says, and a provider that is down for a while.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::support::{
    client, metric_value, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};

fn oauth2_tokens(idp: &MockUpstream) -> String {
    format!(
        "        - oauth2:\n            token_url: \"http://127.0.0.1:{}/oauth/token\"\n            client_id: svc\n            client_secret_file: \"{{dir}}/client-secret\"",
        idp.port
    )
}

fn start(up: &MockUpstream, idp: &MockUpstream) -> Graceway {
    let dir = TestDir::new();
    dir.write("client-secret", "s3cret\n");
    Graceway::start_in(
        dir,
        &EmojiConfig::new(up.port)
            .tokens(&oauth2_tokens(idp))
            .build(),
    )
}

/// A provider that mints `tok-N` per fetch.
fn minting(count: Arc<AtomicU32>, down: Arc<AtomicBool>) -> MockUpstream {
    MockUpstream::start(move |_| {
        if down.load(Ordering::Relaxed) {
            return MockReply::status(503, r#"{"error":"temporarily_unavailable"}"#);
        }
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        MockReply::ok(&format!(
            r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":3600}}"#
        ))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_every_minted_token_costs_two_fetches_not_one_per_request() {
    let minted = Arc::new(AtomicU32::new(0));
    let idp = minting(minted.clone(), Arc::new(AtomicBool::new(false)));
    // Verifies against a key set this provider does not use: refuses all.
    let up = MockUpstream::start(|_| MockReply::revoked(401, r#"{"error":"invalid_token"}"#));
    let g = start(&up, &idp);
    let c = client();
    let t0 = Instant::now();
    let mut degraded = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        let r = c.get(g.url("/v1/chat")).send().await.unwrap();
        if r.headers().contains_key("x-graceway-degraded") {
            degraded += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(degraded > 20, "{degraded}");
    // The first token, one re-fetch at its refusal; the replacement's
    // refusal waits 10 s before the next (main minted ~35 in 20 s).
    assert_eq!(minted.load(Ordering::Relaxed), 2, "{}", g.logs());
    let m = g.metrics().await;
    let series = |result: &str| {
        metric_value(
            &m,
            &format!("graceway_token_fetches_total{{result=\"{result}\",token=\"0\",upstream=\"emoji\"}}"),
        )
    };
    assert_eq!(series("ok"), Some(2.0), "{m}");
    assert_eq!(series("refused"), Some(2.0), "{m}");
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["tokens"][0]["state"], "rejected",
        "{st:#}"
    );
    assert!(
        g.logs().contains("was refused too (2 refused in a row)"),
        "{}",
        g.logs()
    );
}

/// A JWT with this `exp` (Unix seconds); the signature is not checked here.
fn jwt(exp: u64, n: u32) -> String {
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.sig{n}",
        b64(r#"{"alg":"none"}"#),
        b64(&format!(r#"{{"exp":{exp},"n":{n}}}"#))
    )
}

fn exp_of(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_u64()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_whose_exp_comes_first_is_renewed_before_it_and_never_sent_expired() {
    let minted = Arc::new(AtomicU32::new(0));
    let m = minted.clone();
    // Whole-second `exp` 3 s ahead, while `expires_in` claims an hour.
    let idp = MockUpstream::start(move |_| {
        let n = m.fetch_add(1, Ordering::Relaxed) + 1;
        MockReply::ok(&format!(
            r#"{{"access_token":"{}","token_type":"Bearer","expires_in":3600}}"#,
            jwt(unix_now() + 3, n)
        ))
    });
    let expired_seen = Arc::new(AtomicU32::new(0));
    let e = expired_seen.clone();
    let up = MockUpstream::start(move |r| match r.bearer().and_then(exp_of) {
        Some(exp) if exp > unix_now() => MockReply::ok(r#"{"ok":true}"#),
        _ => {
            e.fetch_add(1, Ordering::Relaxed);
            MockReply::status(401, r#"{"message":"token expired"}"#)
        }
    });
    let g = start(&up, &idp);
    let c = client();
    let t0 = Instant::now();
    let mut reasons = Vec::new();
    while t0.elapsed() < Duration::from_secs(7) {
        let r = c.get(g.url("/v1/x")).send().await.unwrap();
        if let Some(d) = r.headers().get("x-graceway-degraded") {
            reasons.push(d.to_str().unwrap().to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        minted.load(Ordering::Relaxed) >= 3,
        "renewed from exp, not expires_in"
    );
    assert_eq!(
        expired_seen.load(Ordering::Relaxed),
        0,
        "an expired JWT was sent"
    );
    assert!(
        reasons.iter().all(|r| r == "token-expired"),
        "never token-rejected: {reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_identity_provider_is_used_within_seconds() {
    let minted = Arc::new(AtomicU32::new(0));
    let down = Arc::new(AtomicBool::new(true));
    let idp = minting(minted.clone(), down.clone());
    let up = MockUpstream::start(|_| MockReply::ok(r#"{"ok":true}"#));
    let g = start(&up, &idp);
    let c = client();
    // Down for 8 s: no token at all (the first fetch failed at start).
    let r = c.get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.headers()["x-graceway-degraded"], "token-unavailable");
    tokio::time::sleep(Duration::from_secs(8)).await;
    down.store(false, Ordering::Relaxed);
    let back = Instant::now();
    wait_for_async("a fresh answer", Duration::from_secs(10), || async {
        let r = c.get(g.url("/v1/x")).send().await.ok()?;
        (r.status() == 200 && !r.headers().contains_key("x-graceway-degraded")).then_some(())
    })
    .await;
    let took = back.elapsed();
    // oauth2.max_retry (4 s) plus the control loop's tick.
    assert!(
        took < Duration::from_secs(5),
        "first fresh answer {took:?} after the return"
    );
    assert_eq!(minted.load(Ordering::Relaxed), 1);
}
