//! `graceway demo`: one process with the demo emoji API ([`api`]), graceway
//! in front of it, and a walkthrough that runs each step and prints what a
//! user would type and see.
//!
//! The walkthrough is also a self-check: each step states what it expects,
//! and `graceway demo --exit` exits non-zero when any expectation failed.

pub mod api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::ShutdownWatch;
use pingora::services::background::{BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;

use crate::app::App;
use crate::net::outbound::{self, Answer as Reply};
use crate::server::{self, RunOptions};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub api: SocketAddr,
    /// Exit after the walkthrough (status 0 when every step went as expected).
    pub exit: bool,
    /// Folder for the demo's config, token files and pid file.
    pub dir: Option<PathBuf>,
}

/// Writes the demo's files and runs everything until Ctrl-C (or the end of
/// the walkthrough with `exit`).
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = opts.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("graceway-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let first = api::mint_token(0);
    let standby = api::mint_token(1000);
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{first}\n"))?;
    std::fs::write(dir.join("token.standby"), format!("{standby}\n"))?;
    let config_path = dir.join("graceway.yaml");
    std::fs::write(&config_path, demo_config(&opts, &dir))?;

    let loaded = crate::config::load(&config_path)?;
    crate::server::logging::init(&crate::config::LogConfig {
        level: log::LevelFilter::Warn,
        ..loaded.config.log.clone()
    });
    let app = server::start_app(loaded)?;
    let (mut srv, services) = server::build_server(
        &app,
        &RunOptions {
            config: config_path.clone(),
            ..RunOptions::default()
        },
    )?;

    let mut api_service = Service::new(
        "demo emoji API".to_string(),
        HttpServer::new_app(api::DemoApi::new(
            &[&first, &standby],
            dir.join("token.next"),
        )),
    );
    api_service.add_tcp(&opts.api.to_string());
    let api_handle = srv.add_service(api_service);

    let walk = GenBackgroundService::new(
        "demo walkthrough".to_string(),
        Arc::new(Walkthrough {
            app,
            opts: opts.clone(),
            dir: dir.clone(),
            config_path,
        }),
    );
    let walk_handle = srv.add_service(walk);
    walk_handle.add_dependency(&services.proxy);
    walk_handle.add_dependency(&services.admin);
    walk_handle.add_dependency(&api_handle);
    srv.run_forever();
}

fn demo_config(o: &DemoOptions, dir: &Path) -> String {
    format!(
        r#"# Written by `graceway demo`. Edit and `graceway reload -c {cfg}` to experiment.
listen: "{listen}"
admin: {{ listen: "{admin}" }}
pid_file: {dir}/graceway.pid
server: {{ graceful_shutdown_timeout: 1s }}
upstreams:
  - name: emoji
    url: "http://{api}"
    match: {{ path_prefix: "/v1/" }}
    timeouts: {{ connect: 1s, read: 2s }}
    health: {{ open_after: 2, retry_after: 1s, max_retry_after: 4s }}
    credentials:
      inject: {{ header: Authorization, prefix: "Bearer " }}
      tokens:
        - {{ file: {dir}/token }}
        - {{ file: {dir}/token.standby }}
      expires_warning: 72h
    stale:
      on: [401, 403, 429, 5xx, timeout, connect_error]
      max_stale: 24h
cache:
  memory_bytes: 16MiB
  max_object_bytes: 1MiB
"#,
        cfg = dir.join("graceway.yaml").display(),
        listen = o.listen,
        admin = o.admin,
        api = o.api,
        dir = dir.display(),
    )
}

struct Walkthrough {
    app: Arc<App>,
    opts: DemoOptions,
    dir: PathBuf,
    config_path: PathBuf,
}

/// Counts expectations met and missed.
#[derive(Default)]
struct Score {
    failed: Vec<String>,
}

impl Score {
    fn expect(&mut self, ok: bool, what: &str) {
        if ok {
            println!("   ✔ {what}");
        } else {
            println!("   ✘ expected: {what}");
            self.failed.push(what.to_string());
        }
    }
}

