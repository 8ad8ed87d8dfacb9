//! Hot swap: SIGHUP, file watching (including a Kubernetes-style symlink
//! swap), `graceway reload`, `POST /reload`, and bad input on reload.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    client, metric_value, run_cli, wait_for_async, Graceway, MockReply, MockUpstream, TestDir,
};

fn config(up: &MockUpstream, token_path: &str, admin_extra: &str) -> String {
    format!(
        r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}"{admin_extra} }}
pid_file: "{{dir}}/graceway.pid"
server: {{ graceful_shutdown_timeout: 1s }}
upstreams:
  - name: emoji
    url: "http://127.0.0.1:{port}"
    credentials:
      tokens:
        - {{ file: "{token_path}" }}
"#,
        port = up.port
    )
}

/// The token the upstream saw on a fresh request.
async fn token_seen(g: &Graceway, up: &MockUpstream) -> String {
    let r = client().get(g.url("/v1/who")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    up.requests().last().unwrap().bearer().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_tokens_under_load_without_failures() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = Graceway::start_with_token("tok-gen-0\n", &config(&up, "{dir}/token", ""));

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        let url = g.url("/v1/emojis");
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for i in 1..=5 {
        let before = g.reload_attempt().await;
        g.dir.write("token", &format!("tok-gen-{i}\n"));
        // The watcher may apply the file first; SIGHUP then applies
        // "no change". Either way the attempt counter moves.
        g.signal("HUP");
        let r = g.wait_reload(before).await;
        assert_eq!(r["ok"], true, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(
        done.load(Ordering::Relaxed) > 50,
        "too little load to mean anything"
    );

    let allowed: HashSet<String> = (0..=5).map(|i| format!("tok-gen-{i}")).collect();
    for rec in up.requests() {
        let t = rec.bearer().unwrap_or("<none>");
        assert!(
            allowed.contains(t),
            "request carried a token never configured: {t}"
        );
    }
    assert_eq!(token_seen(&g, &up).await, "tok-gen-5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_file_applies_without_signal() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = Graceway::start_with_token("tok-watch-1\n", &config(&up, "{dir}/token", ""));
    assert_eq!(token_seen(&g, &up).await, "tok-watch-1");

    // In-place write (no rename), as `echo new > token` does.
    std::fs::write(g.dir.file("token"), "tok-watch-2\n").unwrap();
    wait_for_async(
        "the in-place write to apply",
        Duration::from_secs(10),
        || async { (token_seen(&g, &up).await == "tok-watch-2").then_some(()) },
    )
    .await;
    let st = g.status().await;
    assert_eq!(st["reload"]["trigger"], "file-change");
    assert!(st["reload"]["ok"].as_bool().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_symlink_swap_applies() {
    use std::os::unix::fs::symlink;
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let dir = TestDir::new();
    // The layout kubelet writes for a Secret volume:
    // token -> ..data/token, ..data -> ..2026_v1
    let secret = dir.file("secret");
    std::fs::create_dir_all(secret.join("..2026_v1")).unwrap();
    std::fs::write(secret.join("..2026_v1/token"), "tok-k8s-1").unwrap();
    symlink("..2026_v1", secret.join("..data")).unwrap();
    symlink("..data/token", secret.join("token")).unwrap();
    let g = Graceway::start_in(dir, &config(&up, "{dir}/secret/token", ""));
    assert_eq!(token_seen(&g, &up).await, "tok-k8s-1");

    // kubelet writes a new timestamped folder, points ..data_tmp at it and
    // renames ..data_tmp over ..data (an atomic symlink swap).
    std::fs::create_dir_all(secret.join("..2026_v2")).unwrap();
    std::fs::write(secret.join("..2026_v2/token"), "tok-k8s-2").unwrap();
    symlink("..2026_v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    std::fs::remove_dir_all(secret.join("..2026_v1")).unwrap();

    wait_for_async(
        "the symlink swap to apply",
        Duration::from_secs(10),
        || async { (token_seen(&g, &up).await == "tok-k8s-2").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_token_file_on_reload_keeps_old_token() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = Graceway::start_with_token("tok-good\n", &config(&up, "{dir}/token", ""));
    assert_eq!(token_seen(&g, &up).await, "tok-good");

    for bad in ["", "evil\r\nX-Injected: yes\n", "bad\0token"] {
        let before = g.reload_attempt().await;
        std::fs::write(g.dir.file("token"), bad).unwrap();
        // The watcher refuses it (attempt recorded as failed) ...
        let r = g.wait_reload(before).await;
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["message"].as_str().unwrap().contains("tokens[0]"), "{r}");
        // ... and an explicit SIGHUP does too.
        let before = g.reload_attempt().await;
        g.signal("HUP");
        let r = g.wait_reload(before).await;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(token_seen(&g, &up).await, "tok-good");
    }
    for rec in up.requests() {
        assert!(rec.header("x-injected").is_none());
    }
    let failed = metric_value(
        &g.metrics().await,
        "graceway_token_reloads_total{result=\"failed\"}",
    )
    .expect("failed reload counter");
    assert!(failed >= 6.0, "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_on_reload_keeps_old_state() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let g = Graceway::start_with_token("tok-cfg\n", &config(&up, "{dir}/token", ""));
    let good = std::fs::read_to_string(&g.config).unwrap();
    std::fs::write(&g.config, format!("{good}\nbogus_key: 1\n")).unwrap();
    let (code, _, err) = run_cli(&["reload", "-c", g.config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("bogus_key"), "{err}");
    // Sent anyway by signal: refused by the process, old state stays.
    let before = g.reload_attempt().await;
    g.signal("HUP");
    let r = g.wait_reload(before).await;
    assert_eq!(r["ok"], false);
    assert!(r["message"].as_str().unwrap().contains("bogus_key"), "{r}");
    assert_eq!(token_seen(&g, &up).await, "tok-cfg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceway_reload_command_signals_and_reports() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let dir = TestDir::new();
    dir.write("token", "tok-cmd-1\n");
    // Token from an env var so that only a reload (not the watcher) can
    // change it: the config file itself is edited to point at a new file.
    let g = Graceway::start_in(dir, &config(&up, "{dir}/token", ""));
    g.dir.write("token2", "tok-cmd-2\n");
    let cfg = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("/token\"", "/token2\"");
    std::fs::write(&g.config, cfg).unwrap();
    let (code, out, err) = tokio::task::spawn_blocking({
        let c = g.config.clone();
        move || run_cli(&["reload", "-c", c.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reload applied"), "{out}");
    assert!(
        out.contains(&graceway::tokens::fingerprint("tok-cmd-2")),
        "{out}"
    );
    assert!(!out.contains("tok-cmd-2"));
    assert_eq!(token_seen(&g, &up).await, "tok-cmd-2");

    // A failing reload exits non-zero.
    std::fs::write(g.dir.file("token2"), "\n").unwrap();
    let (code, _, err) = tokio::task::spawn_blocking({
        let c = g.config.clone();
        move || run_cli(&["reload", "-c", c.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("FAILED") && err.contains("empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_endpoint_with_bearer() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let dir = TestDir::new();
    dir.write("token", "tok-admin-1\n");
    dir.write("admin-token", "admin-secret\n");
    let g = Graceway::start_in(
        dir,
        &config(&up, "{dir}/token", r#", token_file: "{dir}/admin-token""#),
    );
    let c = client();
    let r = c.post(g.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(g.admin_url("/reload"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(g.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    let cfg = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("/token\"", "/token2\"");
    g.dir.write("token2", "tok-admin-2\n");
    std::fs::write(&g.config, cfg).unwrap();
    let r = c
        .post(g.admin_url("/reload"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["trigger"], "admin");
    assert_eq!(token_seen(&g, &up).await, "tok-admin-2");

    // A failing admin reload answers 422 with the reason.
    std::fs::write(g.dir.file("token2"), "").unwrap();
    let r = c
        .post(g.admin_url("/reload"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(token_seen(&g, &up).await, "tok-admin-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_removes_pid_file() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let dir = TestDir::new();
    dir.write("token", "tok-term\n");
    let mut g = Graceway::start_in(dir, &config(&up, "{dir}/token", ""));
    let pid = std::fs::read_to_string(g.dir.file("graceway.pid")).unwrap();
    assert_eq!(pid.trim(), g.pid().to_string());
    let st = g.stop().expect("exit status");
    assert!(st.success(), "{st:?}");
    assert!(!g.dir.file("graceway.pid").exists());
}

/// `run --daemon` with a relative config path: the daemon changes its
/// working directory to `/`, yet reloads still find the file (and the
/// relative token path in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_with_a_relative_config_path() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let dir = TestDir::new();
    dir.write("token", "tok-daemon-1\n");
    let (listen, admin) = (crate::support::free_port(), crate::support::free_port());
    let yaml = format!(
        "listen: \"127.0.0.1:{listen}\"\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\npid_file: graceway.pid\nupstreams:\n  - name: emoji\n    url: \"http://127.0.0.1:{}\"\n    credentials: {{ tokens: [ {{ file: token }} ] }}\n",
        up.port
    );
    std::fs::write(dir.file("graceway.yaml"), yaml).unwrap();
    let out = std::process::Command::new(crate::support::BIN)
        .args(["run", "-c", "graceway.yaml", "--daemon"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.file("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.file("stderr.log")).unwrap())
        .status()
        .unwrap();
    assert!(out.success());
    struct Kill(std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
    let _guard = Kill(dir.file("graceway.pid"));
    let status_url = format!("http://127.0.0.1:{admin}/status");
    wait_for_async("the daemon to answer", Duration::from_secs(20), || async {
        reqwest::get(&status_url).await.ok().map(|_| ())
    })
    .await;
    let proxy = format!("http://127.0.0.1:{listen}/v1/a");
    assert_eq!(client().get(&proxy).send().await.unwrap().status(), 200);
    assert_eq!(up.requests().last().unwrap().bearer(), Some("tok-daemon-1"));
    dir.write("token", "tok-daemon-2\n");
    let cfg = dir.file("graceway.yaml");
    let (code, o, e) =
        tokio::task::spawn_blocking(move || run_cli(&["reload", "-c", cfg.to_str().unwrap()]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{o}{e}");
    assert_eq!(client().get(&proxy).send().await.unwrap().status(), 200);
    assert_eq!(up.requests().last().unwrap().bearer(), Some("tok-daemon-2"));
}
