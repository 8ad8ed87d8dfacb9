//! AWS SigV4 signing through the real binary, verified by an independent
//! implementation: `sigv4_upstream.py` recomputes every signature with
//! botocore's `SigV4Auth` and answers 403 `SignatureDoesNotMatch` (or the
//! code a test tells it) when it differs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{client, wait_for, wait_for_async, Graceway, TestDir};

const REGION: &str = "eu-west-1";
const SERVICE: &str = "execute-api";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The Python mock AWS upstream, killed on drop.
struct AwsMock {
    child: Child,
    port: u16,
    keys: PathBuf,
    _dir: TestDir,
}

impl AwsMock {
    /// Starts the mock with `keys` (see `sigv4_upstream.py`); it binds port
    /// 0 and writes the port it got, so no port can be taken in between.
    fn start(keys: Value) -> AwsMock {
        let dir = TestDir::new();
        let keys_file = dir.write("keys.json", &keys.to_string());
        let port_file = dir.file("port");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/sigv4_upstream.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(&port_file)
            .arg(&keys_file)
            .args([REGION, SERVICE])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.file("mock.log")).unwrap())
            .spawn()
            .expect("python3 (with botocore) runs the mock upstream");
        let port = wait_for("the mock upstream's port", Duration::from_secs(30), || {
            std::fs::read_to_string(&port_file)
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        AwsMock {
            child,
            port,
            keys: keys_file,
            _dir: dir,
        }
    }

    fn set_keys(&self, keys: Value) {
        let tmp = self.keys.with_extension("tmp");
        std::fs::write(&tmp, keys.to_string()).unwrap();
        std::fs::rename(&tmp, &self.keys).unwrap();
    }
}

impl Drop for AwsMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One upstream block: `name` at `/{name}/`, signing with `extra` sigv4
/// keys, its `tokens` list as written.
fn upstream(mock: &AwsMock, name: &str, extra: &str, tokens: &str) -> String {
    format!(
        r#"
  - name: {name}
    url: "http://127.0.0.1:{port}"
    match: {{ path_prefix: "/{name}/" }}
    credentials:
      sigv4: {{ region: {REGION}, service: {SERVICE}{extra} }}
      tokens: {tokens}
"#,
        port = mock.port
    )
}

fn config(upstreams: &[String]) -> String {
    format!(
        r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}" }}
pid_file: "{{dir}}/graceway.pid"
server: {{ graceful_shutdown_timeout: 1s }}
upstreams:{}"#,
        upstreams.concat()
    )
}

