//! gRPC through graceway's h2c listener (`server.h2c`), with grpcio on
//! both ends (`grpc_peer.py`, Debian's python3-grpcio): the token injected
//! as `authorization` metadata, `UNAUTHENTICATED` failing over to the
//! standby on the same call, a refusal in the trailers moving the next
//! call, HTTP/1.1 on the same port, and the listener's guard against
//! h2c clients that stall or hold the cap.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    client, raw_exchange, wait_for, wait_for_async, Graceway, MockReply, MockUpstream, TestDir,
};

const PRIMARY: &str = "grpc-primary-7f3a9c51d0";
const STANDBY: &str = "grpc-standby-2b8e41c6f4";

/// Debian's interpreter, where `python3-grpcio` installs (a `python3`
/// earlier on `PATH`, such as pyenv's, may lack it).
const PYTHON: &str = "/usr/bin/python3";

fn peer_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/grpc_peer.py")
}

/// The grpcio mock upstream, killed on drop.
struct GrpcMock {
    child: Child,
    port: u16,
    seen: PathBuf,
    _dir: TestDir,
}

impl GrpcMock {
    /// Accepts `good` tokens, refuses any other; binds port 0 and writes
    /// the port it got, so no port can be taken in between.
    fn start(good: &[&str]) -> GrpcMock {
        let dir = TestDir::new();
        let tokens = dir.write("tokens.json", &json!({ "good": good }).to_string());
        let port_file = dir.file("port");
        let seen = dir.file("seen.log");
        let child = Command::new(PYTHON)
            .arg(peer_script())
            .arg("serve")
            .args([&port_file, &tokens, &seen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.file("mock.log")).unwrap())
            .spawn()
            .expect("/usr/bin/python3 (with python3-grpcio) runs the mock upstream");
        let port = wait_for("the gRPC mock's port", Duration::from_secs(30), || {
            std::fs::read_to_string(&port_file)
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        GrpcMock {
            child,
            port,
            seen,
            _dir: dir,
        }
    }

    /// Every call the mock saw, as `<method> <authorization>`.
    fn seen(&self) -> Vec<String> {
        std::fs::read_to_string(&self.seen)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for GrpcMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A grpcio client's call to graceway, started in the background.
fn spawn_call(port: u16, method: &str, payload: &str) -> Child {
    Command::new(PYTHON)
        .arg(peer_script())
        .args(["call", &port.to_string(), method, payload])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("/usr/bin/python3 runs the gRPC client")
}

/// Its result line: `{"code", "details", "replies"}`.
fn result(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

fn call(port: u16, method: &str, payload: &str) -> Value {
    result(spawn_call(port, method, payload))
}

/// graceway with the gRPC upstream (`http: h2`, two tokens) under
/// `/graceway.test.Echo/` and an HTTP/1.1 mock under `/v1/`; `server`
/// keys added to `h2c: true`.
fn start(mock: &GrpcMock, rest: &MockUpstream, server: &str) -> Graceway {
    let dir = TestDir::new();
    dir.write("primary", &format!("{PRIMARY}\n"));
    dir.write("standby", &format!("{STANDBY}\n"));
    let cfg = format!(
        r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}" }}
pid_file: "{{dir}}/graceway.pid"
server: {{ graceful_shutdown_timeout: 1s, h2c: true{server} }}
log: {{ access: true }}
upstreams:
  - name: grpc
    url: "http://127.0.0.1:{grpc}"
    http: h2
    match: {{ path_prefix: "/graceway.test.Echo/" }}
    timeouts: {{ connect: 1s, read: 20s }}
    credentials:
      tokens:
        - {{ file: "{{dir}}/primary" }}
        - {{ file: "{{dir}}/standby" }}
  - name: rest
    url: "http://127.0.0.1:{rest}"
    match: {{ path_prefix: "/v1/" }}
    credentials: none
"#,
        grpc = mock.port,
        rest = rest.port,
    );
    Graceway::start_in(dir, &cfg)
}

fn rest_mock() -> MockUpstream {
    MockUpstream::start(|_| MockReply::ok("{\"rest\":true}"))
}

/// Neither token value in graceway's log, `/status` or `/metrics`.
async fn assert_no_token_anywhere(g: &Graceway) {
    let everything = format!("{}{}{}", g.logs(), g.status().await, g.metrics().await);
    for t in [PRIMARY, STANDBY] {
        assert!(
            !everything.contains(t),
            "a token value is out:\n{everything}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_meets_unauthenticated_and_is_answered_with_the_standby() {
    let mock = GrpcMock::start(&[STANDBY]);
    let rest = rest_mock();
    let g = start(&mock, &rest, "");

    let r = call(g.listen, "Say", "hi");
    assert_eq!(r["code"], "OK", "{r}\n{}", g.logs());
    assert_eq!(r["replies"], json!(["echo:hi"]), "{r}");
    // One call: the primary refused (trailers-only UNAUTHENTICATED), the
    // same call sent again with the standby.
    assert_eq!(
        mock.seen(),
        [
            format!("Say Bearer {PRIMARY}"),
            format!("Say Bearer {STANDBY}")
        ]
    );
    let st = g.status().await;
    let tokens = &st["upstreams"][0]["tokens"];
    assert_eq!(tokens[0]["state"], "rejected", "{st:#}");
    assert_eq!(tokens[1]["state"], "active", "{st:#}");

    // The next call goes to the standby at once.
    let r = call(g.listen, "Say", "again");
    assert_eq!(r["replies"], json!(["echo:again"]), "{r}");
    assert_eq!(mock.seen().len(), 3);
    assert_eq!(mock.seen()[2], format!("Say Bearer {STANDBY}"));
    assert_no_token_anywhere(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_the_trailers_reaches_the_client_and_moves_the_next_call() {
    let mock = GrpcMock::start(&[STANDBY]);
    let rest = rest_mock();
    let g = start(&mock, &rest, "");

    // A message, then UNAUTHENTICATED in the trailers: too late to retry,
    // the client gets the vendor's status after the message.
    let r = call(g.listen, "Late", "x");
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}\n{}", g.logs());
    assert_eq!(r["replies"], json!(["partial"]), "{r}");
    assert_eq!(mock.seen(), [format!("Late Bearer {PRIMARY}")]);
    let st = g.status().await;
    assert_eq!(
        st["upstreams"][0]["tokens"][0]["state"], "rejected",
        "{st:#}"
    );

    let r = call(g.listen, "Say", "next");
    assert_eq!(r["replies"], json!(["echo:next"]), "{r}");
    assert_eq!(mock.seen()[1], format!("Say Bearer {STANDBY}"));
    assert_eq!(mock.seen().len(), 2, "the primary was not tried again");
    assert_no_token_anywhere(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_is_a_bare_403_and_the_client_gets_the_vendors_status() {
    let mock = GrpcMock::start(&[PRIMARY, STANDBY]);
    let rest = rest_mock();
    let g = start(&mock, &rest, "");

    // PERMISSION_DENIED says nothing of the credential being invalid: the
    // token is only suspect, and the client reads the vendor's status (a
    // gRPC client cannot read graceway's JSON 503 or a stale copy).
    let r = call(g.listen, "Deny", "x");
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}\n{}", g.logs());
    let seen = mock.seen();
    assert_eq!(seen[0], format!("Deny Bearer {PRIMARY}"), "{seen:?}");
    let st = g.status().await;
    let tokens = &st["upstreams"][0]["tokens"];
    assert_ne!(tokens[0]["state"], "rejected", "{st:#}");
    // A call the vendor allows still goes through.
    let r = call(g.listen, "Say", "ok");
    assert_eq!(r["replies"], json!(["echo:ok"]), "{r}");
    assert_no_token_anywhere(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_too_big_to_replay_gets_the_vendors_status_and_moves_the_next() {
    let mock = GrpcMock::start(&[STANDBY]);
    let rest = rest_mock();
    let g = start(&mock, &rest, "");

    // 100 KiB: past the 64 KiB retry buffer, so not sent again; the
    // client gets the vendor's UNAUTHENTICATED, not graceway's JSON.
    let r = call(g.listen, "Say", "big:102400");
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}\n{}", g.logs());
    assert_eq!(mock.seen(), [format!("Say Bearer {PRIMARY}")]);
    let r = call(g.listen, "Say", "big:102400");
    assert_eq!(r["replies"], json!([102400 + 5]), "{r}");
    assert_eq!(mock.seen()[1], format!("Say Bearer {STANDBY}"));
    assert_no_token_anywhere(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_still_works_on_the_h2c_port() {
    let mock = GrpcMock::start(&[PRIMARY]);
    let rest = rest_mock();
    let g = start(&mock, &rest, "");

    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"rest\":true}");
    // A request shorter than the h2c preface (24 bytes) is answered: the
    // peek stops at its first byte.
    let short = raw_exchange(
        g.listen,
        b"GET /v1/x HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(short.status(), 200, "{}", short.text);
    assert!(short.took < Duration::from_secs(5), "{:?}", short.took);
    // And gRPC beside it.
    let r = call(g.listen, "Say", "both");
    assert_eq!(r["replies"], json!(["echo:both"]), "{r}");
    assert_eq!(rest.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_partial_preface_is_cut_off_in_bounded_time() {
    let mock = GrpcMock::start(&[PRIMARY]);
    let rest = rest_mock();
    let g = start(
        &mock,
        &rest,
        ", request_header_timeout: 1s, client_keepalive_timeout: 2s",
    );
    let wait = Duration::from_secs(12);

    // Nothing at all: the HTTP/1 answer, as without h2c.
    let silent = raw_exchange(g.listen, b"", wait);
    assert!(silent.closed, "{}", silent.text);
    assert_eq!(silent.status(), 408, "{}", silent.text);
    assert!(silent.took < Duration::from_secs(6), "{:?}", silent.took);

    // Part of the preface: closed at the deadline, no HTTP/1 bytes.
    let partial = raw_exchange(g.listen, b"PRI * HTTP/2.0\r\n", wait);
    assert!(partial.closed, "{}", partial.text);
    assert!(partial.text.is_empty(), "{}", partial.text);
    assert!(partial.took < Duration::from_secs(6), "{:?}", partial.took);

    // The whole preface and nothing more: an h2c connection with no
    // stream, closed after the keep-alive timeout.
    let idle = raw_exchange(g.listen, &preface(), wait);
    assert!(idle.closed, "an idle h2c connection stayed open");
    assert!(!idle.text.starts_with("HTTP/1.1"), "{}", idle.text);
    assert!(idle.took < Duration::from_secs(8), "{:?}", idle.took);

    let st = g.status().await;
    assert!(
        st["connections"]["proxy"]["header_timeouts"].as_u64() >= Some(2),
        "{st:#}"
    );
    assert_eq!(st["connections"]["proxy"]["open"], 0, "{st:#}");
}

/// The client's connection preface and an empty SETTINGS frame.
fn preface() -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    b.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_counts_h2c_connections_and_spares_one_with_a_stream_open() {
    let mock = GrpcMock::start(&[PRIMARY]);
    let rest = rest_mock();
    let g = start(&mock, &rest, ", max_connections: 2");
    let release = g.dir.file("release");
    let held: Vec<Child> = (0..2)
        .map(|_| spawn_call(g.listen, "Hold", &release.display().to_string()))
        .collect();
    wait_for("both calls at the mock", Duration::from_secs(30), || {
        (mock.seen().len() == 2).then_some(())
    });

    // Both connections carry a call: a third client is refused, neither
    // call is cut to make room for it.
    let third = raw_exchange(g.listen, &preface(), Duration::from_secs(5));
    assert!(third.closed, "{}", third.text);
    assert!(third.text.starts_with("HTTP/1.1 503"), "{}", third.text);
    let st = g.status().await;
    assert_eq!(st["connections"]["proxy"]["evicted"], 0, "{st:#}");
    assert!(st["connections"]["proxy"]["refused"].as_u64() >= Some(1));
    std::fs::write(&release, "").unwrap();
    for c in held {
        let r = result(c);
        assert_eq!(r["replies"], json!(["held"]), "{r}\n{}", g.logs());
    }

    // Two h2c connections with no stream open fill the cap: idle, so a
    // new client gets in at once and one of them goes.
    let idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", g.listen)).unwrap();
            s.write_all(&preface()).unwrap();
            s
        })
        .collect();
    let status = g.admin_url("/status");
    wait_for_async("two idle h2c connections", Duration::from_secs(20), || {
        let status = status.clone();
        async move {
            let st: Value = reqwest::get(&status).await.ok()?.json().await.ok()?;
            (st["connections"]["proxy"]["open"] == 2).then_some(())
        }
    })
    .await;
    let started = Instant::now();
    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let st = g.status().await;
    assert!(
        st["connections"]["proxy"]["evicted"].as_u64() >= Some(1),
        "{st:#}"
    );
    drop(idle);
    assert_no_token_anywhere(&g).await;
}
