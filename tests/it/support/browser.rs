//! Debian's `chromium`, headless, for the status page's tests: the DOM a
//! page has after its scripts ran (`--dump-dom`), and screenshots. Each run
//! has its own profile folder, is bounded by a deadline and killed on drop.
//! A missing `chromium` fails the test (`./dev test` installs it).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDir;

/// The most one chromium run may take on a loaded machine.
const LIMIT: Duration = Duration::from_secs(90);

/// A chromium process, killed if it is still running when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `chromium --headless=new` with `args` and a fresh profile, and
/// returns its stdout once it exits (panics after [`LIMIT`], or when it
/// fails, with its stderr).
fn chromium(args: &[String]) -> String {
    let profile = TestDir::new();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless=new",
        // As root (CI) chromium refuses to start with its sandbox.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-background-networking",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .expect("chromium (apt-get install chromium; ./dev test installs it)");
    let mut running = Running(child);
    // Read both pipes beside the wait, so that a large DOM cannot fill one
    // and stall chromium.
    let mut out = running.0.stdout.take().expect("piped stdout");
    let mut err = running.0.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = running.0.try_wait().expect("wait for chromium") {
            break st;
        }
        if Instant::now() > deadline {
            drop(running);
            panic!(
                "chromium {args:?} did not finish within {LIMIT:?}: {}",
                err_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    assert!(status.success(), "chromium {args:?}: {status}\n{stderr}");
    stdout
}

/// The DOM of `url` after its scripts had `budget_ms` of (virtual) time.
pub fn dump_dom(url: &str, budget_ms: u32) -> String {
    chromium(&[
        format!("--virtual-time-budget={budget_ms}"),
        "--dump-dom".into(),
        url.into(),
    ])
}

/// A PNG of `url` in a `width`x`height` window, after its scripts had
/// `budget_ms` of (virtual) time.
pub fn screenshot(url: &str, file: &Path, width: u32, height: u32, budget_ms: u32) {
    chromium(&[
        format!("--virtual-time-budget={budget_ms}"),
        format!("--window-size={width},{height}"),
        format!("--screenshot={}", file.display()),
        url.into(),
    ]);
    assert!(
        std::fs::metadata(file).is_ok_and(|m| m.len() > 1000),
        "no screenshot in {}",
        file.display()
    );
}

/// The opening tags in `dom` that contain `marker` (e.g. `class="change"`),
/// in document order.
pub fn tags<'a>(dom: &'a str, marker: &str) -> Vec<&'a str> {
    dom.split('<')
        .filter_map(|t| t.split_once('>').map(|(tag, _)| tag))
        .filter(|tag| !tag.starts_with('/') && tag.contains(marker))
        .collect()
}

/// The value of attribute `name` in an opening tag from [`tags`], with the
/// entities a serializer writes decoded.
pub fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(
        tag[start..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
            .replace("&amp;", "&"),
    )
}
