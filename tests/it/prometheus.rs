//! A real Prometheus (Debian's `prometheus`) with the shipped alert rules,
//! scraping a real graceway: when the vendor revokes the token the
//! token-rejected alert fires, naming the upstream and the token's
//! fingerprint, and it resolves after `graceway reload` with a good token.
//! This proves the rules and the metric names agree in practice, not only
//! in promtool's synthetic series.
//!
//! The Grafana dashboard (`conf/grafana/graceway.json`) against the same
//! real Prometheus: after traffic, a failover, an outage served from copies
//! and a reload, every panel's query (its variables substituted) parses and
//! returns at least one series, and so do the variables' own queries.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    client, free_port, run_cli, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream,
    TestDir,
};

struct Prometheus {
    child: Child,
    port: u16,
    _dir: TestDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes graceway's admin port every 5 s and evaluates the shipped
    /// rules every 5 s.
    fn start(admin_port: u16) -> Prometheus {
        Prometheus::start_every(admin_port, "5s")
    }

    /// Scrapes and evaluates every `interval`.
    fn start_every(admin_port: u16, interval: &str) -> Prometheus {
        let dir = TestDir::new();
        let rules =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/alerts/graceway.rules.yml");
        let cfg = dir.write(
            "prometheus.yml",
            &format!(
                "global: {{ scrape_interval: {interval}, evaluation_interval: {interval} }}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: graceway\n    static_configs: [{{ targets: [\"127.0.0.1:{admin_port}\"] }}]\n",
                rules.display()
            ),
        );
        let port = free_port();
        let log = std::fs::File::create(dir.file("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.file("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (apt-get install prometheus; ./dev test installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The alerts named `name` in the given state.
    async fn alerts(&self, name: &str, state: &str) -> Vec<serde_json::Value> {
        let Ok(r) = client()
            .get(format!("http://127.0.0.1:{}/api/v1/alerts", self.port))
            .send()
            .await
        else {
            return Vec::new();
        };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == state)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_rejected_alert_fires_in_a_real_prometheus_and_resolves_after_reload() {
    let accepted = Arc::new(Mutex::new("tok-prom-old".to_string()));
    let a = accepted.clone();
    let up = MockUpstream::start(move |r| {
        if r.bearer() == Some(a.lock().unwrap().as_str()) {
            MockReply::ok("{}").header("Cache-Control", "max-age=60")
        } else {
            MockReply::revoked(401, "{}")
        }
    });
    let dir = TestDir::new();
    dir.write("token", "tok-prom-old");
    let g = Graceway::start_in(
        dir,
        &EmojiConfig::new(up.port)
            .health("{ retry_after: 30s, max_retry_after: 60s }")
            .build(),
    );
    let prom = Prometheus::start(g.admin);
    wait_for_async(
        "Prometheus to scrape graceway",
        Duration::from_secs(30),
        || async {
            let r = client()
                .get(format!(
                    "http://127.0.0.1:{}/api/v1/query?query=graceway_build_info",
                    prom.port
                ))
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            (!v["data"]["result"].as_array()?.is_empty()).then_some(())
        },
    )
    .await;
    assert_eq!(
        client().get(g.url("/v1/a")).send().await.unwrap().status(),
        200
    );

    // The vendor revokes the token.
    *accepted.lock().unwrap() = "tok-prom-new".into();
    let revoked_at = Instant::now();
    client().get(g.url("/v1/a")).send().await.unwrap();
    let firing = wait_for_async(
        "GracewayTokenRejected to fire",
        Duration::from_secs(60),
        || async {
            let a = prom.alerts("GracewayTokenRejected", "firing").await;
            (!a.is_empty()).then_some(a)
        },
    )
    .await;
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(60), "fired after {took:?}");
    let labels = &firing[0]["labels"];
    assert_eq!(labels["upstream"], "emoji", "{labels}");
    assert_eq!(labels["token"], "0");
    assert_eq!(
        labels["fingerprint"],
        graceway::tokens::fingerprint("tok-prom-old")
    );
    assert_eq!(labels["severity"], "critical");
    assert!(firing[0]["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains(&graceway::tokens::fingerprint("tok-prom-old")));

    // The operator installs the new token and reloads: the alert resolves.
    std::fs::write(g.dir.file("token"), "tok-prom-new").unwrap();
    let (code, out, err) = run_cli(&["reload", "-c", g.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for_async(
        "GracewayTokenRejected to resolve",
        Duration::from_secs(60),
        || async {
            let firing = prom.alerts("GracewayTokenRejected", "firing").await;
            let pending = prom.alerts("GracewayTokenRejected", "pending").await;
            (firing.is_empty() && pending.is_empty()).then_some(())
        },
    )
    .await;
    assert_eq!(
        client().get(g.url("/v1/a")).send().await.unwrap().status(),
        200
    );
}

impl Prometheus {
    /// `/api/v1/query` at now: (status, number of series, the answer).
    async fn query(&self, expr: &str) -> (String, usize, serde_json::Value) {
        let sent = client()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", expr)])
            .send()
            .await;
        let v: serde_json::Value = match sent {
            // Not listening yet: the callers poll with a deadline.
            Err(e) => return (format!("unreachable: {e}"), 0, serde_json::Value::Null),
            Ok(r) => r.json().await.unwrap_or_default(),
        };
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        (v["status"].as_str().unwrap_or("-").to_string(), n, v)
    }
}

/// Each panel's title and query expressions, rows' nested panels included.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            out.push((title, t["expr"].as_str().unwrap_or("").to_string()));
        }
    }
    out
}

/// A query with the dashboard's variables as Grafana would send them for
/// upstream `emoji` and tokens 0 and 1.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$upstream", "emoji")
        .replace("$token", "0|1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_in_a_real_prometheus() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/grafana/graceway.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the dashboard is JSON");

    // Importable as is: a datasource input and the three variables.
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    let input = &dash["__inputs"][0];
    assert_eq!(input["type"], "datasource");
    assert_eq!(input["pluginId"], "prometheus");
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let mut ids = std::collections::HashSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id {} twice",
            p["id"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{} has no query",
                p["title"]
            );
        }
    }

    // A vendor with quotas and a deprecation notice; a standby token with an
    // expiry; the fleet tier on a real Redis.
    let accepted = Arc::new(Mutex::new(vec![
        "tok-dash-a".to_string(),
        "tok-dash-b".to_string(),
    ]));
    let a = accepted.clone();
    let sunset =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(21 * 86400));
    let up = MockUpstream::start(move |r| {
        if !r
            .bearer()
            .is_some_and(|b| a.lock().unwrap().iter().any(|t| t == b))
        {
            return MockReply::revoked(401, "{}");
        }
        MockReply::ok("{}")
            .header("Cache-Control", "max-age=60")
            .header("X-RateLimit-Limit", "100")
            .header("X-RateLimit-Remaining", "42")
            .header("Deprecation", "true")
            .header("Sunset", &sunset)
    });
    let redis = crate::support::redis::Redis::start(&[]);
    let expires = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(365 * 86400),
    );
    let dir = TestDir::new();
    dir.write("token", "tok-dash-a");
    dir.write("token.standby", "tok-dash-b");
    let g = Graceway::start_in(
        dir,
        &EmojiConfig::new(up.port)
            .health("{ retry_after: 30s, max_retry_after: 60s }")
            .tokens(&format!(
                "        - {{ file: \"{{dir}}/token\" }}\n        - {{ file: \"{{dir}}/token.standby\", expires_at: \"{expires}\" }}"
            ))
            .top(&format!("cache: {{ redis: {{ url: \"{}\" }} }}", redis.url()))
            .build(),
    );
    let prom = Prometheus::start_every(g.admin, "1s");

