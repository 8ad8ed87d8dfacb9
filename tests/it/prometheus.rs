//! A real Prometheus (Debian's `prometheus`) with the shipped alert rules,
//! scraping a real graceway: when the vendor revokes the token the
//! token-rejected alert fires, naming the upstream and the token's
//! fingerprint, and it resolves after `graceway reload` with a good token.
//! This proves the rules and the metric names agree in practice, not only
//! in promtool's synthetic series.

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
        let dir = TestDir::new();
        let rules =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/alerts/graceway.rules.yml");
        let cfg = dir.write(
            "prometheus.yml",
            &format!(
                "global: {{ scrape_interval: 5s, evaluation_interval: 5s }}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: graceway\n    static_configs: [{{ targets: [\"127.0.0.1:{admin_port}\"] }}]\n",
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
