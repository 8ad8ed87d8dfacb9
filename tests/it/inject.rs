//! Routing and token injection through the real binary.

use crate::support::{client, Graceway, MockReply, MockUpstream, TestDir};

fn config(up: &MockUpstream, inject: &str) -> String {
    format!(
        r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}" }}
pid_file: "{{dir}}/graceway.pid"
server: {{ graceful_shutdown_timeout: 1s }}
upstreams:
  - name: emoji
    url: "http://127.0.0.1:{port}"
    match: {{ path_prefix: "/v1/" }}
    credentials:
      inject: {inject}
      tokens:
        - {{ file: "{{dir}}/token" }}
"#,
        port = up.port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_injection_replaces_client_credential_and_sets_host() {
    let up = MockUpstream::start(|_| MockReply::ok(r#"{"ok":true}"#));
    let dir = TestDir::new();
    dir.write("token", "tok-header-1\n");
    let g = Graceway::start_in(
        dir,
        &config(&up, r#"{ header: Authorization, prefix: "Bearer " }"#),
    );
    let c = client();

    let r = c.get(g.url("/v1/emojis")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    let r = c
        .get(g.url("/v1/emojis?x=1"))
        .header("Authorization", "Bearer client-forged")
        .header("Host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    for rec in &reqs {
        assert_eq!(rec.bearer(), Some("tok-header-1"), "{rec:?}");
        assert_eq!(rec.header_count("authorization"), 1, "{rec:?}");
        assert_eq!(
            rec.header("host"),
            Some(format!("127.0.0.1:{}", up.port).as_str())
        );
    }
    assert_eq!(reqs[1].target, "/v1/emojis?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_header_without_prefix() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = Graceway::start_with_token("key-123", &config(&up, "{ header: X-Api-Key }"));
    let r = client()
        .get(g.url("/v1/a"))
        .header("x-api-key", "client-value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = &up.requests()[0];
    assert_eq!(rec.header("x-api-key"), Some("key-123"));
    assert_eq!(rec.header_count("x-api-key"), 1);
    assert!(rec.header("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_injection_replaces_client_parameter() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = Graceway::start_with_token("q tok/+1", &config(&up, "{ query: access_token }"));
    let c = client();
    let r = c
        .get(g.url("/v1/search?q=smile&access_token=client&page=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    let r = c.get(g.url("/v1/plain")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let reqs = up.requests();
    assert_eq!(
        reqs[0].target,
        "/v1/search?q=smile&page=2&access_token=q%20tok%2F%2B1"
    );
    assert_eq!(reqs[1].target, "/v1/plain?access_token=q%20tok%2F%2B1");
    assert!(reqs[0].header("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_requests_get_404_json_and_never_leave() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = Graceway::start_with_token("tok-404", &config(&up, "{ header: Authorization }"));
    let c = client();
    for path in ["/", "/v2/x", "/v1"] {
        let r = c.get(g.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "no-route");
        assert!(body["error"].is_string());
    }
    // An absolute-form request for a host graceway does not serve is
    // refused (400): never an open proxy.
    let r = tokio::task::spawn_blocking({
        let port = g.listen;
        move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET http://example.com/v2/x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        }
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(up.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_prefix() {
    let a = MockUpstream::start(|_| MockReply::ok("a"));
    let b = MockUpstream::start(|_| MockReply::ok("b"));
    let c_up = MockUpstream::start(|_| MockReply::ok("c"));
    let dir = TestDir::new();
    dir.write("token", "tok-route");
    let yaml = format!(
        r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}" }}
pid_file: "{{dir}}/graceway.pid"
upstreams:
  - name: a
    url: "http://127.0.0.1:{}"
    match: {{ path_prefix: "/" }}
    credentials: {{ tokens: [ {{ file: "{{dir}}/token" }} ] }}
  - name: b
    url: "http://127.0.0.1:{}"
    match: {{ path_prefix: "/v1/special/" }}
    credentials: {{ tokens: [ {{ file: "{{dir}}/token" }} ] }}
  - name: c
    url: "http://127.0.0.1:{}"
    match: {{ host: "emoji.internal", path_prefix: "/" }}
    credentials: {{ tokens: [ {{ file: "{{dir}}/token" }} ] }}
"#,
        a.port, b.port, c_up.port
    );
    let g = Graceway::start_in(dir, &yaml);
    let cl = client();
    let get = |path: &'static str, host: Option<&'static str>| {
        let mut r = cl.get(g.url(path));
        if let Some(h) = host {
            r = r.header("Host", h);
        }
        async move { r.send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(get("/v1/x", None).await, "a");
    assert_eq!(get("/v1/special/x", None).await, "b");
    assert_eq!(get("/v1/x", Some("EMOJI.internal:8080")).await, "c");
    assert_eq!(get("/v1/special/x", Some("emoji.internal")).await, "b");
}
