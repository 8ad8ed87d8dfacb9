//! `graceway status --watch`: under tmux (a real terminal) the screen is
//! redrawn after a revocation, says when the admin listener is gone and
//! ends on Ctrl-C; without a terminal each snapshot follows a separator.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{start, vendor, PRIMARY, STANDBY};
use crate::support::{wait_for, TestDir, BIN};

/// A tmux server of this test's own (`-L`), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux {
            socket: format!("graceway-watch-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux (apt-get install tmux; ./dev test installs it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "watch"]).1
    }

    /// Polls the screen until `pred` holds (30 s at most).
    fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(what, Duration::from_secs(30), || {
                last = self.screen();
                pred(&last).then(|| last.clone())
            })
        }));
        found.unwrap_or_else(|_| panic!("timed out waiting for {what}; the screen:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// A token's row of the token table on the screen: `emoji  <index> ...`.
fn screen_token_state(screen: &str, fp: &str) -> Option<String> {
    let line = screen
        .lines()
        .find(|l| l.contains(fp) && l.starts_with("emoji"))?;
    let cells: Vec<&str> = line.split_whitespace().collect();
    let at = cells.iter().position(|c| *c == fp)?;
    cells.get(at + 1).map(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_under_tmux_after_a_revocation() {
    let (up, accepted) = vendor();
    let mut g = start(up.port);
    assert_eq!(g.get("/v1/a").await.status(), 200);
    let fp = graceway::tokens::fingerprint(PRIMARY);
    let tmux = Tmux::new();
    let cmd = format!("exec {BIN} status --watch --admin {}", g.admin_url(""));
    let (ok, out) = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "watch",
        "-x",
        "200",
        "-y",
        "50",
        &cmd,
        ";",
        "set-option",
        "-t",
        "watch",
        "remain-on-exit",
        "on",
    ]);
    assert!(ok, "tmux new-session: {out}");
    let header = format!("graceway {}  pid", env!("CARGO_PKG_VERSION"));
    let before = tmux.wait_screen("the primary active on the screen", |s| {
        screen_token_state(s, &fp).as_deref() == Some("active")
    });
    // One frame at a time: the screen is cleared before each.
    assert_eq!(before.matches(&header).count(), 1, "{before}");
    assert!(before.contains("Ctrl-C to quit"), "{before}");

    // The vendor revokes the primary; the next request meets it.
    accepted.lock().unwrap().retain(|t| t != PRIMARY);
    assert_eq!(g.get("/v1/a").await.status(), 200);
    let after = tmux.wait_screen("the primary rejected on the screen", |s| {
        screen_token_state(s, &fp).as_deref() == Some("rejected")
            && s.contains("recent changes (newest first):")
    });
    assert!(
        after.contains(&format!("emoji token 0 ({fp})  active -> rejected")),
        "{after}"
    );
    assert!(
        !after.contains(PRIMARY) && !after.contains(STANDBY),
        "{after}"
    );

    // The admin listener goes away: it says so and keeps trying.
    g.stop();
    tmux.wait_screen("the watch to say the admin is gone", |s| {
        s.contains("cannot read") && s.contains("retrying every second")
    });

    // Ctrl-C ends it, with exit code 0.
    let (ok, out) = tmux.run(&["send-keys", "-t", "watch", "C-c"]);
    assert!(ok, "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut pane = String::new();
    while std::time::Instant::now() < deadline {
        pane = tmux
            .run(&[
                "display-message",
                "-p",
                "-t",
                "watch",
                "#{pane_dead} #{pane_dead_status} #{pane_dead_signal} #{pane_pid}",
            ])
            .1;
        // Dead with status 0; tmux sometimes records no status for a pane
        // whose process exited normally (never when a signal killed it).
        let f: Vec<&str> = pane.split(' ').collect();
        if f.first() == Some(&"1")
            && matches!(f.get(1), Some(&"0") | Some(&""))
            && f.get(2) == Some(&"")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the watch did not exit 0 within 20 s of Ctrl-C: pane (dead, status, signal, pid) {pane:?}; screen:\n{}",
        tmux.screen()
    );
}

#[test]
fn status_watch_without_a_terminal_prints_each_snapshot_after_a_separator() {
    let (up, _accepted) = vendor();
    let g = start(up.port);
    let dir = TestDir::new();
    let out = std::fs::File::create(dir.file("watch.out")).unwrap();
    let mut child = Command::new(BIN)
        .args(["status", "--watch", "--admin", &g.admin_url("")])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let header = format!("graceway {}  pid", env!("CARGO_PKG_VERSION"));
    let text = wait_for("two snapshots", Duration::from_secs(30), || {
        let t = std::fs::read_to_string(dir.file("watch.out")).ok()?;
        (t.matches(&header).count() >= 2).then_some(t)
    });
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let st = wait_for(
        "the watch to exit on SIGINT",
        Duration::from_secs(20),
        || child.try_wait().ok().flatten(),
    );
    assert_eq!(st.code(), Some(0), "{st}");
    assert!(
        !text.contains('\x1b'),
        "escape codes without a terminal: {text:?}"
    );
    let separators = text
        .lines()
        .filter(|l| l.starts_with("--- ") && l.ends_with("/status"))
        .count();
    assert!(separators >= 2, "{text}");
    assert_eq!(separators, text.matches(&header).count(), "{text}");
}