/// `credential_process` JSON.
fn process_json(akid: &str, secret: &str, token: Option<&str>) -> String {
    let mut v = json!({ "Version": 1, "AccessKeyId": akid, "SecretAccessKey": secret });
    if let Some(t) = token {
        v["SessionToken"] = json!(t);
        v["Expiration"] = json!("2099-01-01T00:00:00Z");
    }
    v.to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("graceway answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({ "raw": text })),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_signed_as_botocore_computes_it() {
    let plain_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let session_secret = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY";
    let session_token = "FwoGZXIvYXdzEXAMPLE+session/token==";
    let mock = AwsMock::start(json!({
        "AKIDPLAIN": { "secret": plain_secret },
        "ASIASESSION": { "secret": session_secret, "token": session_token },
    }));
    let dir = TestDir::new();
    dir.write("key_id", "AKIDPLAIN\n");
    dir.write("secret", &format!("{plain_secret}\n"));
    dir.write(
        "session.json",
        &process_json("ASIASESSION", session_secret, Some(session_token)),
    );
    let parts = r#"[ { aws: { access_key_id: { file: "{dir}/key_id" }, secret_access_key: { file: "{dir}/secret" } } } ]"#;
    let session = r#"[ { file: "{dir}/session.json" } ]"#;
    let g = Graceway::start_in(
        dir,
        &config(&[
            upstream(&mock, "plain", "", parts),
            upstream(&mock, "session", "", session),
            upstream(&mock, "unsigned", ", payload: unsigned", parts),
        ]),
    );
    let c = client();
    let ok = |(status, body): &(u16, Value)| {
        assert_eq!(*status, 200, "{body}\n{}", g.logs());
        assert_eq!(body["verified"], true, "{body}");
    };

    // GET without a body: the empty string's hash; the client's own
    // signature headers are replaced.
    let got = send(
        c.get(g.url("/plain/items"))
            .header("Authorization", "AWS4-HMAC-SHA256 forged")
            .header("X-Amz-Security-Token", "forged"),
    )
    .await;
    ok(&got);
    assert_eq!(got.1["akid"], "AKIDPLAIN");
    assert_eq!(got.1["token"], false);
    assert_eq!(got.1["payload"], EMPTY_SHA256);

    // POST with a body: its SHA-256 is signed, Content-Type too.
    let body = r#"{"name":"graceway","n":1}"#;
    let got = send(
        c.post(g.url("/plain/items"))
            .header("Content-Type", "application/json")
            .header("X-Amz-Target", "Graceway.Put")
            .body(body),
    )
    .await;
    ok(&got);
    let sha = sha256_hex(body.as_bytes());
    assert_eq!(got.1["payload"], sha.as_str());
    assert_eq!(got.1["body_bytes"], body.len());
    let signed = got.1["signed_headers"].to_string();
    assert!(
        signed.contains("content-type") && signed.contains("x-amz-target"),
        "{signed}"
    );

    // Reserved characters in the query.
    let got = send(c.get(g.url("/plain/q?a=b%20c&x=%2F&y=~"))).await;
    ok(&got);
    assert_eq!(got.1["path"], "/plain/q?a=b%20c&x=%2F&y=~");

    // A session token from credential_process JSON.
    let got = send(c.get(g.url("/session/items"))).await;
    ok(&got);
    assert_eq!(
        (&got.1["akid"], &got.1["token"]),
        (&json!("ASIASESSION"), &json!(true))
    );

    // payload: unsigned streams the body as UNSIGNED-PAYLOAD.
    let got = send(c.put(g.url("/unsigned/object")).body("streamed bytes")).await;
    ok(&got);
    assert_eq!(got.1["payload"], "UNSIGNED-PAYLOAD");

    // A signed body over the replay buffer is refused before it goes up.
    let (status, _) = send(c.post(g.url("/plain/big")).body(vec![b'x'; 70 * 1024])).await;
    assert_eq!(status, 413);

    // The secrets appear nowhere: logs, /status, metrics.
    let st = g.status().await;
    let fp = st["upstreams"][0]["tokens"][0]["fingerprint"]
        .as_str()
        .unwrap_or("");
    assert!(fp.starts_with("sha256:"), "{st}");
    assert_eq!(
        st["upstreams"][1]["tokens"][0]["expires_at"], "2099-01-01T00:00:00Z",
        "{st}"
    );
    let seen = format!("{}{}{}", g.logs(), st, g.metrics().await);
    for s in [plain_secret, session_secret, session_token] {
        assert!(!seen.contains(s), "a secret leaked:\n{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_credential_file_signs_the_next_requests() {
    let mock = AwsMock::start(json!({
        "AKIDFIRST": { "secret": "first/secret" },
        "AKIDSECOND": { "secret": "second/secret" },
    }));
    let dir = TestDir::new();
    dir.write("aws.json", &process_json("AKIDFIRST", "first/secret", None));
    let g = Graceway::start_in(
        dir,
        &config(&[upstream(
            &mock,
            "api",
            "",
            r#"[ { file: "{dir}/aws.json" } ]"#,
        )]),
    );
    let c = client();
    let (status, body) = send(c.get(g.url("/api/x"))).await;
    assert_eq!(
        (status, &body["akid"]),
        (200, &json!("AKIDFIRST")),
        "{body}"
    );
    let before = g.status().await["upstreams"][0]["tokens"][0]["fingerprint"].clone();

    g.dir.write(
        "aws.json",
        &process_json("AKIDSECOND", "second/secret", None),
    );
    wait_for_async(
        "a request signed with the new key",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            let url = g.url("/api/x");
            async move {
                let (status, body) = send(c.get(url)).await;
                assert_eq!(status, 200, "{body}");
                (body["akid"] == "AKIDSECOND").then_some(())
            }
        },
    )
    .await;
    let after = g.status().await["upstreams"][0]["tokens"][0]["fingerprint"].clone();
    assert_ne!(before, after, "the fingerprint covers the whole credential");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_fails_over_to_the_standby() {
    let mock = AwsMock::start(json!({
        "AKIDPRIMARY": { "secret": "primary/secret", "refuse": "ExpiredTokenException" },
        "AKIDSTANDBY": { "secret": "standby/secret" },
    }));
    let dir = TestDir::new();
    dir.write(
        "primary.json",
        &process_json("AKIDPRIMARY", "primary/secret", None),
    );
    dir.write(
        "standby.json",
        &process_json("AKIDSTANDBY", "standby/secret", None),
    );
    let tokens = r#"[ { file: "{dir}/primary.json" }, { file: "{dir}/standby.json" } ]"#;
    let g = Graceway::start_in(dir, &config(&[upstream(&mock, "api", "", tokens)]));
    let c = client();

    let (status, body) = send(c.get(g.url("/api/x"))).await;
    assert_eq!(
        (status, &body["akid"]),
        (200, &json!("AKIDSTANDBY")),
        "{body}\n{}",
        g.logs()
    );
    let st = g.status().await;
    let t = &st["upstreams"][0]["tokens"];
    assert_eq!(t[0]["state"], "rejected", "{st}");
    assert_eq!(t[1]["state"], "active", "{st}");
    // Later requests go straight to the standby.
    let (status, body) = send(c.post(g.url("/api/y")).body("a body replayed")).await;
    assert_eq!(
        (status, &body["akid"]),
        (200, &json!("AKIDSTANDBY")),
        "{body}"
    );

    // A wrong secret on the standby too: botocore's signature differs, the
    // mock says SignatureDoesNotMatch, and nothing is left to sign with.
    mock.set_keys(json!({
        "AKIDPRIMARY": { "secret": "primary/secret", "refuse": "ExpiredTokenException" },
        "AKIDSTANDBY": { "secret": "not/the/secret" },
    }));
    let (status, body) = send(c.get(g.url("/api/z"))).await;
    assert_eq!(status, 503, "{body}");
    let st = g.status().await;
    assert_eq!(st["upstreams"][0]["tokens"][1]["state"], "rejected", "{st}");
}
