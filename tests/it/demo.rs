//! `graceway demo --exit` runs the whole walkthrough against its built-in
//! emoji API and exits 0 only when every step went as expected.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, wait_for, TestDir, BIN};

#[test]
fn demo_walkthrough_passes_every_step() {
    let dir = TestDir::new();
    let (listen, admin, api) = (free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--exit",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--api",
            &format!("127.0.0.1:{api}"),
            "--dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.file("out.log")).unwrap())
        .stderr(std::fs::File::create(dir.file("err.log")).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for("the demo to finish", Duration::from_secs(90), || {
        child.try_wait().ok().flatten()
    });
    let out = std::fs::read_to_string(dir.file("out.log")).unwrap();
    let err = std::fs::read_to_string(dir.file("err.log")).unwrap();
    assert!(status.success(), "demo failed:\n{out}\n{err}");
    assert!(out.contains("Every step went as expected."), "{out}");
    for step in [
        "1. Your service asks graceway",
        "3. Weeks before, the vendor announces in-band",
        "DEPRECATED (from ",
        "4. Then the vendor deprecates the primary token",
        "rejected: invalid_token (this access token has been deprecated)",
        "x-graceway-degraded: token-rejected",
        "FINGERPRINT",
        "x-graceway-degraded: upstream-timeout",
        "10. The vendor recovers",
    ] {
        assert!(out.contains(step), "missing `{step}` in:\n{out}");
    }
    assert!(!out.contains("✘"), "{out}");
    // graceway's own warning came first, in its log.
    assert!(err.contains("the vendor announced deprecation at"), "{err}");
    // The demo's token values are in its token files only.
    for f in ["token", "token.standby"] {
        let v = std::fs::read_to_string(dir.file(f)).unwrap();
        let v = v.trim();
        assert!(!out.contains(v) && !err.contains(v), "token value printed");
    }
}
