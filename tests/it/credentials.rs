//! Credentials of several values through the real binary: two headers
//! from a structured token (a JSON file, or `fields` each from its own
//! source), and HTTP Basic. Each reaches the vendor exactly, fails over,
//! rotates, and is never shown: not in logs, `/status`, metrics, errors or
//! an answer that echoes it.

use base64::Engine;

use crate::support::config::HEAD;
use crate::support::{client, Graceway, MockReply, MockUpstream, TestDir};

const KID_A: &str = "kid-primary-7f3a";
const SECRET_A: &str = "sec-primary-1c9e44d0";
const KID_B: &str = "kid-standby-2b8c";
const SECRET_B: &str = "sec-standby-93af10e2";
const SECRET_A2: &str = "sec-rotated-55d2e7b1";

fn two_headers(port: u16) -> String {
    format!(
        r#"{HEAD}
upstreams:
  - name: search
    url: "http://127.0.0.1:{port}"
    match: {{ path_prefix: "/v1/" }}
    stale: {{ scrub_bodies: true }}
    credentials:
      inject:
        - {{ header: X-Api-Key, from: key_id }}
        - {{ header: X-Api-Secret, from: secret }}
      tokens:
        - {{ file: "{{dir}}/primary.json" }}
        - fields:
            key_id: {{ file: "{{dir}}/standby_key_id" }}
            secret: {{ env: STANDBY_SECRET }}
"#
    )
}

