//! Test support: spawn the real `graceway` binary in a fresh temp dir,
//! pick free loopback ports, poll with deadlines, and run a programmable
//! mock upstream. A failing test prints the child's stdout and stderr.

pub mod browser;
pub mod config;
pub mod mock;
pub mod nginx;
pub mod redis;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use config::EmojiConfig;
pub use mock::{MockReply, MockUpstream, Recorded};

pub const BIN: &str = env!("CARGO_BIN_EXE_graceway");

/// A TCP port on 127.0.0.1 for graceway to bind, without the
/// bind-release-rebind race: ports come from a process-wide counter below
/// the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`,
/// which starts at 32768 here), so no mock upstream, client socket or other
/// test of this process can be handed the same port by `bind(0)` between
/// the check and graceway's bind. Each port is handed out once; a port in
/// use by another program is skipped. The start is spread by process id so
/// that two test runs side by side rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        LOW + (std::process::id() % 50) as u16 * 200,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..(HIGH - LOW) {
        let mut port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= HIGH {
            NEXT.store(LOW, Ordering::SeqCst);
            port = LOW;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {HIGH}");
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Async variant of [`wait_for`].
pub async fn wait_for_async<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A temp folder with the config and token files of one test.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("graceway-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file atomically (write + rename), as a secret manager would.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.file(name);
        let tmp = self.file(&format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

/// A running `graceway run` process.
pub struct Graceway {
    pub child: Option<Child>,
    pub listen: u16,
    pub admin: u16,
    pub dir: TestDir,
    pub config: PathBuf,
}

/// Ports and paths substituted into config templates: `{listen}`,
/// `{admin}`, `{dir}`.
pub fn render(template: &str, listen: u16, admin: u16, dir: &Path) -> String {
    template
        .replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{dir}", &dir.display().to_string())
}

impl Graceway {
    /// Writes `template` (see [`render`]) as the config into `dir`, starts
    /// graceway and waits until its admin listener answers `/healthz`.
    pub fn start_in(dir: TestDir, template: &str) -> Graceway {
        let g = Graceway::spawn_in(dir, template, &[]);
        g.wait_healthy();
        g
    }

    /// Starts in a fresh folder whose `token` file holds `token`.
    pub fn start_with_token(token: &str, template: &str) -> Graceway {
        let dir = TestDir::new();
        dir.write("token", token);
        Graceway::start_in(dir, template)
    }

    /// Starts without waiting (for tests of start-up failures).
    pub fn spawn_in(dir: TestDir, template: &str, env: &[(&str, &str)]) -> Graceway {
        let listen = free_port();
        let admin = free_port();
        let config = dir.file("graceway.yaml");
        std::fs::write(&config, render(template, listen, admin, dir.path())).unwrap();
        let stdout = std::fs::File::create(dir.file("stdout.log")).unwrap();
        let stderr = std::fs::File::create(dir.file("stderr.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn graceway");
        Graceway {
            child: Some(child),
            listen,
            admin,
            dir,
            config,
        }
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The admin and proxy listeners start side by side: wait for both.
            let admin_up = http_get_blocking(self.admin, "/healthz").is_ok_and(|r| r == 200);
            let proxy_up = std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_ok();
            if admin_up && proxy_up {
                return;
            }
            if Instant::now() > deadline {
                panic!("graceway did not become healthy\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }

    /// `GET path` on the proxy listener with the shared test client.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        client().get(self.url(path)).send().await.unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// stdout + stderr so far.
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(self.dir.file("stdout.log")).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.file("stderr.log")).unwrap_or_default();
        format!("--- graceway stdout ---\n{out}\n--- graceway stderr ---\n{err}")
    }

    /// SIGTERM, then SIGKILL if it has not exited within the deadline.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself (after a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let st = wait_for("graceway to exit", limit, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        st
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(self.admin_url("/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until `/status` shows a reload attempt later than `after`, and
    /// returns that reload record.
    pub async fn wait_reload(&self, after: u64) -> serde_json::Value {
        let admin = self.admin_url("/status");
        wait_for_async("a reload to be recorded", Duration::from_secs(20), || {
            let admin = admin.clone();
            async move {
                let s: serde_json::Value = reqwest::get(&admin).await.ok()?.json().await.ok()?;
                let r = s["reload"].clone();
                (r["attempt"].as_u64()? > after).then_some(r)
            }
        })
        .await
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn reload_attempt(&self) -> u64 {
        self.status().await["reload"]["attempt"].as_u64().unwrap()
    }
}

impl Drop for Graceway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Status code of a GET on 127.0.0.1:port, without an async runtime.
pub fn http_get_blocking(port: u16, path: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))
}

/// What a raw exchange got back.
pub struct RawReply {
    /// Everything read, lossily as text.
    pub text: String,
    /// The peer closed the connection (EOF or reset) within the wait.
    pub closed: bool,
    /// How long until the peer closed (or the wait ran out).
    pub took: Duration,
}

impl RawReply {
    /// The status code of the first response, 0 when none came.
    pub fn status(&self) -> u16 {
        self.text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

/// Writes `bytes` to 127.0.0.1:port as they are and reads until the peer
/// closes or `wait` passes: a client holding a raw socket.
pub fn raw_exchange(port: u16, bytes: &[u8], wait: Duration) -> RawReply {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(bytes).expect("write");
    let mut buf = Vec::new();
    let deadline = started + wait;
    let mut closed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    RawReply {
        text: String::from_utf8_lossy(&buf).into_owned(),
        closed,
        took: started.elapsed(),
    }
}

/// Runs the graceway binary with args and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run graceway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of one series (`name{labels}` exactly as exposed) in
/// Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A reqwest client that does not pool connections across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Writes `header` one byte at a time, reading for up to 200 ms after each
/// byte, until the peer closes or `limit` passes: (what came back, closed).
pub fn drip(s: &mut std::net::TcpStream, header: &[u8], limit: Duration) -> (String, bool) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut closed = false;
    for b in header {
        if std::io::Write::write_all(s, &[*b]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if started.elapsed() > limit {
            break;
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Runs `cmd` with `args`: whether it succeeded, and its stdout and
/// stderr together (panics when it cannot be started).
pub fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
