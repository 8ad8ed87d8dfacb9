//! The Debian package: built from the binary these tests run
//! (`packaging/build-deb.sh`), installed with `dpkg -i` on this machine,
//! checked with the installed `graceway check`, and purged again.

use crate::support::sh;

#[test]
fn the_debian_package_installs_checks_and_purges() {
    if !nix_is_root() {
        eprintln!("skipped: installing a package needs root (CI runs as root)");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = crate::support::TestDir::new();
    let (ok, log) = sh(
        &format!("{root}/packaging/build-deb.sh"),
        &[env!("CARGO_BIN_EXE_graceway"), out.path().to_str().unwrap()],
    );
    assert!(ok, "{log}");
    let deb = log.lines().last().unwrap().trim().to_string();
    let _ = sh("dpkg", &["--purge", "graceway"]);
    let (ok, log) = sh("dpkg", &["-i", &deb]);
    assert!(ok, "dpkg -i: {log}");
    let installed = || {
        let (ok, log) = sh(
            "/usr/bin/graceway",
            &[
                "check",
                "--skip-sources",
                "-c",
                "/etc/graceway/graceway.yaml",
            ],
        );
        assert!(ok, "installed check: {log}");
        assert!(log.contains("syntax is ok"), "{log}");
        let (ok, conf) = sh("dpkg-query", &["-W", "-f", "${Conffiles}", "graceway"]);
        assert!(ok && conf.contains("/etc/graceway/graceway.yaml"), "{conf}");
        let (ok, user) = sh("getent", &["passwd", "graceway"]);
        assert!(ok && user.contains("/var/lib/graceway"), "{user}");
        assert!(std::path::Path::new("/var/lib/graceway").is_dir());
        assert!(std::path::Path::new("/lib/systemd/system/graceway.service").exists());
        let unit = std::fs::read_to_string("/lib/systemd/system/graceway.service").unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/graceway run"), "{unit}");
        assert!(unit.contains("Type=notify"));
    };
    let result = std::panic::catch_unwind(installed);
    let (ok, log) = sh("dpkg", &["--purge", "graceway"]);
    assert!(ok, "dpkg --purge: {log}");
    assert!(!std::path::Path::new("/usr/bin/graceway").exists());
    assert!(!std::path::Path::new("/var/lib/graceway").exists());
    assert!(
        !sh("getent", &["passwd", "graceway"]).0,
        "user removed on purge"
    );
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
