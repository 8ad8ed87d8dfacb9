//! End to end with a real nginx in front, configured by the SHIPPED
//! `conf/nginx/graceway.conf` (only its ports and log path are rewritten):
//! a fresh answer, then a stale one with its degradation headers passed
//! through, nginx's access log format, and the `/graceway-ready` location.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::nginx::Nginx;

use crate::support::{client, wait_for_async, Graceway, MockReply, MockUpstream, TestDir};

const TOKEN: &str = "tok-nginx-1";

/// Replaces every `from` with `to`, failing loudly when the shipped file
/// no longer contains `from` (so a change there cannot silently turn this
/// into a test of something else).
fn replace_required(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "conf/nginx/graceway.conf no longer contains `{from}`; update tests/nginx.rs"
    );
    let out = text.replace(from, to);
    assert!(!out.contains(from) || to.contains(from));
    out
}

/// The shipped snippet with graceway's ports, nginx's port (`{port}`,
/// which [`Nginx::start`] fills in) and the log folder substituted.
fn snippet(graceway: &Graceway, dir: &Path) -> String {
    let shipped_path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/nginx/graceway.conf");
    let shipped = std::fs::read_to_string(shipped_path)
        .unwrap_or_else(|e| panic!("reading {shipped_path}: {e}"));
    assert_eq!(
        shipped.matches("listen 8088;").count(),
        1,
        "the shipped server block should have exactly one `listen 8088;`"
    );
    let s = replace_required(
        &shipped,
        "127.0.0.1:8080",
        &format!("127.0.0.1:{}", graceway.listen),
    );
    let s = replace_required(&s, "listen 8088;", "listen 127.0.0.1:{port};");
    let s = replace_required(
        &s,
        "127.0.0.1:9180",
        &format!("127.0.0.1:{}", graceway.admin),
    );
    let s = replace_required(&s, "/var/log/nginx/", &format!("{}/", dir.display()));
    // The directives the test relies on, after substitution.
    for want in [
        "location = /graceway-ready {".to_string(),
        format!("proxy_pass http://127.0.0.1:{}/readyz;", graceway.admin),
        format!("server 127.0.0.1:{} ", graceway.listen),
        "listen 127.0.0.1:{port};".to_string(),
        format!("access_log {}/graceway.access.log graceway;", dir.display()),
    ] {
        assert!(s.contains(&want), "generated snippet lacks `{want}`:\n{s}");
    }
    s
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_the_shipped_snippet_passes_stale_answers_and_readiness() {
    // The upstream accepts TOKEN until the test switches it to 401.
    let accepted = Arc::new(Mutex::new(TOKEN.to_string()));
    let a = accepted.clone();
    let up = MockUpstream::start(move |r| {
        if r.bearer() == Some(a.lock().unwrap().as_str()) {
            MockReply::ok(&format!(r#"{{"emoji":"smile","path":"{}"}}"#, r.path()))
                .header("Cache-Control", "max-age=60")
        } else {
            MockReply::revoked(401, r#"{"error":"token deprecated"}"#)
        }
    });
    let dir = TestDir::new();
    dir.write("token", &format!("{TOKEN}\n"));
    let g = Graceway::start_in(
        dir,
        &format!(
            r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}" }}
pid_file: "{{dir}}/graceway.pid"
server: {{ graceful_shutdown_timeout: 1s }}
upstreams:
  - name: emoji
    url: "http://127.0.0.1:{}"
    timeouts: {{ connect: 1s, read: 2s }}
    credentials:
      tokens:
        - {{ file: "{{dir}}/token" }}
"#,
            up.port
        ),
    );
    let ndir = TestDir::new();
    let nginx = Nginx::start(ndir.path(), &snippet(&g, ndir.path())).await;
    let c = client();

    // Readiness through nginx while healthy.
    let r = c.get(nginx.url("/graceway-ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["upstreams"][0]["state"], "healthy", "{body}");

    // Fresh through nginx.
    let r = c.get(nginx.url("/v1/emojis/smile")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-graceway-degraded").is_none());
    assert_eq!(header(&r, "cache-status"), Some("graceway; fwd=miss"));
    let fresh = r.text().await.unwrap();
    assert_eq!(fresh, r#"{"emoji":"smile","path":"/v1/emojis/smile"}"#);
    let rec = up.requests().last().unwrap().clone();
    assert_eq!(rec.bearer(), Some(TOKEN), "graceway injected the token");

    // The upstream turns the token away: the stored copy comes back through
    // nginx with graceway's degradation headers intact.
    *accepted.lock().unwrap() = "<none>".into();
    let r = c.get(nginx.url("/v1/emojis/smile")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-graceway-degraded"), Some("token-rejected"));
    let cs = header(&r, "cache-status").unwrap_or_default().to_string();
    assert!(cs.contains("fwd=stale"), "Cache-Status: {cs}");
    assert!(cs.contains("detail=token-rejected"), "Cache-Status: {cs}");
    assert!(header(&r, "age").is_some());
    assert_eq!(r.text().await.unwrap(), fresh);
    assert_eq!(up.requests().last().unwrap().bearer(), Some(TOKEN));

    // /graceway-ready is graceway's admin /readyz: degraded-but-serving is
    // 200. (graceway's data port would have answered /readyz with a 503:
    // no usable token and no copy for that path.)
    let direct = c.get(g.admin_url("/readyz")).send().await.unwrap();
    let direct_status = direct.status();
    let direct_body: serde_json::Value = direct.json().await.unwrap();
    assert_eq!(direct_status, 200, "{direct_body}");
    let r = c.get(nginx.url("/graceway-ready")).send().await.unwrap();
    assert_eq!(r.status(), direct_status);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["upstreams"][0]["state"], "degraded", "{body}");
    assert_eq!(body["upstreams"], direct_body["upstreams"]);
    // A path without a copy gets graceway's own 503 through nginx, unretried.
    let before = up.request_count();
    let r = c.get(nginx.url("/v1/emojis/none")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(header(&r, "retry-after").is_some());
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["reason"], "token-rejected", "{err}");
    assert_eq!(up.request_count(), before, "the 503 reached the upstream");

    // nginx's access log, in the shipped `graceway` format, names the
    // degradation (and `-` for the fresh answer).
    let log_path = ndir.path().join("graceway.access.log");
    let log = wait_for_async(
        "nginx to log the stale answer",
        Duration::from_secs(10),
        || {
            let p = log_path.clone();
            async move {
                let log = std::fs::read_to_string(p).ok()?;
                (log.lines().count() >= 3).then_some(log)
            }
        },
    )
    .await;
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines[0].contains("\"GET /v1/emojis/smile HTTP/1.1\" 200")
            && lines[0].contains("degraded=\"-\""),
        "{log}"
    );
    assert!(
        lines[1].contains("\"GET /v1/emojis/smile HTTP/1.1\" 200")
            && lines[1].contains("degraded=\"token-rejected\"")
            && lines[1].contains("fwd=stale"),
        "{log}"
    );
    assert!(
        lines[2].contains("\"GET /v1/emojis/none HTTP/1.1\" 503"),
        "{log}"
    );
    assert!(
        !log.contains("/graceway-ready"),
        "the readiness location has access_log off:\n{log}"
    );
    assert!(!log.contains(TOKEN));
    drop(nginx);
}