    // Traffic, a reload, a failover, then an outage served from copies
    // (and a 503 for a path without one).
    for p in ["/v1/a", "/v1/b", "/v1/a"] {
        assert_eq!(client().get(g.url(p)).send().await.unwrap().status(), 200);
    }
    // A reload (before the outage: a reload gives refused tokens another
    // chance).
    let (code, out, err) = run_cli(&["reload", "-c", g.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    accepted.lock().unwrap().retain(|t| t != "tok-dash-a");
    assert_eq!(
        client().get(g.url("/v1/b")).send().await.unwrap().status(),
        200
    );
    accepted.lock().unwrap().clear();
    let r = client().get(g.url("/v1/a")).send().await.unwrap();
    assert!(r.headers().contains_key("x-graceway-degraded"), "{r:?}");
    assert_eq!(
        client()
            .get(g.url("/v1/none"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    // Prometheus has seen the outage, with samples enough for a rate.
    wait_for_async(
        "Prometheus to see the outage",
        Duration::from_secs(60),
        || async {
            let (_, rejected, _) = prom
                .query(r#"graceway_token_state{upstream="emoji",token="1",state="rejected"} == 1"#)
                .await;
            let (_, samples, v) = prom
                .query("count_over_time(graceway_build_info[1m]) >= 5")
                .await;
            (rejected == 1 && samples == 1).then_some(v)
        },
    )
    .await;

    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut failed = Vec::new();
    for (title, expr) in &queries {
        let q = substitute(expr);
        assert!(!q.contains('$'), "{title}: a variable left in {q}");
        let (status, series, answer) = prom.query(&q).await;
        if status != "success" || series == 0 {
            failed.push(format!(
                "{title}: {q}\n  -> {status}, {series} series: {answer}"
            ));
        }
    }
    // The variables' own queries: label_values(<selector>, <label>).
    for name in ["upstream", "token"] {
        let def = var(name)["definition"].as_str().unwrap().to_string();
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("${name}: {def}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let (status, series, answer) = prom.query(&substitute(selector.trim())).await;
        let has_label = answer["data"]["result"]
            .as_array()
            .is_some_and(|r| r.iter().all(|s| s["metric"][label.trim()].is_string()));
        if status != "success" || series == 0 || !has_label {
            failed.push(format!(
                "${name}: {def} -> {status}, {series} series: {answer}"
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} dashboard queries failed:\n{}",
        failed.len(),
        queries.len() + 2,
        failed.join("\n")
    );
}
