//! HTTPS upstreams: certificates verified against `tls.ca_file`, SNI from
//! the URL host, a wrong CA refused, `verify: false` warned about.

use crate::support::mock::TlsFixture;
use crate::support::{client, Graceway, MockReply, MockUpstream, TestDir};

fn config(port: u16, tls: &str) -> String {
    format!(
        r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}" }}
pid_file: "{{dir}}/graceway.pid"
upstreams:
  - name: secure
    url: "https://127.0.0.1:{port}"
    tls: {tls}
    timeouts: {{ connect: 2s, read: 5s }}
    credentials:
      tokens:
        - {{ file: "{{dir}}/token" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_verified_with_ca_file() {
    let fx = TlsFixture::new();
    let up = MockUpstream::start_tls(|_| MockReply::ok(r#"{"tls":true}"#), fx.server.clone());
    let dir = TestDir::new();
    dir.write("token", "tok-tls\n");
    dir.write("ca.pem", &fx.ca_pem);
    let g = Graceway::start_in(dir, &config(up.port, r#"{ ca_file: "{dir}/ca.pem" }"#));
    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert_eq!(r.text().await.unwrap(), r#"{"tls":true}"#);
    let rec = &up.requests()[0];
    assert_eq!(rec.bearer(), Some("tok-tls"));
    assert_eq!(
        rec.header("host"),
        Some(format!("127.0.0.1:{}", up.port).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_refused_and_token_never_sent() {
    let fx = TlsFixture::new();
    let other = TlsFixture::new();
    let up = MockUpstream::start_tls(|_| MockReply::ok("{}"), fx.server.clone());
    let dir = TestDir::new();
    dir.write("token", "tok-tls-wrong\n");
    dir.write("ca.pem", &other.ca_pem);
    let g = Graceway::start_in(dir, &config(up.port, r#"{ ca_file: "{dir}/ca.pem" }"#));
    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(
        up.request_count(),
        0,
        "a request reached an unverified upstream"
    );

    // Without ca_file the system roots apply, which do not know the test CA.
    let g2 = Graceway::start_with_token("tok-tls-wrong\n", &config(up.port, "{ verify: true }"));
    let r = client().get(g2.url("/v1/x")).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(up.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_false_connects_and_warns() {
    let fx = TlsFixture::new();
    let up = MockUpstream::start_tls(|_| MockReply::ok("{}"), fx.server.clone());
    let g = Graceway::start_with_token("tok-tls-noverify\n", &config(up.port, "{ verify: false }"));
    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert!(g.logs().contains("tls.verify is false"), "{}", g.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_speaks_https_verified_against_its_ca() {
    let fx = TlsFixture::new();
    let hook = MockUpstream::start_tls(|_| MockReply::ok(""), fx.server.clone());
    // The vendor revokes the token: a token event and an upstream event.
    let up = MockUpstream::start(|_| MockReply::revoked(401, "{}"));
    let dir = TestDir::new();
    dir.write("token", "tok-hook\n");
    dir.write("ca.pem", &fx.ca_pem);
    let cfg = crate::support::EmojiConfig::new(up.port)
        .top(&format!(
            "alerts: {{ webhook: \"https://127.0.0.1:{}/hook\", webhook_ca_file: \"{{dir}}/ca.pem\" }}",
            hook.port
        ))
        .build();
    let g = Graceway::start_in(dir, &cfg);
    // The state watch takes its baseline in its first tick.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    client().get(g.url("/v1/x")).send().await.unwrap();
    let reqs = crate::support::wait_for_async(
        "a webhook POST over TLS",
        std::time::Duration::from_secs(10),
        || async { (!hook.requests().is_empty()).then(|| hook.requests()) },
    )
    .await;
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].target, "/hook");
    let v: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert!(v["events"].as_array().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(!String::from_utf8_lossy(&reqs[0].body).contains("tok-hook"));
}