fn show(r: &Result<Reply, String>) {
    match r {
        Err(e) => println!("   error: {e}"),
        Ok(r) => {
            println!("   HTTP {}", r.status);
            for h in ["x-graceway-degraded", "cache-status", "age", "retry-after"] {
                if let Some(v) = r.header(h) {
                    println!("   {h}: {v}");
                }
            }
            let body = r.text();
            let body = body.trim();
            let short: String = body.chars().take(160).collect();
            if !short.is_empty() {
                println!(
                    "   {short}{}",
                    if body.chars().count() > 160 {
                        " …"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

const T: Duration = Duration::from_secs(10);

/// One request of the walkthrough, to its own listeners.
async fn fetch(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    outbound::request(method, url, headers, b"", T, outbound::Tls::default())
        .await
        .map_err(|e| e.to_string())
}

impl Walkthrough {
    fn gw(&self, path: &str) -> String {
        format!("http://{}{path}", self.opts.listen)
    }
    fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.opts.api)
    }
    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.opts.admin)
    }

    async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let hs: String = headers
            .iter()
            .map(|(k, v)| format!(" -H '{k}: {v}'"))
            .collect();
        println!("   $ curl -i{hs} {url}");
        let r = fetch("GET", url, headers).await;
        show(&r);
        r
    }

    async fn post(&self, url: &str) -> Result<Reply, String> {
        println!("   $ curl -X POST {url}");
        let r = fetch("POST", url, &[]).await;
        show(&r);
        r
    }

    async fn last_token_seen(&self) -> String {
        fetch("GET", &self.api("/demo/stats"), &[])
            .await
            .ok()
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .and_then(|v| v["last_token"].as_str().map(str::to_string))
            .unwrap_or_else(|| "none".into())
    }

    async fn status_table(&self) -> Option<String> {
        let r = fetch("GET", &self.admin("/status"), &[]).await.ok()?;
        let v: crate::admin::status::Status = serde_json::from_slice(&r.body).ok()?;
        Some(crate::cli::render_status(&v))
    }

    async fn script(&self) -> Score {
        let mut s = Score::default();
        // The services have started; wait for their sockets to accept.
        for addr in [self.opts.listen, self.opts.admin, self.opts.api] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while tokio::net::TcpStream::connect(addr).await.is_err() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let token_file = self.dir.join("token");
        let (fp0, fp1) = {
            let g = self.app.live.load();
            let t = &g.upstreams[0].tokens.tokens;
            (t[0].fingerprint.clone(), t[1].fingerprint.clone())
        };
        println!();
        println!("graceway demo: an emoji API that needs a token, and graceway in front of it");
        println!("   emoji API (the vendor)   http://{}", self.opts.api);
        println!("   graceway (your sidecar)  http://{}", self.opts.listen);
        println!("   graceway admin           http://{}", self.opts.admin);
        println!("   config and token files   {}", self.dir.display());
        println!("   tokens                   primary {fp0}, standby {fp1}");
        println!();

        println!("1. Your service asks graceway for an emoji, with no token of its own.");
        let r = self.get(&self.gw("/v1/emojis/smile"), &[]).await;
        s.expect(
            r.as_ref().is_ok_and(|r| r.status == 200),
            "200 from the API through graceway",
        );
        let seen = self.last_token_seen().await;
        println!("   The API received token {seen}: graceway injected its primary token.");
        s.expect(seen == fp0, "graceway injected its primary token");
        println!();

        println!("2. A client that sends its own Authorization header cannot override the token.");
        let r = self
            .get(
                &self.gw("/v1/emojis/rocket"),
                &[("Authorization", "Bearer stolen-or-stale")],
            )
            .await;
        let seen = self.last_token_seen().await;
        s.expect(
            r.as_ref().is_ok_and(|r| r.status == 200) && seen == fp0,
            "the client's header was replaced by graceway's token",
        );
        println!();

        println!(
            "3. Weeks before, the vendor announces in-band that this API version is deprecated:"
        );
        println!("   its answers now carry Deprecation, Sunset and Link headers. No proxy reads them; graceway does.");
        let _ = self.post(&self.api("/demo/deprecate")).await;
        let r = self.get(&self.gw("/v1/emojis/heart"), &[]).await;
        s.expect(
            r.as_ref().is_ok_and(|r| r.status == 200),
            "200: the API still answers",
        );
        // The state watch reports a new notice within a second.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        println!(
            "   $ graceway status --admin http://{}   (the lines below the token table)",
            self.opts.admin
        );
        match self.status_table().await {
            Some(t) => {
                let notes: Vec<&str> = t.lines().filter(|l| l.contains("DEPRECATED")).collect();
                for line in &notes {
                    println!("   {line}");
                }
                s.expect(
                    !notes.is_empty() && t.contains("SUNSET at"),
                    "graceway shows the deprecation and the sunset date",
                );
            }
            None => s.expect(false, "the status table is readable"),
        }
        println!("   It is logged and sent to the webhook once, and alerts fire from");
        println!("   graceway_upstream_deprecated and graceway_upstream_sunset_timestamp_seconds.");
        println!();

        println!(
            "4. Then the vendor deprecates the primary token. graceway fails over to the standby:"
        );
        println!("   the user gets a normal, fresh answer.");
        let _ = self
            .post(&self.api(&format!("/demo/revoke?fingerprint={fp0}")))
            .await;
        let r = self.get(&self.gw("/v1/emojis/fire"), &[]).await;
        let seen = self.last_token_seen().await;
        s.expect(
            r.as_ref()
                .is_ok_and(|r| r.status == 200 && r.header("x-graceway-degraded").is_none())
                && seen == fp1,
            "200 fresh, sent again with the standby token",
        );
        println!();

        println!(
            "5. Then the standby dies too (this is how the 16-hour outage began). Users keep their"
        );
        println!("   emoji: graceway answers from the last good copy, says so, and stops sending dead tokens.");
        let _ = self.post(&self.api("/demo/revoke")).await;
        let r = self.get(&self.gw("/v1/emojis/smile"), &[]).await;
        s.expect(
            r.as_ref().is_ok_and(|r| {
                r.status == 200 && r.header("x-graceway-degraded") == Some("token-rejected")
            }),
            "200 from the last good copy with X-Graceway-Degraded: token-rejected",
        );
        println!(
            "   A path never fetched before has no copy: a clear 503, never the vendor's 401 body."
        );
        let r = self.get(&self.gw("/v1/emojis/tada"), &[]).await;
        s.expect(
            r.as_ref()
                .is_ok_and(|r| r.status == 503 && r.text().contains("token-rejected")),
            "503 JSON naming the reason",
        );
        println!();

        println!("6. Operators see it at once: status, readiness and metrics name the upstream and the tokens.");
        println!("   $ graceway status --admin http://{}", self.opts.admin);
        match self.status_table().await {
            Some(t) => {
                for line in t.lines() {
                    println!("   {line}");
                }
                s.expect(
                    t.contains("rejected") && t.contains(&fp1),
                    "the status table shows the rejected tokens",
                );
            }
            None => s.expect(false, "the status table is readable"),
        }
        println!(
            "   (also: curl http://{0}/readyz   curl http://{0}/metrics)",
            self.opts.admin
        );
        println!();

        println!("7. The vendor issues a new token; the secret lands in the watched token file.");
        let _ = self.post(&self.api("/demo/rotate")).await;
        let next = self.dir.join("token.next");
        println!("   $ mv {} {}", next.display(), token_file.display());
        let moved = std::fs::rename(&next, &token_file);
        s.expect(moved.is_ok(), "token file replaced");
        let gen_before = self.app.live.load().number;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.app.live.load().number == gen_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rec = self.app.last_reload.load();
        println!("   graceway noticed the file change: {}", rec.message);
        s.expect(
            self.app.live.load().number > gen_before,
            "the new token is live without a restart",
        );
        println!(
            "   (by hand: graceway reload -c {}   or   curl -X POST http://{}/reload)",
            self.config_path.display(),
            self.opts.admin
        );
        println!();

        println!("8. Recovery: fresh answers again, no degradation header.");
        let r = self.get(&self.gw("/v1/emojis/tada"), &[]).await;
        s.expect(
            r.as_ref()
                .is_ok_and(|r| r.status == 200 && r.header("x-graceway-degraded").is_none()),
            "200 fresh from the API with the new token",
        );
        println!();

        println!("9. Another day, the vendor's API hangs. The first 2 requests wait for the 2 s read timeout,");
        println!("   then the health breaker opens and every answer comes from the cache at once.");
        let _ = self.post(&self.api("/demo/hang")).await;
        for i in 1..=3 {
            let t0 = Instant::now();
            let r = self.get(&self.gw("/v1/emojis/smile"), &[]).await;
            let ms = t0.elapsed().as_millis();
            println!("   answered in {ms} ms");
            if i == 3 {
                s.expect(
                    r.as_ref().is_ok_and(|r| {
                        r.status == 200
                            && r.header("x-graceway-degraded") == Some("upstream-timeout")
                    }) && ms < 500,
                    "the breaker is open: a stale answer in well under the read timeout",
                );
            }
        }
        println!();

        println!("10. The vendor recovers; the next trial request closes the breaker.");
        let _ = self.post(&self.api("/demo/recover")).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut fresh = false;
        while Instant::now() < deadline && !fresh {
            tokio::time::sleep(Duration::from_millis(500)).await;
            fresh = fetch("GET", &self.gw("/v1/emojis/smile"), &[])
                .await
                .is_ok_and(|r| r.status == 200 && r.header("x-graceway-degraded").is_none());
        }
        let r = self.get(&self.gw("/v1/emojis/smile"), &[]).await;
        s.expect(
            fresh
                && r.as_ref()
                    .is_ok_and(|r| r.header("x-graceway-degraded").is_none()),
            "fresh answers again after the breaker closed",
        );
        println!();
        s
    }
}

#[async_trait]
impl BackgroundService for Walkthrough {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let score = self.script().await;
        if score.failed.is_empty() {
            println!("Every step went as expected.");
        } else {
            println!("{} step(s) did not go as expected:", score.failed.len());
            for f in &score.failed {
                println!("   - {f}");
            }
        }
        if self.opts.exit {
            let _ = std::fs::remove_file(self.dir.join("graceway.pid"));
            std::process::exit(i32::from(!score.failed.is_empty()));
        }
        println!();
        println!("graceway keeps running; try the curl lines above (the vendor's controls:");
        println!(
            "   curl -X POST {}   {}   {}   {} ).",
            self.api("/demo/revoke"),
            self.api("/demo/rotate"),
            self.api("/demo/fail?status=503"),
            self.api("/demo/recover")
        );
        println!("Stop with Ctrl-C.");
        let _ = shutdown.changed().await;
    }
}
