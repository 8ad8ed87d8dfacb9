//! What operators see: Prometheus metrics after a scripted outage, the
//! `/status` inventory and `graceway status`, `/readyz` transitions, memory
//! soft-limit shedding, the alert webhook (with retries) and the access log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::mock::Wire;
use crate::support::{
    client, metric_value, run_cli, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream,
    TestDir,
};

/// The token value every test starts with. It must never show up in a
/// metric, status page, CLI table, webhook payload or log line.
const TOKEN: &str = "tok-obs-Very-Secret-1";

/// An upstream that answers 200 (JSON naming the path, storable) to the
/// one token it currently accepts, and 401 to anything else.
struct Gate {
    accepted: Arc<Mutex<String>>,
}

impl Gate {
    fn accept(&self, token: &str) {
        *self.accepted.lock().unwrap() = token.to_string();
    }

    /// From now on every token is turned away.
    fn reject_all(&self) {
        self.accept("<no token is accepted>");
    }
}

fn gated() -> (MockUpstream, Gate) {
    let accepted = Arc::new(Mutex::new(TOKEN.to_string()));
    let a = accepted.clone();
    let up = MockUpstream::start(move |r| {
        if r.bearer() == Some(a.lock().unwrap().as_str()) {
            MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.path()))
                .header("Cache-Control", "max-age=60")
        } else {
            MockReply::revoked(401, r#"{"error":"token deprecated"}"#)
        }
    });
    (up, Gate { accepted })
}

/// `health.retry_after: 30s` keeps the auth breaker from sending half-open
/// trials during a test, so upstream request counts are deterministic.
fn config(port: u16, extra_upstream: &str, extra_top: &str) -> String {
    EmojiConfig::new(port)
        .health("{ retry_after: 30s, max_retry_after: 60s }")
        .tokens("        - { file: \"{dir}/secrets/token\" }")
        .upstream(extra_upstream)
        .top(extra_top)
        .build()
}

/// The token file lives in its own folder, as a mounted secret does.
/// graceway watches the whole folder of a token file and re-reads its
/// sources on any change there; next to the test's stdout.log/stderr.log,
/// its own log lines would trigger refreshes (see the report on the
/// watcher).
fn token_path(dir: &TestDir) -> std::path::PathBuf {
    dir.file("secrets").join("token")
}

