//! One OAuth2 fetch per fleet (`oauth2.share: true`, issue #24) against a
//! real `redis-server` and three real graceway processes, each in front
//! of its own vendor port (so each replica's requests are counted apart),
//! all fetching from one identity provider that counts its fetches and
//! one vendor that accepts only the tokens the provider minted and not
//! revoked: one fetch for the fleet at start, the token sealed in Redis
//! (never there in clear), one re-fetch for the fleet when the vendor
//! refuses it, `share` refused without the key, and each replica alone
//! (still serving) when Redis is killed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::redis::Redis;
use crate::support::{
    metric_value, run_cli, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};

/// 32 bytes as 64 hex characters, as `openssl rand -hex 32` writes them.
const KEY: &str = "5f1c0e9a7b3d2c4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e\n";

type Accepted = Arc<Mutex<HashSet<String>>>;

/// The provider: mints `oauth2-fleet-token-N-f00d` per fetch (counted),
/// each accepted by the vendor until revoked.
struct Idp {
    mock: MockUpstream,
    fetches: Arc<AtomicU32>,
    accepted: Accepted,
}

fn token(n: u32) -> String {
    format!("oauth2-fleet-token-{n}-f00d")
}

impl Idp {
    fn start() -> Idp {
        Idp::lasting(3600)
    }

    /// Tokens that expire `expires_in` s after their fetch.
    fn lasting(expires_in: u64) -> Idp {
        let fetches = Arc::new(AtomicU32::new(0));
        let accepted: Accepted = Arc::default();
        let (f, a) = (fetches.clone(), accepted.clone());
        let mock = MockUpstream::start(move |_| {
            let n = f.fetch_add(1, Ordering::SeqCst) + 1;
            a.lock().unwrap().insert(token(n));
            MockReply::ok(&format!(
                r#"{{"access_token":"{}","token_type":"Bearer","expires_in":{expires_in}}}"#,
                token(n)
            ))
        });
        Idp {
            mock,
            fetches,
            accepted,
        }
    }

    fn fetches(&self) -> u32 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn revoke(&self, n: u32) {
        self.accepted.lock().unwrap().remove(&token(n));
    }
}

/// One replica's port on the vendor: 200 for an accepted token, the
/// vendor's `invalid_token` 401 otherwise.
fn vendor_port(accepted: &Accepted) -> MockUpstream {
    let accepted = accepted.clone();
    MockUpstream::start(move |req| {
        let ok = req
            .bearer()
            .is_some_and(|t| accepted.lock().unwrap().contains(t));
        if ok {
            MockReply::ok(r#"{"ok":true}"#)
        } else {
            MockReply::revoked(401, "{}")
        }
    })
}

/// A replica's config: the OAuth2 token shared through `redis_keys`
/// (the keys of `cache.redis` after `url`).
fn config(up: &MockUpstream, idp: &Idp, redis_keys: &str) -> String {
    config_with(up, idp, redis_keys, "")
}

/// [`config`] with more keys of the `oauth2` source (`extra`: YAML lines).
fn config_with(up: &MockUpstream, idp: &Idp, redis_keys: &str, extra: &str) -> String {
    let tokens = format!(
        "        - oauth2:\n            token_url: \"http://127.0.0.1:{}/oauth/token\"\n            client_id: svc\n            client_secret_file: \"{{dir}}/client-secret\"\n            scope: emoji.read\n            share: true{extra}",
        idp.mock.port
    );
    EmojiConfig::new(up.port)
        .tokens(&tokens)
        .top(&format!("cache: {{ redis: {{ {redis_keys} }} }}"))
        .build()
}

fn folder() -> TestDir {
    let dir = TestDir::new();
    dir.write("client-secret", "s3cret\n");
    dir.write("fleet.key", KEY);
    dir
}

/// Replicas started side by side (so their first fetches race for the
/// lock), each healthy before this returns.
fn fleet(ports: &[MockUpstream], idp: &Idp, redis: &Redis) -> Vec<Graceway> {
    fleet_with(ports, idp, redis, "")
}

/// [`fleet`] with more keys of the `oauth2` source.
fn fleet_with(ports: &[MockUpstream], idp: &Idp, redis: &Redis, extra: &str) -> Vec<Graceway> {
    let keys = format!(
        "url: \"{}\", timeout: 500ms, secret_file: \"{{dir}}/fleet.key\"",
        redis.url()
    );
    let gs: Vec<Graceway> = ports
        .iter()
        .map(|p| Graceway::spawn_in(folder(), &config_with(p, idp, &keys, extra), &[]))
        .collect();
    for g in &gs {
        g.wait_healthy();
    }
    gs
}

/// Requests `port` saw carrying `token`.
fn carried(up: &MockUpstream, token: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.bearer() == Some(token))
        .count()
}