/// Everything graceway shows about itself, to grep.
async fn shown(g: &Graceway) -> String {
    let c = client();
    let mut seen = String::new();
    for p in ["/status", "/metrics", "/readyz"] {
        seen += &c
            .get(g.admin_url(p))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    seen + &g.logs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_headers_from_a_structured_token_reach_the_vendor_fail_over_and_rotate() {
    // The vendor refuses the primary's secret and echoes what it was sent.
    let up = MockUpstream::start(|r| {
        let secret = r.header("x-api-secret").unwrap_or("").to_string();
        let reply = match secret.as_str() {
            SECRET_A => MockReply::revoked(401, r#"{"error":"invalid key"}"#),
            _ => MockReply::ok(&format!(r#"{{"you_sent":"{secret}"}}"#)),
        };
        reply.header("X-Debug-Key", r.header("x-api-key").unwrap_or(""))
    });
    let dir = TestDir::new();
    dir.write(
        "primary.json",
        &format!("{{\n  \"key_id\": \"{KID_A}\",\n  \"secret\": \"{SECRET_A}\"\n}}\n"),
    );
    dir.write("standby_key_id", &format!("{KID_B}\n"));
    let g = Graceway::spawn_in(dir, &two_headers(up.port), &[("STANDBY_SECRET", SECRET_B)]);
    g.wait_healthy();
    let c = client();

    let r = c
        .get(g.url("/v1/search?q=a"))
        .header("X-Api-Key", "client-forged")
        .header("X-Api-Secret", "client-forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert_eq!(
        r.headers()["x-debug-key"],
        "[token]",
        "an echoed key id is scrubbed"
    );
    let body = r.text().await.unwrap();
    assert!(
        !body.contains(SECRET_B),
        "an echoed secret is scrubbed (`scrub_bodies`): {body}"
    );

    let reqs = up.requests();
    assert_eq!(
        reqs.len(),
        2,
        "the primary, refused, then the standby: {reqs:?}"
    );
    for (rec, (kid, secret)) in reqs.iter().zip([(KID_A, SECRET_A), (KID_B, SECRET_B)]) {
        assert_eq!(rec.header("x-api-key"), Some(kid), "{rec:?}");
        assert_eq!(rec.header("x-api-secret"), Some(secret), "{rec:?}");
        assert_eq!(rec.header_count("x-api-key"), 1, "{rec:?}");
        assert_eq!(rec.header_count("x-api-secret"), 1, "{rec:?}");
        assert!(rec.header("authorization").is_none(), "{rec:?}");
    }

    // Fingerprints cover the whole credential: the canonical JSON.
    let status = g.status().await;
    let tokens = &status["upstreams"][0]["tokens"];
    let fp_a =
        graceway::tokens::fingerprint(&format!(r#"{{"key_id":"{KID_A}","secret":"{SECRET_A}"}}"#));
    assert_eq!(tokens[0]["fingerprint"], fp_a.as_str(), "{tokens}");
    assert_eq!(tokens[0]["state"], "rejected", "{tokens}");
    // The source is shown as its kinds and paths, never a value.
    let source = tokens[1]["source"].as_str().unwrap();
    assert!(source.starts_with("fields(key_id=file:"), "{source}");
    assert!(source.ends_with(",secret=env:STANDBY_SECRET)"), "{source}");

    // Rotation: a new primary file is read, and used.
    let before = g.reload_attempt().await;
    g.dir.write(
        "primary.json",
        &format!(r#"{{"secret": "{SECRET_A2}", "key_id": "{KID_A}"}}"#),
    );
    let r = g.wait_reload(before).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = c.get(g.url("/v1/search?q=b")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.requests().last().unwrap().header("x-api-secret"),
        Some(SECRET_A2)
    );

    // A broken file is refused and the rotated token stays.
    for bad in [
        format!(r#"{{"key_id": "{KID_A}"}}"#),
        format!(r#"{{"key_id": "{KID_A}", "secret": "{SECRET_A}"#),
        format!(r#"{{"key_id": "{KID_A}", "secret": "a\r\nX-Injected: 1"}}"#),
    ] {
        let before = g.reload_attempt().await;
        g.dir.write("primary.json", &bad);
        let r = g.wait_reload(before).await;
        assert_eq!(r["ok"], false, "{bad}: {r}");
        let r = c.get(g.url("/v1/search?q=c")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let last = up.requests().last().unwrap().clone();
        assert_eq!(last.header("x-api-secret"), Some(SECRET_A2), "{bad}");
        assert!(last.header("x-injected").is_none());
    }

    let seen = shown(&g).await;
    assert!(seen.contains(&fp_a), "fingerprints are shown");
    for v in [KID_A, SECRET_A, KID_B, SECRET_B, SECRET_A2] {
        assert!(!seen.contains(v), "`{v}` shown:\n{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_basic_is_sent_whole_and_never_shown() {
    const PASSWORD: &str = "pw-legacy:9d1f 77";
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("reporting:{PASSWORD}"));
    let expected = format!("Basic {encoded}");
    let up = MockUpstream::start(|r| {
        // Echoes the credential, as a debugging endpoint would.
        MockReply::ok(&format!(
            r#"{{"authorization":"{}"}}"#,
            r.header("authorization").unwrap_or("")
        ))
    });
    let g = Graceway::start_with_token(
        PASSWORD,
        &format!(
            r#"{HEAD}
upstreams:
  - name: legacy
    url: "http://127.0.0.1:{}"
    stale: {{ scrub_bodies: true }}
    credentials:
      inject: {{ basic: {{ user: reporting }} }}
      tokens: [ {{ file: "{{dir}}/token" }} ]
"#,
            up.port
        ),
    );
    let c = client();
    for _ in 0..3 {
        let r = c
            .get(g.url("/reports"))
            .basic_auth("attacker", Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", g.logs());
        let body = r.text().await.unwrap();
        assert!(
            !body.contains(&encoded),
            "an echoed credential is scrubbed: {body}"
        );
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    for rec in &reqs {
        assert_eq!(
            rec.header("authorization"),
            Some(expected.as_str()),
            "{rec:?}"
        );
        assert_eq!(rec.header_count("authorization"), 1);
    }
    let seen = shown(&g).await;
    assert!(seen.contains(&graceway::tokens::fingerprint(PASSWORD)));
    for v in [PASSWORD, encoded.as_str()] {
        assert!(!seen.contains(v), "`{v}` shown:\n{seen}");
    }
}
