//! HTTP/2 to the upstream (`upstreams[].http`) against a real nginx
//! speaking h2: over TLS by ALPN (`auto`, `h2`), with prior knowledge on
//! cleartext (`h2`), and HTTP/1.1 when asked (`h1`). Failover to the
//! standby token and stale answers work as over HTTP/1.1.

use crate::support::config::HEAD;
use crate::support::mock::TlsFixture;
use crate::support::nginx::Nginx;
use crate::support::{client, Graceway, TestDir};

/// A vendor in nginx: accepts only `Bearer tok-h2-standby` (the primary is
/// revoked), answers with the protocol it spoke, and a 503 while the file
/// `down` exists in its folder. `listen` is the `listen` directive's tail.
/// Also the CA that signed its certificate.
async fn vendor(dir: &TestDir, listen: &str) -> (Nginx, String) {
    let fx = TlsFixture::new();
    dir.write("cert.pem", &fx.cert_pem);
    dir.write("key.pem", &fx.key_pem);
    let d = dir.path().display();
    let http = format!(
        r#"
    server {{
        listen 127.0.0.1:{{port}} {listen};
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        default_type application/json;
        location / {{
            if (-f {d}/down) {{
                return 503 '{{"error":"down"}}';
            }}
            if ($http_authorization != "Bearer tok-h2-standby") {{
                add_header WWW-Authenticate 'Bearer error="invalid_token"' always;
                return 401 '{{"error":"revoked"}}';
            }}
            add_header Cache-Control "max-age=60" always;
            return 200 '{{"proto":"$server_protocol","path":"$uri"}}';
        }}
    }}
"#
    );
    (Nginx::start(dir.path(), &http).await, fx.ca_pem)
}

fn graceway(scheme: &str, port: u16, http: &str, ca_pem: &str) -> Graceway {
    let dir = TestDir::new();
    dir.write("ca.pem", ca_pem);
    let tls = if scheme == "https" {
        r#"tls: { ca_file: "{dir}/ca.pem" }"#
    } else {
        ""
    };
    dir.write("primary", "tok-h2-primary\n");
    dir.write("standby", "tok-h2-standby\n");
    Graceway::start_in(
        dir,
        &format!(
            r#"{HEAD}upstreams:
  - name: emoji
    url: "{scheme}://127.0.0.1:{port}"
    http: {http}
    timeouts: {{ connect: 1s, read: 2s }}
    {tls}
    credentials:
      tokens:
        - {{ file: "{{dir}}/primary" }}
        - {{ file: "{{dir}}/standby" }}
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_with_failover_and_stale_answers() {
    let ndir = TestDir::new();
    let (nginx, ca) = vendor(&ndir, "ssl http2").await;
    for http in ["auto", "h2"] {
        let g = graceway("https", nginx.port, http, &ca);
        let r = client()
            .get(g.url("/v1/emojis/smile"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{http}: {}", g.logs());
        // The primary was refused over h2 and the standby answered: one
        // client request, failover inside it.
        assert_eq!(
            r.text().await.unwrap(),
            r#"{"proto":"HTTP/2.0","path":"/v1/emojis/smile"}"#,
            "{http}"
        );
        let st = g.status().await;
        assert_eq!(st["upstreams"][0]["tokens"][0]["state"], "rejected", "{st}");

        // The vendor fails: the copy answers.
        ndir.write("down", "");
        let r = client()
            .get(g.url("/v1/emojis/smile"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-graceway-degraded"].to_str().unwrap(),
            "upstream-5xx"
        );
        assert!(r.text().await.unwrap().contains("HTTP/2.0"));
        std::fs::remove_file(ndir.file("down")).unwrap();
    }
    let log = std::fs::read_to_string(ndir.file("access.log")).unwrap();
    assert!(log.contains("HTTP/2.0\" 401"), "{log}");
    assert!(log.contains("HTTP/2.0\" 200"), "{log}");
    assert!(!log.contains("HTTP/1.1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_when_asked_and_h2_with_prior_knowledge_on_cleartext() {
    let tls_dir = TestDir::new();
    let (tls, ca) = vendor(&tls_dir, "ssl http2").await;
    let g = graceway("https", tls.port, "h1", &ca);
    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert!(r.text().await.unwrap().contains(r#""proto":"HTTP/1.1""#));

    let plain_dir = TestDir::new();
    let (plain, ca) = vendor(&plain_dir, "http2").await;
    let g = graceway("http", plain.port, "h2", &ca);
    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"proto":"HTTP/2.0","path":"/v1/x"}"#
    );
}
