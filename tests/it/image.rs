//! The OCI image: built by `packaging/build-image.sh` from the binary these
//! tests run (one build per test run), its archive read back without podman
//! (index, manifest and config with serde_json, the layers unpacked in order
//! with tar), and what it contains run under `chroot` as the image's user:
//! `graceway --version`, `graceway check` of the default config and of the
//! Kubernetes ConfigMap's, and the image's ENTRYPOINT + CMD serving
//! `/healthz` and a proxied request with the injected token, then stopped
//! with the image's STOPSIGNAL. Containers cannot run on the CI machine (crun
//! cannot set rlimits or cgroups in its VM); a chroot runs the same files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{free_port, http_get_blocking, raw_exchange, wait_for, MockReply};
use crate::support::{sh, MockUpstream, TestDir, BIN};

const MANIFEST: &str = "conf/kubernetes/graceway-sidecar.yaml";

/// An unpacked OCI archive: the image's config and its root file system.
struct Image {
    /// The `org.opencontainers.image.ref.name` the archive gives the image.
    name: String,
    /// The image config's `config` object (User, Entrypoint, Cmd, ...).
    config: Value,
    root: PathBuf,
}

impl Image {
    /// Reads `archive` (an OCI image layout in a tar) into `dir`: the
    /// layout under `dir/oci`, the layers applied in order under `dir/root`.
    fn unpack(archive: &Path, dir: &Path) -> Image {
        let layout = dir.join("oci");
        let root = dir.join("root");
        std::fs::create_dir_all(&layout).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        let (ok, log) = sh(
            "tar",
            &[
                "-C",
                layout.to_str().unwrap(),
                "-xf",
                archive.to_str().unwrap(),
            ],
        );
        assert!(ok, "tar -xf {}: {log}", archive.display());
        let json = |digest: &str| -> Value {
            let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
            let text = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
            serde_json::from_slice(&text).unwrap()
        };
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifests = index["manifests"].as_array().expect("index.json manifests");
        assert_eq!(manifests.len(), 1, "one image in the archive: {index}");
        let name = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .expect("the image's name in index.json")
            .to_string();
        let manifest = json(manifests[0]["digest"].as_str().unwrap());
        let config = json(manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["os"], "linux", "{config}");
        for layer in manifest["layers"].as_array().expect("layers") {
            let media = layer["mediaType"].as_str().unwrap();
            assert!(
                media.starts_with("application/vnd.oci.image.layer.v1.tar"),
                "{media}"
            );
            let hex = layer["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:");
            let blob = layout.join("blobs/sha256").join(hex);
            // GNU tar finds the compression itself; as root it keeps owners.
            let (ok, log) = sh(
                "tar",
                &[
                    "-C",
                    root.to_str().unwrap(),
                    "--numeric-owner",
                    "-xpf",
                    blob.to_str().unwrap(),
                ],
            );
            assert!(ok, "layer {hex}: {log}");
            // This image's layers only add files: a whiteout (a file the
            // layer deletes) would need applying, and would say that the
            // Containerfile or the base changed shape.
            let (_, wh) = sh("find", &[root.to_str().unwrap(), "-name", ".wh.*"]);
            assert!(wh.trim().is_empty(), "whiteouts in layer {hex}: {wh}");
        }
        Image {
            name,
            config: config["config"].clone(),
            root,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// `USER` as `uid:gid`, numeric (the pod spec's runAsUser needs a number).
    fn user(&self) -> (u32, u32) {
        let user = self.config["User"].as_str().expect("User");
        let (u, g) = user.split_once(':').expect("User is uid:gid");
        (
            u.parse().expect("numeric uid"),
            g.parse().expect("numeric gid"),
        )
    }

    /// A command run in the image as its user, with only its `Env`.
    fn command(&self, args: &[&str]) -> Command {
        let (uid, gid) = self.user();
        let mut cmd = Command::new("/usr/sbin/chroot");
        cmd.arg(format!("--userspec={uid}:{gid}"))
            .arg(&self.root)
            .args(args)
            .env_clear()
            .stdin(Stdio::null());
        for kv in self.config["Env"].as_array().into_iter().flatten() {
            let (k, v) = kv.as_str().unwrap().split_once('=').unwrap();
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args).output().expect("chroot");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), format!("chroot {args:?}: {log}"))
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.config[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {}", self.config))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }
}

/// `/proc` mounted in the image's root, as a container runtime does (the
/// memory watch reads `/proc/self/statm`); unmounted on drop, before the
/// temp folder is removed.
struct ProcMount(PathBuf);

impl ProcMount {
    fn new(root: &Path) -> ProcMount {
        let at = root.join("proc");
        let (ok, log) = sh("mount", &["-t", "proc", "proc", at.to_str().unwrap()]);
        assert!(ok, "mount proc: {log}");
        ProcMount(at)
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        let at = self.0.to_str().unwrap();
        if !sh("umount", &[at]).0 {
            let _ = sh("umount", &["-l", at]);
        }
    }
}

/// `graceway run` in the chroot; killed on drop (also when a check panics).
struct Served {
    child: Option<Child>,
    log: PathBuf,
}

impl Served {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- graceway in the image ---\n{}", self.logs());
        }
    }
}

