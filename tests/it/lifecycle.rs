//! Token lifecycle: failover to a standby, the auth circuit breaker and
//! how it re-closes, expiry (JWT `exp`, `expires_at`), command refresh and
//! the OAuth2 client-credentials source.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{
    client, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};
use base64::Engine;

/// An upstream that accepts exactly the tokens in `accepted`.
fn gatekeeper(accepted: &[&str]) -> (MockUpstream, Arc<Mutex<HashSet<String>>>) {
    let set: Arc<Mutex<HashSet<String>>> =
        Arc::new(Mutex::new(accepted.iter().map(|s| s.to_string()).collect()));
    let s = set.clone();
    let up = MockUpstream::start(move |r| {
        let ok = r.bearer().is_some_and(|b| s.lock().unwrap().contains(b));
        if ok {
            MockReply::ok(&format!(
                r#"{{"path":"{}","len":{}}}"#,
                r.path(),
                r.body.len()
            ))
        } else {
            MockReply::revoked(401, r#"{"error":"invalid_token"}"#)
        }
    });
    (up, set)
}

fn config(port: u16, tokens: &str, extra: &str) -> String {
    EmojiConfig::new(port)
        .health("{ open_after: 100, retry_after: 1s, max_retry_after: 2s }")
        .tokens(tokens)
        .upstream(extra)
        .build()
}

const TWO_TOKENS: &str =
    "        - { file: \"{dir}/primary\" }\n        - { file: \"{dir}/standby\" }";

fn start_two(up: &MockUpstream, extra: &str) -> Graceway {
    let dir = TestDir::new();
    dir.write("primary", "tok-primary\n");
    dir.write("standby", "tok-standby\n");
    Graceway::start_in(dir, &config(up.port, TWO_TOKENS, extra))
}

fn api_requests(up: &MockUpstream) -> Vec<crate::support::Recorded> {
    up.requests()
        .into_iter()
        .filter(|r| r.path() != "/v1/ping")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_standby_is_invisible_to_clients() {
    let (up, _) = gatekeeper(&["tok-standby"]);
    let g = start_two(&up, "");
    let c = client();
    for i in 0..5 {
        let r = c.get(g.url(&format!("/v1/e/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", g.logs());
        assert!(r.headers().get("x-graceway-degraded").is_none());
        assert_eq!(
            r.headers().get("cache-status").unwrap(),
            "graceway; fwd=miss"
        );
    }
    let seen: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.bearer().unwrap().to_string())
        .collect();
    assert_eq!(seen[0], "tok-primary");
    assert!(seen[1..].iter().all(|t| t == "tok-standby"), "{seen:?}");
    assert_eq!(seen.len(), 6, "one retry, then the standby directly");
    let logs = g.logs();
    assert_eq!(logs.matches("failing over to token 1").count(), 1, "{logs}");
    let st = g.status().await;
    let tokens = &st["upstreams"][0]["tokens"];
    assert_eq!(tokens[0]["state"], "rejected");
    assert_eq!(tokens[1]["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_retried_only_when_replayable() {
    let (up, _) = gatekeeper(&["tok-standby"]);
    let g = start_two(&up, "");
    let c = client();
    let small = "x".repeat(100);
    let r = c
        .post(g.url("/v1/orders"))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"path":"/v1/orders","len":100}"#
    );
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].body,
        small.as_bytes(),
        "the retry carries the same body"
    );

    // A fresh graceway (primary usable again) and a body larger than
    // Pingora's retry buffer: the 401 is not replayed.
    let (up2, _) = gatekeeper(&["tok-standby"]);
    let g2 = start_two(&up2, "");
    let big = vec![b'y'; 300 * 1024];
    let r = c.post(g2.url("/v1/orders")).body(big).send().await.unwrap();
    assert_eq!(r.status(), 503, "{}", g2.logs());
    assert_eq!(
        r.headers().get("x-graceway-degraded").unwrap(),
        "token-rejected"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "token-rejected");
    assert_eq!(
        up2.request_count(),
        1,
        "a large body must not be sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_breaker_stops_traffic_and_probe_recloses_it() {
    let (up, accepted) = gatekeeper(&["tok-primary"]);
    let g = start_two(&up, "      probe: { path: /v1/ping, interval: 1s }");
    let c = client();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    accepted.lock().unwrap().clear(); // both tokens revoked

    // One request discovers the revocation (primary, then standby).
    let r = c.get(g.url("/v1/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("x-graceway-degraded").unwrap(),
        "token-rejected"
    );
    let api_before = api_requests(&up).len();
    for _ in 0..30 {
        let r = c.get(g.url("/v1/a")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        api_requests(&up).len(),
        api_before,
        "no request beyond the probe while every token is rejected"
    );
    assert!(
        up.requests().iter().any(|r| r.path() == "/v1/ping"),
        "the probe runs"
    );
    let st = g.status().await;
    assert_eq!(st["upstreams"][0]["breakers"]["auth"]["open"], true, "{st}");

    // The vendor accepts the standby again: the probe notices.
    accepted.lock().unwrap().insert("tok-standby".into());
    wait_for_async(
        "the probe to re-close the breaker",
        Duration::from_secs(10),
        || async {
            let r = c.get(g.url("/v1/b")).send().await.unwrap();
            (r.status() == 200 && r.headers().get("x-graceway-degraded").is_none()).then_some(())
        },
    )
    .await;
    assert!(g.logs().contains("accepted again"), "{}", g.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_breaker_recloses_on_file_change_and_sighup() {
    let (up, accepted) = gatekeeper(&["tok-primary"]);
    let g = start_two(&up, "");
    let c = client();
    accepted.lock().unwrap().clear();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 503);
    let before = api_requests(&up).len();
    for _ in 0..10 {
        assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 503);
    }
    // At most one half-open trial (retry_after 1s) may have gone out.
    assert!(
        api_requests(&up).len() - before <= 1,
        "breaker open: nothing sent"
    );

    // A new value in the watched file closes it.
    accepted.lock().unwrap().insert("tok-new-1".into());
    g.dir.write("primary", "tok-new-1\n");
    wait_for_async(
        "the file change to close the breaker",
        Duration::from_secs(10),
        || async { (c.get(g.url("/v1/a")).send().await.unwrap().status() == 200).then_some(()) },
    )
    .await;

    // Rejected again; the vendor restores the standby; SIGHUP re-reads and
    // resets the states.
    accepted.lock().unwrap().clear();
    assert_eq!(
        c.get(g.url("/v1/a")).send().await.unwrap().status(),
        200,
        "stale copy now"
    );
    accepted.lock().unwrap().insert("tok-standby".into());
    let before = g.reload_attempt().await;
    g.signal("HUP");
    g.wait_reload(before).await;
    let r = c.get(g.url("/v1/c")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-graceway-degraded").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_probe_one_trial_request_per_backoff() {
    let (up, accepted) = gatekeeper(&["tok-primary"]);
    let dir = TestDir::new();
    dir.write("primary", "tok-primary\n");
    let g = Graceway::start_in(
        dir,
        &config(up.port, "        - { file: \"{dir}/primary\" }", ""),
    );
    let c = client();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    accepted.lock().unwrap().clear();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200); // stale
    let before = up.request_count();
    // Hammer for 2.5 s: retry_after 1s, then 2s: at most 2 trials.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let trials = up.request_count() - before;
    assert!((1..=2).contains(&trials), "trials: {trials}");
    // The vendor takes the token back: the next trial closes the breaker.
    accepted.lock().unwrap().insert("tok-primary".into());
    wait_for_async("a trial to succeed", Duration::from_secs(10), || async {
        let r = c.get(g.url("/v1/a")).send().await.unwrap();
        r.headers()
            .get("x-graceway-degraded")
            .is_none()
            .then_some(())
    })
    .await;
}

fn jwt(exp: u64) -> String {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2ln",
        b.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b.encode(format!(r#"{{"sub":"svc","exp":{exp}}}"#))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_from_jwt_and_expires_at() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let past = jwt(now - 60);
    let near = jwt(now + 3600);
    let far = jwt(now + 90 * 86400);
    let (up, _) = gatekeeper(&[&past, &near, &far, "plain-token"]);
    let dir = TestDir::new();
    dir.write("past", &past);
    dir.write("near", &near);
    dir.write("far", &far);
    dir.write("plain", "plain-token");
    let tokens = "        - { file: \"{dir}/past\" }\n        - { file: \"{dir}/near\" }\n        - { file: \"{dir}/far\" }\n        - { file: \"{dir}/plain\", expires_at: \"2001-01-01T00:00:00Z\" }";
    let g = Graceway::start_in(dir, &config(up.port, tokens, "      expires_warning: 72h"));
    let st = g.status().await;
    let t = &st["upstreams"][0]["tokens"];
    assert_eq!(t[0]["state"], "expired", "{st}");
    assert_eq!(t[1]["state"], "expiring");
    assert_eq!(t[2]["state"], "active");
    assert_eq!(t[3]["state"], "expired");
    assert!(t[1]["expires_at"].is_string());
    // The expired token is never sent; the expiring one is.
    let r = client().get(g.url("/v1/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests()[0].bearer(), Some(near.as_str()));
    let m = g.metrics().await;
    assert!(
        m.contains(&format!(
            "graceway_token_expiry_timestamp_seconds{{token=\"1\",upstream=\"emoji\"}} {}",
            now + 3600
        )),
        "{m}"
    );
    assert!(m.contains("graceway_token_state{state=\"expired\",token=\"0\",upstream=\"emoji\"} 1"));
    for v in [&past, &near, &far] {
        assert!(!g.logs().contains(v.as_str()));
        assert!(!st.to_string().contains(v.as_str()));
        assert!(!m.contains(v.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_source_refreshes_on_schedule() {
    let (up, _) = gatekeeper(&["cmd-1", "cmd-2"]);
    let dir = TestDir::new();
    // The command reads a file outside the watched set: only the refresh
    // schedule can pick the change up.
    let vault = dir.write("vault-secret", "cmd-1\n");
    let tokens = format!(
        "        - {{ command: [\"cat\", \"{}\"], refresh: 1s, timeout: 5s }}",
        vault.display()
    );
    let g = Graceway::start_in(dir, &config(up.port, &tokens, ""));
    let c = client();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    assert_eq!(up.requests()[0].bearer(), Some("cmd-1"));
    std::fs::write(&vault, "cmd-2\n").unwrap();
    wait_for_async("the command refresh", Duration::from_secs(10), || async {
        c.get(g.url("/v1/a")).send().await.unwrap();
        (up.requests().last().unwrap().bearer() == Some("cmd-2")).then_some(())
    })
    .await;
    let st = g.status().await;
    assert_eq!(st["reload"]["trigger"], "refresh");
    assert_eq!(st["upstreams"][0]["tokens"][0]["source"], "command:cat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_client_credentials() {
    let minted = Arc::new(Mutex::new(0u32));
    let failing = Arc::new(Mutex::new(true));
    let (m, f) = (minted.clone(), failing.clone());
    let idp = MockUpstream::start(move |r| {
        if *f.lock().unwrap() {
            return MockReply::status(500, r#"{"error":"temporarily_unavailable"}"#);
        }
        let basic = base64::engine::general_purpose::STANDARD.encode("svc-client:svc%2Fsecret");
        let form = String::from_utf8_lossy(&r.body).to_string();
        if r.header("authorization") != Some(format!("Basic {basic}").as_str())
            || !form.contains("grant_type=client_credentials")
            || !form.contains("scope=emoji.read")
        {
            return MockReply::status(401, r#"{"error":"invalid_client"}"#);
        }
        let mut n = m.lock().unwrap();
        *n += 1;
        MockReply::ok(&format!(
            r#"{{"access_token":"oa-token-{}","token_type":"Bearer","expires_in":3}}"#,
            *n
        ))
    });
    let (up, accepted) = gatekeeper(&[]);
    for i in 1..20 {
        accepted.lock().unwrap().insert(format!("oa-token-{i}"));
    }
    let dir = TestDir::new();
    dir.write("client-secret", "svc/secret\n");
    let tokens = format!(
        "        - oauth2:\n            token_url: \"http://127.0.0.1:{}/oauth/token\"\n            client_id: svc-client\n            client_secret_file: \"{{dir}}/client-secret\"\n            scope: emoji.read\n            refresh_fraction: 0.5",
        idp.port
    );
    let g = Graceway::start_in(dir, &config(up.port, &tokens, ""));
    let c = client();
    // The endpoint fails at start: the token is unavailable.
    let r = c.get(g.url("/v1/a")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["reason"],
        "token-unavailable"
    );
    let st = g.status().await;
    assert_eq!(st["upstreams"][0]["tokens"][0]["state"], "unavailable");
    assert!(st["upstreams"][0]["tokens"][0]["error"]
        .as_str()
        .unwrap()
        .contains("500 (temporarily_unavailable)"));

    // The endpoint recovers: the retry with backoff fetches a token.
    *failing.lock().unwrap() = false;
    wait_for_async("the oauth2 retry", Duration::from_secs(15), || async {
        (c.get(g.url("/v1/a")).send().await.unwrap().status() == 200).then_some(())
    })
    .await;
    assert_eq!(up.requests().last().unwrap().bearer(), Some("oa-token-1"));
    let st = g.status().await;
    assert!(st["upstreams"][0]["tokens"][0]["expires_at"].is_string());

    // expires_in 3 s with refresh_fraction 0.5: a new token within seconds.
    wait_for_async(
        "the expiry-driven refresh",
        Duration::from_secs(10),
        || async {
            c.get(g.url("/v1/b")).send().await.unwrap();
            (up.requests().last().unwrap().bearer() == Some("oa-token-2")).then_some(())
        },
    )
    .await;
    let logs = g.logs();
    assert!(
        !logs.contains("oa-token-") && !logs.contains("svc/secret"),
        "{logs}"
    );
}

/// The issue's bar: revoking the primary on a live upstream under load
/// gives zero client-visible errors while a standby is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_primary_under_load_is_invisible() {
    let (up, accepted) = gatekeeper(&["tok-primary", "tok-standby"]);
    let g = start_two(&up, "");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let stop = stop.clone();
        let url = g.url(&format!("/v1/load/{w}"));
        workers.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut bad) = (0u32, Vec::new());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5000 {
                n += 1;
                match c.get(&url).send().await {
                    Ok(r)
                        if r.status() == 200
                            && r.headers().get("x-graceway-degraded").is_none() =>
                    {
                        ok += 1
                    }
                    Ok(r) => bad.push(format!(
                        "{} {:?}",
                        r.status(),
                        r.headers().get("x-graceway-degraded")
                    )),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (ok, bad)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    accepted.lock().unwrap().remove("tok-primary");
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, bad) = w.await.unwrap();
        assert!(bad.is_empty(), "client-visible errors: {bad:?}");
        total += ok;
    }
    assert!(total > 100, "too little load: {total}");
    let after: Vec<_> = up.requests().into_iter().rev().take(20).collect();
    assert!(
        after.iter().all(|r| r.bearer() == Some("tok-standby")),
        "the standby carries the load now"
    );
}

/// Without a probe, successive trials cycle through the rejected tokens:
/// a standby the vendor takes back is found even while the primary stays
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_cycle_through_rejected_tokens() {
    let (up, accepted) = gatekeeper(&["tok-primary"]);
    let g = start_two(&up, "");
    let c = client();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    accepted.lock().unwrap().clear();
    let r = c.get(g.url("/v1/a")).send().await.unwrap();
    assert_eq!(
        r.headers().get("x-graceway-degraded").unwrap(),
        "token-rejected"
    );
    accepted.lock().unwrap().insert("tok-standby".into());
    wait_for_async(
        "a trial with the standby",
        Duration::from_secs(15),
        || async {
            let r = c.get(g.url("/v1/a")).send().await.unwrap();
            r.headers()
                .get("x-graceway-degraded")
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert_eq!(up.requests().last().unwrap().bearer(), Some("tok-standby"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_an_identity_provider_outage_serves_persisted_copies() {
    let idp_up = Arc::new(Mutex::new(true));
    let i = idp_up.clone();
    let idp = MockUpstream::start(move |_| {
        if *i.lock().unwrap() {
            MockReply::ok(r#"{"access_token":"oa-live","token_type":"Bearer","expires_in":3600}"#)
        } else {
            MockReply::status(503, r#"{"error":"temporarily_unavailable"}"#)
        }
    });
    let (up, _accepted) = gatekeeper(&["oa-live"]);
    let shared = TestDir::new();
    let store = shared.file("store.redb");
    let tokens = format!(
        "        - oauth2:\n            token_url: \"http://127.0.0.1:{}/oauth/token\"\n            client_id: svc\n            client_secret_file: \"{{dir}}/client-secret\"\n            timeout: 1s",
        idp.port
    );
    let cfg = config(
        up.port,
        &tokens,
        &format!("cache: {{ persist: {{ path: \"{}\" }} }}", store.display()),
    );
    let start = || {
        let dir = TestDir::new();
        dir.write("client-secret", "s3cret\n");
        Graceway::start_in(dir, &cfg)
    };
    let mut first = start();
    assert_eq!(
        client()
            .get(first.url("/v1/a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    first.stop();

    // The identity provider is down when graceway comes back.
    *idp_up.lock().unwrap() = false;
    let g = start();
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["tokens"][0]["state"], "unavailable",
        "{st:#}"
    );
    let seen = up.request_count();
    let r = client().get(g.url("/v1/a")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert_eq!(r.headers()["x-graceway-degraded"], "token-unavailable");
    assert!(r.text().await.unwrap().contains("/v1/a"));
    let r = client().get(g.url("/v1/never")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-graceway-degraded"], "token-unavailable");
    assert_eq!(up.request_count(), seen, "nothing is sent without a token");
    // Degraded but serving: ready.
    let ready = client().get(g.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_oauth2_token_is_replaced_at_once() {
    let minted = Arc::new(Mutex::new(0u32));
    let m = minted.clone();
    // The identity provider mints a new token per fetch; each lives an hour.
    let idp = MockUpstream::start(move |_| {
        let mut n = m.lock().unwrap();
        *n += 1;
        MockReply::ok(&format!(
            r#"{{"access_token":"oa-{}","token_type":"Bearer","expires_in":3600}}"#,
            *n
        ))
    });
    let (up, accepted) = gatekeeper(&["oa-1"]);
    let dir = TestDir::new();
    dir.write("client-secret", "s3cret\n");
    let tokens = format!(
        "        - oauth2:\n            token_url: \"http://127.0.0.1:{}/oauth/token\"\n            client_id: svc\n            client_secret_file: \"{{dir}}/client-secret\"",
        idp.port
    );
    let g = Graceway::start_in(dir, &config(up.port, &tokens, ""));
    let c = client();
    assert_eq!(c.get(g.url("/v1/a")).send().await.unwrap().status(), 200);
    assert_eq!(*minted.lock().unwrap(), 1);

    // The vendor revokes oa-1 (and will take the next one).
    {
        let mut a = accepted.lock().unwrap();
        a.clear();
        a.insert("oa-2".into());
    }
    let r = c.get(g.url("/v1/a")).send().await.unwrap();
    assert_eq!(r.headers()["x-graceway-degraded"], "token-rejected");
    // Not at the scheduled refresh in 48 minutes: now.
    let st = wait_for_async("a new OAuth2 token", Duration::from_secs(10), || async {
        let st = g.status().await;
        // graceway renews a one-hour token itself: `active`, not `expiring`.
        (st["upstreams"][0]["tokens"][0]["fingerprint"] == graceway::tokens::fingerprint("oa-2"))
            .then_some(st)
    })
    .await;
    assert_eq!(*minted.lock().unwrap(), 2, "{st:#}");
    assert_eq!(st["upstreams"][0]["tokens"][0]["state"], "active", "{st:#}");
    let r = c.get(g.url("/v1/b")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-graceway-degraded").is_none());
    assert_eq!(up.requests().last().unwrap().bearer(), Some("oa-2"));
}

/// A vendor that answers a revoked key the way most do: a bare 401 and a
/// JSON message, no `WWW-Authenticate: Bearer error="invalid_token"`.
fn bare_401_vendor(accepted: &[&str]) -> MockUpstream {
    let accepted: HashSet<String> = accepted.iter().map(|s| s.to_string()).collect();
    MockUpstream::start(move |r| {
        if r.bearer().is_some_and(|b| accepted.contains(b)) {
            MockReply::ok(r#"{"choices":[]}"#)
        } else {
            MockReply::status(401, r#"{"message":"Bad credentials"}"#)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_with_a_bare_401_on_one_post_path_stops_being_sent() {
    let up = bare_401_vendor(&["tok-standby"]);
    let g = start_two(&up, "");
    let c = client();
    for i in 0..200 {
        let r = c
            .post(g.url("/v1/chat/completions"))
            .body(format!(r#"{{"n":{i}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert!(r.headers().get("x-graceway-degraded").is_none());
    }
    // The primary is refused three times in a row (suspect_after), each
    // retried with the standby; then the standby carries every request.
    let calls = api_requests(&up).len();
    assert_eq!(calls, 203, "vendor calls for 200 requests");
    let to_primary = api_requests(&up)
        .iter()
        .filter(|r| r.bearer() == Some("tok-primary"))
        .count();
    assert_eq!(to_primary, 3);
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["tokens"][0]["state"], "rejected",
        "{st:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_standby_a_bare_401_streak_opens_the_auth_breaker() {
    let accept = Arc::new(AtomicBool::new(true));
    let a = accept.clone();
    let up = MockUpstream::start(move |r| {
        if a.load(Ordering::Relaxed) && r.bearer() == Some("tok-only") {
            MockReply::ok(r#"{"ok":true}"#)
        } else {
            MockReply::status(401, r#"{"message":"Bad credentials"}"#)
        }
    });
    let dir = TestDir::new();
    dir.write("only", "tok-only\n");
    let g = Graceway::start_in(
        dir,
        &config(up.port, "        - { file: \"{dir}/only\" }", ""),
    );
    let c = client();
    assert_eq!(c.get(g.url("/v1/one")).send().await.unwrap().status(), 200);
    accept.store(false, Ordering::Relaxed);
    let before = up.request_count();
    for _ in 0..50 {
        let r = c.get(g.url("/v1/one")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-graceway-degraded"], "token-rejected");
    }
    // Three refusals, then the breaker answers from the copy (at most a
    // trial per breaker window besides).
    let sent = up.request_count() - before;
    assert!(sent <= 5, "{sent} vendor calls for 50 requests");
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["breakers"]["auth"]["open"], true,
        "{st:#}"
    );
}
