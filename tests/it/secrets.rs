//! A token value never appears in a log line, status page, metric, error
//! body or response header. Drives a scenario through every path that
//! names tokens, then greps everything graceway said.

use crate::support::{client, run_cli, Graceway, MockReply, MockUpstream, TestDir};

const PRIMARY: &str = "sekrit-primary-4a7d9c";
const SECOND: &str = "sekrit-second-99f1b2";
const ADMIN: &str = "sekrit-admin-77aa01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_value_anywhere() {
    let up = MockUpstream::start(|r| {
        if r.bearer() == Some(SECOND) {
            MockReply::ok(r#"{"ok":true}"#)
        } else {
            MockReply::revoked(401, r#"{"error":"invalid_token"}"#)
        }
    });
    let dir = TestDir::new();
    dir.write("token", &format!("{PRIMARY}\n"));
    dir.write("admin", ADMIN);
    let yaml = format!(
        r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}", token_file: "{{dir}}/admin" }}
pid_file: "{{dir}}/graceway.pid"
upstreams:
  - name: emoji
    url: "http://127.0.0.1:{}"
    credentials:
      tokens:
        - {{ file: "{{dir}}/token" }}
"#,
        up.port
    );
    let g = Graceway::start_in(dir, &yaml);
    let c = client();
    let mut seen = String::new();
    let record = |r: reqwest::Response| async move {
        let mut s = format!("{:?}\n", r.headers());
        s.push_str(&r.text().await.unwrap_or_default());
        s
    };
    // Rejected token: 401 from upstream, then a degraded answer.
    for _ in 0..3 {
        seen += &record(c.get(g.url("/v1/a")).send().await.unwrap()).await;
    }
    // Bad reload (control characters), then a good rotation.
    std::fs::write(g.dir.file("token"), format!("{PRIMARY}\r\nX: y")).unwrap();
    let r = c
        .post(g.admin_url("/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    seen += &record(r).await;
    g.dir.write("token", SECOND);
    let r = c
        .post(g.admin_url("/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    seen += &record(r).await;
    seen += &record(c.get(g.url("/v1/a")).send().await.unwrap()).await;
    let r = c
        .post(g.admin_url("/reload"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    seen += &record(r).await;
    for p in ["/status", "/readyz", "/metrics", "/healthz"] {
        seen += &record(c.get(g.admin_url(p)).send().await.unwrap()).await;
    }
    let (_, out, err) = tokio::task::spawn_blocking({
        let a = g.admin_url("");
        move || run_cli(&["status", "--admin", &a])
    })
    .await
    .unwrap();
    seen += &out;
    seen += &err;
    let (_, out, err) = tokio::task::spawn_blocking({
        let cfg = g.config.clone();
        move || run_cli(&["check", "-c", cfg.to_str().unwrap()])
    })
    .await
    .unwrap();
    seen += &out;
    seen += &err;
    seen += &g.logs();

    assert!(
        seen.contains(&graceway::tokens::fingerprint(SECOND)),
        "fingerprints should be shown"
    );
    for secret in [PRIMARY, SECOND, ADMIN] {
        assert!(
            !seen.contains(secret),
            "token value `{secret}` leaked:\n{seen}"
        );
    }
    // The second token did reach the upstream: the check is not vacuous.
    assert!(up.requests().iter().any(|r| r.bearer() == Some(SECOND)));
}