#[test]
fn the_oci_image_builds_and_serves_from_a_chroot_as_its_user() {
    if !is_root() {
        eprintln!(
            "skipped: building the image (mmdebstrap) and chroot need root (CI runs as root)"
        );
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = TestDir::new();
    let started = Instant::now();
    let build = Command::new(repo.join("packaging/build-image.sh"))
        .args([BIN, out.path().to_str().unwrap()])
        .output()
        .expect("packaging/build-image.sh");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr),
    );
    assert!(
        build.status.success(),
        "build-image.sh (./dev test installs mmdebstrap and podman): {stdout}{stderr}"
    );
    // stdout: the archive's path; stderr's last line: the sizes.
    let archive = PathBuf::from(stdout.trim());
    eprintln!(
        "image: built in {:.0?}, {} bytes; {}",
        started.elapsed(),
        std::fs::metadata(&archive).unwrap().len(),
        stderr.lines().last().unwrap_or("")
    );
    let img = Image::unpack(&archive, out.path());

    // The image's config, read back from the archive.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(img.name, format!("localhost/graceway:{version}"));
    assert_eq!(img.strings("Entrypoint"), ["graceway"]);
    assert_eq!(
        img.strings("Cmd"),
        ["run", "-c", "/etc/graceway/graceway.yaml"]
    );
    assert_eq!(img.user(), (65532, 65532), "a fixed non-root uid");
    assert_eq!(img.config["StopSignal"], "SIGTERM");
    let volumes = img.config["Volumes"].as_object().expect("Volumes");
    let mut volumes: Vec<&str> = volumes.keys().map(String::as_str).collect();
    volumes.sort_unstable();
    assert_eq!(volumes, ["/etc/graceway", "/var/lib/graceway"]);
    let label = |k: &str| img.config["Labels"][k].as_str().unwrap_or("").to_string();
    assert_eq!(label("org.opencontainers.image.version"), version);
    assert_eq!(label("org.opencontainers.image.licenses"), "Apache-2.0");
    assert!(label("org.opencontainers.image.source").starts_with("https://"));

    // The files: no shell, no package manager; every library `ldd` lists;
    // the user, the CA bundle, the volumes owned by the user.
    for gone in [
        "bin/sh",
        "bin/dash",
        "bin/bash",
        "usr/bin/apt",
        "usr/bin/dpkg",
    ] {
        assert!(
            std::fs::symlink_metadata(img.path(gone)).is_err(),
            "/{gone} in the image"
        );
    }
    let (ok, ldd) = sh("ldd", &[img.path("/usr/bin/graceway").to_str().unwrap()]);
    assert!(ok, "{ldd}");
    for lib in ldd.lines().filter_map(|l| l.split_whitespace().next()) {
        if lib.starts_with("linux-vdso") {
            continue;
        }
        let found = if lib.starts_with('/') {
            img.path(lib).exists()
        } else {
            let (_, hits) = sh(
                "find",
                &[img.path("/usr/lib").to_str().unwrap(), "-name", lib],
            );
            !hits.trim().is_empty()
        };
        assert!(found, "{lib} (ldd) missing from the image\n{ldd}");
    }
    let passwd = std::fs::read_to_string(img.path("/etc/passwd")).unwrap();
    assert!(passwd.contains("graceway:x:65532:65532:"), "{passwd}");
    let bundle = std::fs::read_to_string(img.path("/etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100);
    use std::os::unix::fs::MetadataExt;
    let state = std::fs::metadata(img.path("/var/lib/graceway")).unwrap();
    assert_eq!((state.uid(), state.gid()), (65532, 65532));
    // Nothing secret from the build: no token file, no key, no Secret value.
    let (_, keys) = sh(
        "find",
        &[
            img.root.to_str().unwrap(),
            "(",
            "-name",
            "token",
            "-o",
            "-name",
            "*.key",
            "-o",
            "-path",
            "*/run/secrets*",
            ")",
        ],
    );
    assert!(keys.trim().is_empty(), "secrets in the image: {keys}");
    let (found, _) = sh(
        "grep",
        &[
            "-rqF",
            "emj_example_token_value",
            img.root.to_str().unwrap(),
        ],
    );
    assert!(!found, "the manifest's example token is in the image");

    // What it runs: the version, a check of the image's default config and
    // of the config the manifest mounts.
    let (ok, v) = img.run(&["graceway", "--version"]);
    assert!(ok && v.contains(version), "{v}");
    let (ok, c) = img.run(&[
        "graceway",
        "check",
        "--skip-sources",
        "-c",
        "/etc/graceway/graceway.yaml",
    ]);
    assert!(
        ok && c.contains("syntax is ok"),
        "the image's default config: {c}"
    );
    let configmap = configmap_config(&repo.join(MANIFEST));
    std::fs::write(img.path("/etc/graceway/graceway.yaml"), &configmap).unwrap();
    let (ok, c) = img.run(&[
        "graceway",
        "check",
        "--skip-sources",
        "-c",
        "/etc/graceway/graceway.yaml",
    ]);
    assert!(
        ok && c.contains("syntax is ok"),
        "the ConfigMap's config: {c}"
    );

    // ENTRYPOINT + CMD serving: the manifest's paths (token folder, pid
    // file in /tmp, persist file in the volume) with loopback ports and a
    // mock vendor. The token file is readable through its group, as the
    // pod's fsGroup makes it.
    let token = "img-test-token-7f3a";
    let vendor = MockUpstream::start(|_| MockReply::ok(r#"{"emoji":"🙂"}"#));
    let (listen, admin) = (free_port(), free_port());
    std::fs::write(
        img.path("/etc/graceway/graceway.yaml"),
        format!(
            r#"listen: "127.0.0.1:{listen}"
admin: {{ listen: "127.0.0.1:{admin}" }}
pid_file: /tmp/graceway.pid
server: {{ grace_period: 0s, graceful_shutdown_timeout: 5s }}
upstreams:
  - name: emoji
    url: "http://127.0.0.1:{port}"
    timeouts: {{ connect: 2s, read: 10s }}
    credentials:
      inject: {{ header: Authorization, prefix: "Bearer " }}
      tokens:
        - {{ file: /run/secrets/emoji/token }}
cache:
  persist: {{ path: /var/lib/graceway/stale.redb }}
"#,
            port = vendor.port
        ),
    )
    .unwrap();
    let secrets = img.path("/run/secrets/emoji");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("token"), format!("{token}\n")).unwrap();
    let (ok, log) = sh(
        "chown",
        &["-R", "0:65532", secrets.parent().unwrap().to_str().unwrap()],
    );
    assert!(ok, "{log}");
    let (ok, log) = sh("chmod", &["0440", secrets.join("token").to_str().unwrap()]);
    assert!(ok, "{log}");
    let _proc = ProcMount::new(&img.root);
    let entry: Vec<String> = img
        .strings("Entrypoint")
        .into_iter()
        .chain(img.strings("Cmd"))
        .collect();
    let entry: Vec<&str> = entry.iter().map(String::as_str).collect();
    let log_path = out.file("graceway.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut served = Served {
        child: Some(
            img.command(&entry)
                .env("RUST_LOG", "info")
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .expect("chroot graceway run"),
        ),
        log: log_path,
    };
    let pid = served.child.as_ref().unwrap().id();
    wait_for(
        "/healthz from the image's graceway",
        Duration::from_secs(30),
        || {
            let up = http_get_blocking(admin, "/healthz").is_ok_and(|s| s == 200);
            up.then_some(())
        },
    );
    assert_eq!(
        http_get_blocking(admin, "/readyz").unwrap(),
        200,
        "{}",
        served.logs()
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65532"; 4],
        "graceway runs as the image's user: {uids}"
    );
    let reply = raw_exchange(
        listen,
        b"GET /v1/emojis/smile HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(reply.status(), 200, "{}\n{}", reply.text, served.logs());
    assert!(reply.text.contains("🙂"), "{}", reply.text);
    let seen = vendor.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].bearer(), Some(token), "the injected token");
    assert!(
        img.path("/tmp/graceway.pid").exists(),
        "the pid file in /tmp"
    );
    let redb = std::fs::metadata(img.path("/var/lib/graceway/stale.redb")).expect("persist file");
    assert_eq!(redb.uid(), 65532, "the persist file belongs to the user");

    // The stop signal drains and exits 0.
    let signal = img.config["StopSignal"]
        .as_str()
        .unwrap()
        .trim_start_matches("SIG");
    let (ok, log) = sh("kill", &[&format!("-{signal}"), &pid.to_string()]);
    assert!(ok, "{log}");
    let child = served.child.as_mut().unwrap();
    let exit = wait_for(
        "graceway to exit on the stop signal",
        Duration::from_secs(15),
        || child.try_wait().ok().flatten(),
    );
    served.child = None;
    let logs = served.logs();
    assert!(exit.success(), "{exit}\n{logs}");
    assert!(logs.contains("graceway stopped"), "{logs}");
    assert!(!logs.contains(token), "the token in the log:\n{logs}");
}

/// The `graceway.yaml` of the manifest's ConfigMap.
fn configmap_config(path: &Path) -> String {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    let config = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .find(|v| v["kind"].as_str() == Some("ConfigMap"))
        .and_then(|v| v["data"]["graceway.yaml"].as_str().map(str::to_string))
        .expect("a ConfigMap with graceway.yaml");
    config
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The manifest runs the image the script builds, as the image's user, with
/// its ENTRYPOINT and CMD (which the test above runs), probes on the admin
/// port the ConfigMap binds, and a grace period that covers the drain.
#[test]
fn the_kubernetes_manifest_agrees_with_the_image() {
    use serde::Deserialize;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join(MANIFEST)).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .collect();
    let pod = &docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment")["spec"]["template"]["spec"];
    let sidecar = pod["initContainers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some("graceway"))
        .expect("the graceway native sidecar");
    let version = env!("CARGO_PKG_VERSION");
    // The name packaging/build-image.sh tags (the test above reads it back
    // from the archive).
    assert_eq!(
        sidecar["image"].as_str(),
        Some(&*format!("localhost/graceway:{version}"))
    );
    assert!(
        sidecar.get("command").is_none() && sidecar.get("args").is_none(),
        "the sidecar runs the image's ENTRYPOINT and CMD"
    );
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
    assert_eq!(pod["securityContext"]["runAsGroup"].as_u64(), Some(65532));
    let containerfile = std::fs::read_to_string(repo.join("packaging/Containerfile")).unwrap();
    assert!(containerfile.lines().any(|l| l == "USER 65532:65532"));

    let config: serde_yaml::Value =
        serde_yaml::from_str(&configmap_config(&repo.join(MANIFEST))).unwrap();
    let admin_port: u64 = config["admin"]["listen"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("admin.listen with a port");
    let ports = sidecar["ports"].as_sequence().expect("ports");
    assert!(
        ports.iter().any(|p| p["name"].as_str() == Some("admin")
            && p["containerPort"].as_u64() == Some(admin_port)),
        "the admin port {admin_port} is named admin: {ports:?}"
    );
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("admin"), "{probe}");
    }
    let secs = |v: &serde_yaml::Value| -> u64 {
        let s = v.as_str().expect("a duration");
        s.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{s}: whole seconds"))
    };
    let drain = secs(&config["server"]["grace_period"])
        + secs(&config["server"]["graceful_shutdown_timeout"]);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert_eq!(
        grace,
        drain + 5,
        "terminationGracePeriodSeconds = grace_period + graceful_shutdown_timeout + 5 s to flush and exit"
    );
}