async fn minted(g: &Graceway) -> serde_json::Value {
    g.status().await["upstreams"][0]["tokens"][0].clone()
}

/// Sends requests through `g` until one is answered fresh (200, not
/// degraded) with `want` on the vendor's side.
async fn wait_fresh_with(g: &Graceway, port: &MockUpstream, want: &str) {
    wait_for_async(
        &format!("a fresh answer carrying {want}"),
        Duration::from_secs(20),
        || async {
            let before = carried(port, want);
            let r = g.get("/v1/items").await;
            let fresh = r.status() == 200 && r.headers().get("x-graceway-degraded").is_none();
            (fresh && carried(port, want) > before).then_some(())
        },
    )
    .await;
}

fn sum(ms: &[String], series: &str) -> f64 {
    ms.iter().filter_map(|m| metric_value(m, series)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_fetches_once_keeps_the_token_sealed_and_refetches_once_on_refusal() {
    let redis = Redis::start(&[]);
    let idp = Idp::start();
    let ports: Vec<MockUpstream> = (0..3).map(|_| vendor_port(&idp.accepted)).collect();
    let gs = fleet(&ports, &idp, &redis);
    let logs = || {
        gs.iter()
            .map(|g| g.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };

    // (1) One fetch for the fleet at start; every replica sends that token.
    assert_eq!(idp.fetches(), 1, "{}", logs());
    for (g, p) in gs.iter().zip(&ports) {
        wait_fresh_with(g, p, &token(1)).await;
    }
    let mut here = 0;
    let fetcher_pid = {
        let mut pid = None;
        for g in &gs {
            let t = minted(g).await;
            if t["minted"]["from"] == "here" {
                here += 1;
                pid = Some(g.pid());
            }
        }
        pid.unwrap_or_default()
    };
    assert_eq!(here, 1, "exactly one replica fetched: {}", logs());
    for g in &gs {
        let t = minted(g).await;
        if t["minted"]["from"] == "fleet" {
            let by = t["minted"]["replica"].as_str().unwrap_or_default();
            assert!(by.ends_with(&format!("/{fetcher_pid}")), "{t:#}");
            assert!(t["minted"]["fetched_at"].is_string(), "{t:#}");
        }
    }
    let fps: HashSet<String> = {
        let mut s = HashSet::new();
        for g in &gs {
            s.insert(minted(g).await["fingerprint"].to_string());
        }
        s
    };
    assert_eq!(fps.len(), 1, "one token for the fleet: {fps:?}");
    // `graceway status` says where the token came from.
    let shared_by = {
        let mut found = None;
        for g in &gs {
            if minted(g).await["minted"]["from"] == "fleet" {
                found = Some(g);
            }
        }
        found.expect("a replica that took the fleet's token")
    };
    let (code, out, _) = run_cli(&["status", "--admin", &shared_by.admin_url("")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("/{fetcher_pid}, fetched at")) && out.contains("(oauth2.share)"),
        "{out}"
    );
    // A full `graceway check` takes the shared token: no fetch.
    let (code, out, err) = run_cli(&["check", "-c", gs[0].config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(idp.fetches(), 1, "check fetched: {out}{err}");

    // (2) Every key and value in Redis: the token is nowhere in clear.
    let keys = redis.cli(&["--scan"]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("graceway:oauth2:v1:{") && k.ends_with("}:token")),
        "{keys:?}"
    );
    for k in &keys {
        assert!(!k.contains("fleet-token"), "a key names the token: {k}");
        assert_eq!(redis.cli(&["TYPE", k]).trim(), "string", "{k}");
        let v = redis.cli(&["GET", k]);
        assert!(!v.is_empty(), "{k}");
        assert!(!v.contains("fleet-token"), "{k} holds the token in clear");
        assert!(!v.contains("f00d"), "{k} holds part of the token in clear");
    }

    // (3) The vendor refuses the shared token: one re-fetch for the fleet,
    // every replica moves to the new token.
    idp.revoke(1);
    gs[0].get("/v1/items").await;
    for (g, p) in gs.iter().zip(&ports) {
        wait_fresh_with(g, p, &token(2)).await;
    }
    assert_eq!(idp.fetches(), 2, "{}", logs());
    // Nothing more comes (no replica fetches late for itself).
    for (g, p) in gs.iter().zip(&ports) {
        wait_fresh_with(g, p, &token(2)).await;
    }
    assert_eq!(idp.fetches(), 2, "{}", logs());
    let mut ms = Vec::new();
    for g in &gs {
        ms.push(g.metrics().await);
    }
    let share = |r: &str| {
        sum(
            &ms,
            &format!("graceway_oauth2_share_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(share("fetched"), 2.0, "{ms:?}");
    assert_eq!(share("alone"), 0.0, "{ms:?}");
    assert!(share("shared") >= 4.0, "{ms:?}");
    for g in &gs {
        assert!(!g.logs().contains("fleet-token"), "a token value in a log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_without_the_key_is_refused_and_a_bad_key_is_named_never_shown() {
    let redis = Redis::start(&[]);
    let idp = Idp::start();
    let up = vendor_port(&idp.accepted);
    let dir = folder();
    let check = |keys: &str| {
        let cfg = crate::support::render(&config(&up, &idp, keys), 1, 2, dir.path());
        let p = dir.write("graceway.yaml", &cfg);
        run_cli(&["check", "-c", p.to_str().unwrap()])
    };
    let url = format!("url: \"{}\"", redis.url());
    let (code, out, err) = check(&url);
    let err = format!("{out}{err}");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("upstreams[0].credentials.tokens[0].oauth2.share")
            && err.contains("cache.redis.secret_file"),
        "{err}"
    );
    // `--skip-sources` reads no file but still refuses it.
    let p = dir.file("graceway.yaml");
    let (code, out, err) = run_cli(&["check", "--skip-sources", "-c", p.to_str().unwrap()]);
    let err = format!("{out}{err}");
    assert_ne!(code, 0);
    assert!(err.contains("oauth2.share"), "{err}");
    // A key file that is not 64 hex characters: named, its content never shown.
    dir.write("bad.key", "hunter2-not-a-key-hunter2\n");
    let (code, out, err) = check(&format!("{url}, secret_file: \"{{dir}}/bad.key\""));
    let err = format!("{out}{err}");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("cache.redis.secret_file") && err.contains("64 hex characters"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert_eq!(idp.fetches(), 0, "nothing fetched for a refused config");
    // With the key, check passes and its one fetch is the fleet's.
    let (code, out, err) = check(&format!("{url}, secret_file: \"{{dir}}/fleet.key\""));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(idp.fetches(), 1);
    let (code, out, err) = check(&format!("{url}, secret_file: \"{{dir}}/fleet.key\""));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(idp.fetches(), 1, "the second check took the stored token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_each_replica_fetches_alone_and_serves() {
    let mut redis = Redis::start(&[]);
    let idp = Idp::start();
    let ports: Vec<MockUpstream> = (0..2).map(|_| vendor_port(&idp.accepted)).collect();
    let gs = fleet(&ports, &idp, &redis);
    assert_eq!(idp.fetches(), 1);
    for (g, p) in gs.iter().zip(&ports) {
        wait_fresh_with(g, p, &token(1)).await;
    }
    redis.kill();
    idp.revoke(1);
    // Each replica meets the refusal itself and fetches for itself.
    let mut seen = HashSet::new();
    for (g, p) in gs.iter().zip(&ports) {
        let t = wait_for_async(
            "a fresh answer with a new token",
            Duration::from_secs(20),
            || async {
                let r = g.get("/v1/items").await;
                let fresh = r.status() == 200 && r.headers().get("x-graceway-degraded").is_none();
                let last = p
                    .requests()
                    .last()
                    .and_then(|q| q.bearer().map(str::to_string));
                last.filter(|t| fresh && *t != token(1))
            },
        )
        .await;
        seen.insert(t);
    }
    assert_eq!(seen.len(), 2, "each its own token: {seen:?}");
    assert_eq!(idp.fetches(), 3);
    for g in &gs {
        let m = g.metrics().await;
        assert!(
            metric_value(&m, "graceway_oauth2_share_total{result=\"alone\"}") >= Some(1.0),
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_keeps_the_fleets_token_until_its_refresh_point_then_one_fetches() {
    let redis = Redis::start(&[]);
    // 10 s tokens (9 s after the skew), refreshed at half: 4.5 s after
    // each fetch, the next refresh 4.5 s later again.
    let idp = Idp::lasting(10);
    let ports: Vec<MockUpstream> = (0..3).map(|_| vendor_port(&idp.accepted)).collect();
    let gs = fleet_with(&ports, &idp, &redis, "\n            refresh_fraction: 0.5");
    let logs = || {
        gs.iter()
            .map(|g| g.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert_eq!(idp.fetches(), 1, "{}", logs());
    for (g, p) in gs.iter().zip(&ports) {
        wait_fresh_with(g, p, &token(1)).await;
    }
    // The refresh point: one replica fetches, every replica moves.
    for (g, p) in gs.iter().zip(&ports) {
        wait_fresh_with(g, p, &token(2)).await;
    }
    assert_eq!(
        idp.fetches(),
        2,
        "one fetch for the fleet's refresh: {}",
        logs()
    );
    let mut expiries = HashSet::new();
    for g in &gs {
        let t = minted(g).await;
        expiries.insert(t["expires_at"].to_string());
        assert_eq!(t["state"], "active", "{t:#}");
    }
    assert_eq!(expiries.len(), 1, "one token, one expiry: {expiries:?}");
}

/// The ACL `docs/how-it-works.md` shows, with what sharing adds: the
/// lock's release runs a script (`EVAL`) that deletes (`DEL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_redis_acl_is_enough_for_shared_tokens() {
    let acl = "resetkeys ~graceway:* resetchannels &graceway:* -@all +get +set +mget +ping +hello +publish +subscribe +cluster|slots +cluster|shards";
    let mut args = vec!["--user", "graceway", "on", ">acl-pass"];
    args.extend(acl.split(' '));
    args.extend(["+eval", "+del"]);
    let redis = Redis::start(&args);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/how-it-works.md"))
        .unwrap();
    assert!(
        doc.contains(acl) && doc.contains("with oauth2.share, the lock's release: +eval +del"),
        "the ACL in the doc is the one tested here"
    );
    let idp = Idp::start();
    let ports: Vec<MockUpstream> = (0..2).map(|_| vendor_port(&idp.accepted)).collect();
    let keys = format!(
        "url: \"redis://graceway:acl-pass@127.0.0.1:{}\", timeout: 500ms, secret_file: \"{{dir}}/fleet.key\"",
        redis.port
    );
    let gs: Vec<Graceway> = ports
        .iter()
        .map(|p| Graceway::start_in(folder(), &config(p, &idp, &keys)))
        .collect();
    for (g, p) in gs.iter().zip(&ports) {
        wait_fresh_with(g, p, &token(1)).await;
    }
    assert_eq!(idp.fetches(), 1);
    let mut ms = Vec::new();
    for g in &gs {
        ms.push(g.metrics().await);
    }
    let op = |op: &str, r: &str| {
        sum(
            &ms,
            &format!("graceway_fleet_operations_total{{op=\"{op}\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(op("oauth2-unlock", "ok"), 1.0, "the lock was freed: {ms:?}");
    for o in ["oauth2-get", "oauth2-set", "oauth2-lock", "oauth2-unlock"] {
        assert_eq!(op(o, "error"), 0.0, "{o}: {ms:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_spoilt_at_reload_keeps_the_old_state() {
    let redis = Redis::start(&[]);
    let idp = Idp::start();
    let ports = [vendor_port(&idp.accepted)];
    let gs = fleet(&ports, &idp, &redis);
    let g = &gs[0];
    wait_fresh_with(g, &ports[0], &token(1)).await;
    let before = g.reload_attempt().await;
    g.dir.write("fleet.key", "short\n");
    g.signal("HUP");
    let r = g.wait_reload(before).await;
    assert_eq!(r["ok"], false, "{r:#}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(msg.contains("cache.redis.secret_file"), "{msg}");
    assert!(!msg.contains("short"), "the content is never shown: {msg}");
    // The old state serves on: the same token, no fetch.
    wait_fresh_with(g, &ports[0], &token(1)).await;
    assert_eq!(idp.fetches(), 1);
}