/// Replaces the token file atomically (write + rename), as a secret
/// manager does.
fn write_token(dir: &TestDir, value: &str) {
    let secrets = dir.file("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let tmp = secrets.join(".token.tmp");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(&tmp, token_path(dir)).unwrap();
}

fn start(port: u16, extra_upstream: &str, extra_top: &str) -> Graceway {
    let dir = TestDir::new();
    write_token(&dir, &format!("{TOKEN}\n"));
    Graceway::start_in(dir, &config(port, extra_upstream, extra_top))
}

async fn get(g: &Graceway, path: &str) -> reqwest::Response {
    client().get(g.url(path)).send().await.unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn metrics_text(g: &Graceway) -> String {
    let r = client().get(g.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Polls `/metrics` until every `(series, value)` pair holds exactly (some
/// gauges are refreshed by the once-a-second control loop). Returns the
/// text that satisfied them all.
async fn wait_metrics(g: &Graceway, expected: &[(&str, f64)]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(g).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(s, v)| metric_value(&text, s) != Some(*v))
            .map(|(s, v)| format!("{s} = {:?}, expected {v}", metric_value(&text, s)))
            .collect();
        if wrong.is_empty() {
            return text;
        }
        if std::time::Instant::now() > deadline {
            panic!("metrics never matched:\n{}\n\n{text}", wrong.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/status` satisfies `pred`; returns that status.
async fn wait_status(
    g: &Graceway,
    what: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = g.admin_url("/status");
    let pred = &pred;
    wait_for_async(what, limit, || {
        let url = url.clone();
        async move {
            let s: serde_json::Value = client().get(&url).send().await.ok()?.json().await.ok()?;
            pred(&s).then_some(s)
        }
    })
    .await
}

/// Waits for the control loop's first tick (memory sampled, webhook state
/// baseline taken in the same tick).
async fn wait_control_loop(g: &Graceway) {
    wait_status(g, "the first memory sample", Duration::from_secs(10), |s| {
        s["memory"]["rss_bytes"].as_u64().is_some_and(|v| v > 0)
    })
    .await;
}

/// Fetches `path` fresh (200, stored) and waits until the copy is counted.
async fn fill(g: &Graceway, path: &str) {
    let r = get(g, path).await;
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(
        header(&r, "cache-status"),
        Some("graceway; fwd=miss"),
        "{path}"
    );
    assert_eq!(
        r.text().await.unwrap(),
        format!(r#"{{"path":"{}"}}"#, path.split('?').next().unwrap())
    );
}

async fn assert_stale(g: &Graceway, path: &str) {
    let r = get(g, path).await;
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(header(&r, "x-graceway-degraded"), Some("token-rejected"));
    assert_eq!(
        header(&r, "cache-status"),
        Some("graceway; fwd=stale; fwd-status=401; detail=token-rejected")
    );
}

// ---------------------------------------------------------------- metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_scripted_outage() {
    let (up, gate) = gated();
    let g = start(up.port, "", "");
    let fp = graceway::tokens::fingerprint(TOKEN);

    // A fresh answer, stored.
    fill(&g, "/v1/emojis/smile").await;

    // A reload that applies (SIGHUP). Done before the token is rejected: a
    // full reload re-reads the token and clears its rejection.
    let before = g.reload_attempt().await;
    g.signal("HUP");
    let r = g.wait_reload(before).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["trigger"], "signal", "{r}");

    // Reloads that fail: an empty token file, refused by the watcher (the
    // old token stays) ...
    let before = g.reload_attempt().await;
    std::fs::write(token_path(&g.dir), "").unwrap();
    let r = g.wait_reload(before).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["trigger"], "file-change", "{r}");
    // ... and by an explicit reload, which answers 422.
    let r = client().post(g.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], false, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("tokens[0]"),
        "{body}"
    );

    // The upstream turns the token away: the stored copy is served ...
    gate.reject_all();
    assert_stale(&g, "/v1/emojis/smile").await;
    // ... and a path without a copy gets 503 without upstream contact.
    let r = get(&g, "/v1/emojis/frown").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["reason"],
        "token-rejected"
    );
    // The 200, then the 401: the 503 never reached the upstream.
    assert_eq!(up.request_count(), 2, "{:?}", up.requests());

    let m = wait_metrics(
        &g,
        &[
            (
                r#"graceway_requests_total{outcome="ok",upstream="emoji"}"#,
                1.0,
            ),
            (
                r#"graceway_requests_total{outcome="stale",upstream="emoji"}"#,
                1.0,
            ),
            (
                r#"graceway_requests_total{outcome="error",upstream="emoji"}"#,
                1.0,
            ),
            (
                r#"graceway_upstream_responses_total{status="200",upstream="emoji"}"#,
                1.0,
            ),
            (
                r#"graceway_upstream_responses_total{status="401",upstream="emoji"}"#,
                1.0,
            ),
            (
                r#"graceway_upstream_auth_failures_total{status="401",upstream="emoji"}"#,
                1.0,
            ),
            (
                r#"graceway_stale_served_total{reason="token-rejected",upstream="emoji"}"#,
                1.0,
            ),
            (
                r#"graceway_stale_served_total{reason="upstream-5xx",upstream="emoji"}"#,
                0.0,
            ),
            (r#"graceway_degraded{upstream="emoji"}"#, 1.0),
            (
                r#"graceway_token_state{state="rejected",token="0",upstream="emoji"}"#,
                1.0,
            ),
            (
                r#"graceway_token_state{state="active",token="0",upstream="emoji"}"#,
                0.0,
            ),
            (r#"graceway_token_reloads_total{result="ok"}"#, 1.0),
            (r#"graceway_token_reloads_total{result="failed"}"#, 2.0),
            (r#"graceway_upstream_breaker_open{upstream="emoji"}"#, 0.0),
            ("graceway_cache_entries", 1.0),
            ("graceway_cache_evictions_total", 0.0),
            (
                r#"graceway_upstream_request_duration_seconds_bucket{upstream="emoji",le="+Inf"}"#,
                2.0,
            ),
            (
                r#"graceway_upstream_request_duration_seconds_count{upstream="emoji"}"#,
                2.0,
            ),
            ("graceway_memory_soft_limit_bytes", 0.0),
        ],
    )
    .await;

    let bytes = metric_value(&m, "graceway_cache_bytes").unwrap_or(0.0);
    assert!(bytes > 0.0, "cache bytes {bytes}\n{m}");
    let rss = metric_value(&m, "process_resident_memory_bytes").unwrap_or(0.0);
    assert!(rss > 1_000_000.0, "rss {rss}\n{m}");
    // The smallest bucket of the histogram exists for the upstream.
    assert!(
        m.contains(
            r#"graceway_upstream_request_duration_seconds_bucket{upstream="emoji",le="0.005"}"#
        ),
        "{m}"
    );
    // Label values are bounded: never a path, never a token.
    for never in ["/v1/emojis", "smile", "frown", TOKEN] {
        assert!(!m.contains(never), "metrics contain {never:?}\n{m}");
    }
    // Tokens are labelled by index; the fingerprint appears only in
    // graceway_token_info, which joins the two for alerts.
    for line in m.lines().filter(|l| l.contains(&fp)) {
        assert!(line.starts_with("graceway_token_info{"), "{line}");
    }
    assert!(m.contains(&format!(
        "graceway_token_info{{fingerprint=\"{fp}\",token=\"0\",upstream=\"emoji\"}} 1"
    )));
}

// ----------------------------------------------------------------- status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_inventory_and_cli_table_in_a_degraded_state() {
    let (up, gate) = gated();
    let g = start(
        up.port,
        r#"    match: { path_prefix: "/v1" }"#,
        "cache: { memory_bytes: 8MiB }",
    );
    let fp = graceway::tokens::fingerprint(TOKEN);
    assert!(fp.starts_with("sha256:") && fp.len() == 15, "{fp}");

    fill(&g, "/v1/emojis/smile").await;
    gate.reject_all();
    assert_stale(&g, "/v1/emojis/smile").await;
    // A request with no copy finds no usable token: the auth breaker opens.
    assert_eq!(get(&g, "/v1/emojis/frown").await.status(), 503);

    let st = wait_status(&g, "the degraded status", Duration::from_secs(10), |s| {
        s["memory"]["rss_bytes"].as_u64().is_some_and(|v| v > 0) && s["cache"]["entries"] == 1
    })
    .await;
    let text = st.to_string();
    assert!(!text.contains(TOKEN), "/status shows the token: {st:#}");

    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"), "{st:#}");
    assert_eq!(st["pid"].as_u64(), Some(u64::from(g.pid())), "{st:#}");
    assert_eq!(
        st["config"]["path"].as_str(),
        Some(g.config.display().to_string().as_str())
    );
    assert!(
        st["config"]["hash"]
            .as_str()
            .is_some_and(|h| h.len() >= 8 && !h.contains(TOKEN)),
        "{st:#}"
    );
    assert_eq!(st["config"]["generation"], 1);

    let reload = &st["reload"];
    assert_eq!(reload["attempt"], 0, "{st:#}");
    assert_eq!(reload["ok"], true);
    assert_eq!(reload["trigger"], "startup");
    assert!(
        reload["message"]
            .as_str()
            .unwrap()
            .contains(&g.config.display().to_string()),
        "{reload}"
    );
    let at = reload["at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(at).is_ok(), "reload.at {at}");

    let mem = &st["memory"];
    assert!(mem["rss_bytes"].as_u64().unwrap() > 1_000_000, "{mem}");
    assert!(mem["soft_limit_bytes"].is_null(), "{mem}");
    assert_eq!(mem["shed_entries"], 0, "{mem}");
    assert_eq!(mem["shed_bytes"], 0, "{mem}");
    assert!(mem["last_shed"].is_null(), "{mem}");

    let cache = &st["cache"];
    assert_eq!(cache["entries"], 1, "{cache}");
    assert!(cache["bytes"].as_u64().unwrap() > 0, "{cache}");
    assert_eq!(cache["limit_bytes"], 8 << 20, "{cache}");

    let u = &st["upstreams"][0];
    assert_eq!(st["upstreams"].as_array().unwrap().len(), 1);
    assert_eq!(u["name"], "emoji", "{u:#}");
    assert_eq!(u["url"], up.url(), "{u:#}");
    assert_eq!(u["route"]["path_prefix"], "/v1", "{u:#}");
    assert_eq!(u["state"], "degraded", "{u:#}");
    assert_eq!(u["reason"], "token-rejected", "{u:#}");
    for ts in ["degraded_since", "last_success"] {
        let v = u[ts].as_str().unwrap_or_else(|| panic!("{ts}: {u:#}"));
        assert!(humantime::parse_rfc3339(v).is_ok(), "{ts} = {v}");
    }
    assert_eq!(u["last_failure"]["reason"], "token-rejected", "{u:#}");
    assert!(u["last_failure"]["at"].is_string(), "{u:#}");
    assert_eq!(u["breakers"]["health"]["open"], false, "{u:#}");
    assert_eq!(u["breakers"]["auth"]["open"], true, "{u:#}");
    assert_eq!(u["stored"]["entries"], 1, "{u:#}");

    let t = &u["tokens"][0];
    assert_eq!(u["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(t["index"], 0, "{t}");
    assert_eq!(
        t["source"].as_str(),
        Some(format!("file:{}", token_path(&g.dir).display()).as_str()),
        "{t}"
    );
    assert_eq!(t["kind"], "file", "{t}");
    assert_eq!(t["fingerprint"].as_str(), Some(fp.as_str()), "{t}");
    assert_eq!(t["state"], "rejected", "{t}");
    assert!(t["expires_at"].is_null(), "{t}");
    assert!(
        t["last_used"]
            .as_str()
            .is_some_and(|v| humantime::parse_rfc3339(v).is_ok()),
        "{t}"
    );

    // `graceway status --admin URL`: the same inventory as a table.
    let admin = format!("http://127.0.0.1:{}", g.admin);
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(&["status", "--admin", &admin]))
            .await
            .unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "emoji",
        "degraded",
        "token-rejected",
        fp.as_str(),
        "rejected",
    ] {
        assert!(out.contains(want), "table lacks {want:?}:\n{out}");
    }
    // The upstream row: name, state and reason side by side.
    assert!(
        out.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.starts_with(&["emoji", "degraded", "token-rejected"])
        }),
        "{out}"
    );
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN), "{out}{err}");

    // `graceway status -c CONFIG` finds the admin address in the config.
    let config = g.config.clone();
    let (code, out2, err) =
        tokio::task::spawn_blocking(move || run_cli(&["status", "-c", config.to_str().unwrap()]))
            .await
            .unwrap();
    assert_eq!(code, 0, "stdout:\n{out2}\nstderr:\n{err}");
    assert!(out2.contains(&fp), "{out2}");
    assert!(out2.contains("token-rejected"), "{out2}");
    assert!(!out2.contains(TOKEN), "{out2}");

    // Nothing listens on port 1: a non-zero exit and a message naming it.
    let (code, out3, err) =
        tokio::task::spawn_blocking(|| run_cli(&["status", "--admin", "http://127.0.0.1:1"]))
            .await
            .unwrap();
    assert_ne!(code, 0, "stdout:\n{out3}\nstderr:\n{err}");
    assert!(
        err.contains("cannot read http://127.0.0.1:1/status"),
        "stderr:\n{err}"
    );
    assert!(!out3.contains("UPSTREAM"), "{out3}");
}

// ----------------------------------------------------------------- readyz

async fn readyz(g: &Graceway) -> (u16, serde_json::Value) {
    let r = client().get(g.admin_url("/readyz")).send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap())
}

/// HEAD answers with the status GET gives, and no body.
async fn assert_head(g: &Graceway, path: &str, expected: u16) {
    let r = client().head(g.admin_url(path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), expected, "HEAD {path}");
    assert!(
        r.bytes().await.unwrap().is_empty(),
        "HEAD {path} has a body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_tokens_and_copies() {
    let (up, gate) = gated();
    let g = start(up.port, "", "");

    // Healthy: ready.
    let (code, body) = readyz(&g).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["upstreams"][0]["name"], "emoji", "{body}");
    assert_eq!(body["upstreams"][0]["state"], "healthy", "{body}");
    assert_head(&g, "/readyz", 200).await;
    assert_head(&g, "/healthz", 200).await;

    // Token rejected on the first request, no copy anywhere: not ready.
    gate.reject_all();
    let r = get(&g, "/v1/a").await;
    assert_eq!(r.status(), 503);
    let (code, body) = readyz(&g).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["upstreams"][0]["ready"], false, "{body}");
    assert_eq!(body["upstreams"][0]["state"], "down", "{body}");
    assert_eq!(body["upstreams"][0]["reason"], "token-rejected", "{body}");
    assert_head(&g, "/readyz", 503).await;
    // Liveness does not follow readiness.
    assert_head(&g, "/healthz", 200).await;

    // Rotation: a new accepted token in the watched file makes it ready.
    gate.accept("tok-obs-rotated-2");
    write_token(&g.dir, "tok-obs-rotated-2\n");
    let readyz_url = g.admin_url("/readyz");
    wait_for_async("readyz 200 after rotation", Duration::from_secs(10), || {
        let u = readyz_url.clone();
        async move { (client().get(&u).send().await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    assert_head(&g, "/readyz", 200).await;
    fill(&g, "/v1/a").await;
    assert_eq!(
        up.requests().last().unwrap().bearer(),
        Some("tok-obs-rotated-2")
    );
    let (code, body) = readyz(&g).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["upstreams"][0]["state"], "healthy", "{body}");

    // Rejected again, but now a copy exists: degraded-but-serving is ready.
    gate.reject_all();
    assert_stale(&g, "/v1/a").await;
    let (code, body) = readyz(&g).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["upstreams"][0]["state"], "degraded", "{body}");
    assert_eq!(body["upstreams"][0]["reason"], "token-rejected", "{body}");
    assert_head(&g, "/readyz", 200).await;
}

// ----------------------------------------------------------------- memory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_soft_limit_sheds_copies_and_no_limit_keeps_them() {
    let (up, _gate) = gated();
    // Both start together: the control instance has the same time in which
    // shedding could happen.
    let shed = start(up.port, "", "memory: { soft_limit: 1MiB }");
    let keep = start(up.port, "", "");
    const PATHS: usize = 30;
    for i in 0..PATHS {
        let p = format!("/v1/emojis/{i}");
        fill(&shed, &p).await;
        fill(&keep, &p).await;
    }
    for g in [&shed, &keep] {
        wait_status(g, "30 copies", Duration::from_secs(10), |s| {
            s["cache"]["entries"] == PATHS || s["memory"]["shed_entries"].as_u64().unwrap_or(0) > 0
        })
        .await;
    }

    // The watch sheds at most once per 10 s cooldown, which starts with its
    // first sample above the limit (at start, on an empty store).
    let st = wait_status(
        &shed,
        "the cache to be shed",
        Duration::from_secs(20),
        |s| s["cache"]["entries"] == 0 && s["memory"]["shed_entries"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    let mem = &st["memory"];
    assert_eq!(mem["soft_limit_bytes"], 1 << 20, "{mem}");
    assert!(mem["rss_bytes"].as_u64().unwrap() > 1 << 20, "{mem}");
    assert!(mem["shed_bytes"].as_u64().unwrap() > 0, "{mem}");
    assert!(mem["last_shed"].is_string(), "{mem}");
    assert_eq!(st["upstreams"][0]["stored"]["entries"], 0, "{st:#}");
    let shed_entries = mem["shed_entries"].as_u64().unwrap();
    assert!(shed_entries as usize <= PATHS, "{mem}");
    let logs = shed.logs();
    assert!(logs.contains("above memory.soft_limit"), "{logs}");

    let m = metrics_text(&shed).await;
    assert_eq!(
        metric_value(&m, "graceway_memory_soft_limit_bytes"),
        Some(1048576.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "graceway_memory_shed_entries_total"),
        Some(shed_entries as f64),
        "{m}"
    );
    assert_eq!(metric_value(&m, "graceway_cache_entries"), Some(0.0), "{m}");

    // The control instance, without soft_limit, kept every copy.
    let st = keep.status().await;
    assert_eq!(st["cache"]["entries"], PATHS, "{st:#}");
    assert_eq!(st["memory"]["shed_entries"], 0, "{st:#}");
    assert!(st["memory"]["soft_limit_bytes"].is_null(), "{st:#}");
    assert!(!keep.logs().contains("above memory.soft_limit"));
    let m = metrics_text(&keep).await;
    assert_eq!(
        metric_value(&m, "graceway_memory_shed_entries_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "graceway_cache_entries"),
        Some(PATHS as f64),
        "{m}"
    );
}

// ---------------------------------------------------------------- webhook

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_reports_token_rejection_and_retries() {
    // The receiver answers 500 to the first two POSTs, then 200.
    let posts = Arc::new(AtomicUsize::new(0));
    let p = posts.clone();
    // graceway's client sends `Connection: close` and reads to EOF; the
    // mock keeps connections open, so each answer is an empty body
    // (`Content-Length: 0`) sent with `Wire::Truncate`, which closes the
    // connection right after it: a complete answer, then EOF.
    let hook = MockUpstream::start(move |r| {
        let reply = if r.method != "POST" {
            MockReply::status(405, "")
        } else if p.fetch_add(1, Ordering::SeqCst) < 2 {
            MockReply::status(500, "")
        } else {
            MockReply::ok("")
        };
        reply.wire(Wire::Truncate)
    });
    let (up, gate) = gated();
    let g = start(
        up.port,
        "",
        &format!(
            r#"alerts: {{ webhook: "http://127.0.0.1:{}/hook" }}"#,
            hook.port
        ),
    );
    let fp = graceway::tokens::fingerprint(TOKEN);
    // The state watch takes its baseline in the control loop's first tick.
    wait_control_loop(&g).await;
    fill(&g, "/v1/emojis/smile").await;
    gate.reject_all();
    assert_stale(&g, "/v1/emojis/smile").await;

    // Two failures, back-off 1 s then 2 s, then delivered. The token and
    // the upstream change normally share one batch; should the state watch
    // have compared between the two, the second batch follows the first.
    let reqs = wait_for_async(
        "three webhook POSTs with both changes",
        Duration::from_secs(20),
        || async {
            let r = hook.requests();
            let kinds: Vec<serde_json::Value> = r
                .iter()
                .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
                .map(|e| e["kind"].clone())
                .collect();
            (r.len() >= 3 && kinds.contains(&"token".into()) && kinds.contains(&"upstream".into()))
                .then_some(r)
        },
    )
    .await;
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/hook");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{r:?}"
        );
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(TOKEN), "payload carries the token: {text}");
    }
    // The retries carry the same payload.
    assert_eq!(reqs[0].body, reqs[1].body);
    assert_eq!(reqs[0].body, reqs[2].body);

    // What the batches say: the token and the upstream change.
    let mut events = Vec::new();
    for r in &reqs {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["source"], "graceway", "{v}");
        assert!(v["host"].is_string(), "{v}");
        events.extend(v["events"].as_array().unwrap().iter().cloned());
    }
    let token_ev = events
        .iter()
        .find(|e| e["kind"] == "token")
        .unwrap_or_else(|| panic!("no token event: {events:?}"));
    assert_eq!(token_ev["upstream"], "emoji", "{token_ev}");
    assert_eq!(token_ev["token"], 0, "{token_ev}");
    assert_eq!(token_ev["from"], "active", "{token_ev}");
    assert_eq!(token_ev["to"], "rejected", "{token_ev}");
    assert_eq!(token_ev["fingerprint"].as_str(), Some(fp.as_str()));
    assert!(token_ev["at"].is_string(), "{token_ev}");
    let up_ev = events
        .iter()
        .find(|e| e["kind"] == "upstream")
        .unwrap_or_else(|| panic!("no upstream event: {events:?}"));
    assert_eq!(up_ev["upstream"], "emoji", "{up_ev}");
    assert_eq!(up_ev["from"], "healthy", "{up_ev}");
    assert!(
        up_ev["to"] == "degraded" || up_ev["to"] == "down",
        "{up_ev}"
    );
    assert_eq!(up_ev["reason"], "token-rejected", "{up_ev}");

    let admin = g.admin_url("/metrics");
    let m = wait_for_async("webhook delivery counters", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let m = client().get(&admin).send().await.ok()?.text().await.ok()?;
            let retried =
                metric_value(&m, r#"graceway_webhook_deliveries_total{result="retried"}"#)?;
            let ok = metric_value(&m, r#"graceway_webhook_deliveries_total{result="ok"}"#)?;
            (retried >= 2.0 && ok >= 1.0).then_some(m)
        }
    })
    .await;
    assert!(
        metric_value(&m, r#"graceway_webhook_deliveries_total{result="failed"}"#)
            .is_none_or(|v| v == 0.0),
        "{m}"
    );
    let logs = g.logs();
    assert!(logs.contains("answered 500"), "{logs}");
    assert!(!logs.contains(TOKEN), "{logs}");
}

// ------------------------------------------------------------- access log

/// A fresh answer, a stale one and an unrouted 404, with a client secret
/// in the query that must not be logged (a parameter name outside
/// `cache.sensitive_query`, so the answer is still kept).
async fn access_scenario(g: &Graceway, gate: &Gate) {
    fill(g, "/v1/a?session=clientsecret").await;
    gate.reject_all();
    assert_stale(g, "/v1/a?session=clientsecret").await;
    let r = get(g, "/other?session=clientsecret").await;
    assert_eq!(r.status(), 404);
}

/// Stops graceway (so that stdout is complete) and returns stdout.
fn stopped_stdout(g: &mut Graceway) -> String {
    let st = g.stop();
    assert!(st.is_some(), "graceway was not running");
    std::fs::read_to_string(g.dir.file("stdout.log")).unwrap()
}

fn assert_no_secrets(out: &str) {
    assert!(!out.contains("clientsecret"), "query logged:\n{out}");
    assert!(!out.contains("session="), "query logged:\n{out}");
    assert!(!out.contains(TOKEN), "token logged:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_plain_json_and_off() {
    let fp = graceway::tokens::fingerprint(TOKEN);
    let route = r#"    match: { path_prefix: "/v1" }"#;
    let (up_p, gate_p) = gated();
    let (up_j, gate_j) = gated();
    let (up_o, gate_o) = gated();
    let mut plain = start(up_p.port, route, "log: { access: true, format: plain }");
    let mut json = start(up_j.port, route, "log: { access: true, format: json }");
    let mut off = start(up_o.port, route, "");
    access_scenario(&plain, &gate_p).await;
    access_scenario(&json, &gate_j).await;
    access_scenario(&off, &gate_o).await;

    // Plain.
    let out = tokio::task::spawn_blocking(move || {
        let out = stopped_stdout(&mut plain);
        (out, plain)
    })
    .await
    .unwrap();
    let (out, plain) = out;
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" upstream=")).collect();
    assert_eq!(lines.len(), 3, "{out}\n{}", plain.logs());
    // Each request has its line (lines are written as requests finish, so
    // their order is not asserted).
    for want in [
        format!(" GET /v1/a 200 upstream=emoji outcome=ok reason=- token={fp} upstream_ms="),
        format!(
            " GET /v1/a 200 upstream=emoji outcome=stale reason=token-rejected token={fp} upstream_ms="
        ),
        " GET /other 404 upstream=- outcome=client reason=no-route token=- upstream_ms=- total_ms=".into(),
    ] {
        let n = lines.iter().filter(|l| l.contains(&want)).count();
        assert_eq!(n, 1, "{n} lines with `{want}`:\n{out}");
    }
    for l in &lines {
        let time = l.split(' ').next().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "time in {l}");
        let total: f64 = l
            .rsplit_once("total_ms=")
            .and_then(|(_, v)| v.split(' ').next()?.parse().ok())
            .unwrap_or(-1.0);
        assert!(total >= 0.0, "{l}");
    }
    assert_no_secrets(&out);

    // JSON: every stdout line is one access record.
    let (out, json) = tokio::task::spawn_blocking(move || {
        let out = stopped_stdout(&mut json);
        (out, json)
    })
    .await
    .unwrap();
    let records: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{out}")))
        .collect();
    assert_eq!(records.len(), 3, "{out}\n{}", json.logs());
    for r in &records {
        let obj = r.as_object().unwrap();
        for k in [
            "time",
            "method",
            "path",
            "status",
            "upstream",
            "outcome",
            "reason",
            "token",
            "upstream_ms",
            "total_ms",
            "pick",
            "queued_ms",
        ] {
            assert!(obj.contains_key(k), "{k} missing in {r}");
        }
        assert_eq!(r["method"], "GET", "{r}");
        assert!(r["total_ms"].as_f64().is_some_and(|v| v >= 0.0), "{r}");
        assert!(
            humantime::parse_rfc3339(r["time"].as_str().unwrap()).is_ok(),
            "{r}"
        );
    }
    let find = |path: &str, outcome: &str| {
        let found: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["path"] == path && r["outcome"] == outcome)
            .collect();
        assert_eq!(found.len(), 1, "{path} {outcome}:\n{out}");
        found[0]
    };
    let (fresh, stale, unrouted) = (
        find("/v1/a", "ok"),
        find("/v1/a", "stale"),
        find("/other", "client"),
    );
    assert_eq!(fresh["path"], "/v1/a", "{fresh}");
    assert_eq!(fresh["status"], 200);
    assert_eq!(fresh["upstream"], "emoji");
    assert_eq!(fresh["outcome"], "ok");
    assert_eq!(fresh["reason"], "-");
    assert_eq!(fresh["token"].as_str(), Some(fp.as_str()));
    // (That upstream_ms is a number here is checked by
    // `access_log_records_upstream_time`.)
    assert_eq!(stale["path"], "/v1/a", "{stale}");
    assert_eq!(stale["status"], 200);
    assert_eq!(stale["outcome"], "stale");
    assert_eq!(stale["reason"], "token-rejected");
    assert_eq!(stale["token"].as_str(), Some(fp.as_str()));
    assert_eq!(unrouted["path"], "/other", "{unrouted}");
    assert_eq!(unrouted["status"], 404);
    assert_eq!(unrouted["upstream"], "-");
    assert_eq!(unrouted["token"], "-");
    assert!(unrouted["upstream_ms"].is_null(), "{unrouted}");
    assert_no_secrets(&out);

    // Off (the default): the same requests leave stdout without access lines.
    let (out, off) = tokio::task::spawn_blocking(move || {
        let out = stopped_stdout(&mut off);
        (out, off)
    })
    .await
    .unwrap();
    assert_eq!(up_o.request_count(), 2, "the scenario did not run");
    assert!(
        !out.contains("upstream=") && !out.contains("/v1/a") && !out.contains("\"path\""),
        "access lines while log.access is off:\n{out}"
    );
    assert_no_secrets(&off.logs());
}

/// `upstream_ms` is the upstream's time to the response header: a number on
/// every line for which an upstream was asked (fresh, or a 401 answered
/// from the cache), `-` / null only when none was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_records_upstream_time() {
    let route = r#"    match: { path_prefix: "/v1" }"#;
    let (up_p, gate_p) = gated();
    let (up_j, gate_j) = gated();
    let mut plain = start(up_p.port, route, "log: { access: true, format: plain }");
    let mut json = start(up_j.port, route, "log: { access: true, format: json }");
    access_scenario(&plain, &gate_p).await;
    access_scenario(&json, &gate_j).await;
    let (out_p, out_j, plain, json) = tokio::task::spawn_blocking(move || {
        let p = stopped_stdout(&mut plain);
        let j = stopped_stdout(&mut json);
        (p, j, plain, json)
    })
    .await
    .unwrap();

    let lines: Vec<&str> = out_p.lines().filter(|l| l.contains(" upstream=")).collect();
    assert_eq!(lines.len(), 3, "{out_p}\n{}", plain.logs());
    for l in lines.iter().filter(|l| l.contains(" GET /v1/a ")) {
        let ms: Option<f64> = l
            .split_once(" upstream_ms=")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|v| v.parse().ok());
        assert!(ms.is_some_and(|v| v >= 0.0), "no upstream time in: {l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" GET /other 404 ") && l.contains(" upstream_ms=- ")),
        "{out_p}"
    );

    let records: Vec<serde_json::Value> = out_j
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{out_j}\n{}", json.logs());
    for r in records.iter().filter(|r| r["path"] == "/v1/a") {
        assert!(
            r["upstream_ms"].as_f64().is_some_and(|v| v >= 0.0),
            "no upstream time in: {r}"
        );
    }
    assert!(
        records
            .iter()
            .any(|r| r["path"] == "/other" && r["upstream_ms"].is_null()),
        "{out_j}"
    );
}
