#![allow(clippy::useless_format)] // every case is written the same way, placeholders or not
//! `graceway check`: every shipped config passes; bad configs fail with
//! messages that name the field path.

use crate::support::{run_cli, TestDir};

fn check(dir: &TestDir, yaml: &str) -> (i32, String, String) {
    let p = dir.file("check.yaml");
    std::fs::write(&p, yaml).unwrap();
    run_cli(&["check", "-c", p.to_str().unwrap()])
}

const GOOD_HEAD: &str = r#"
listen: "127.0.0.1:18080"
pid_file: /tmp/graceway-check.pid
"#;

#[test]
fn every_shipped_config_passes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            // The examples name production paths and hosts; check the file
            // itself, as on a build machine.
            let (code, out, err) = run_cli(&["check", "--skip-sources", "-c", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected the example configs in conf/");
}

#[test]
fn kubernetes_configmap_config_passes() {
    use serde::Deserialize;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf/kubernetes/graceway-sidecar.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut found = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v["kind"].as_str() != Some("ConfigMap") {
            continue;
        }
        let Some(cfg) = v["data"]["graceway.yaml"].as_str() else {
            continue;
        };
        let dir = TestDir::new();
        let p = dir.file("graceway.yaml");
        std::fs::write(&p, cfg).unwrap();
        let (code, out, err) = run_cli(&["check", "--skip-sources", "-c", p.to_str().unwrap()]);
        assert_eq!(code, 0, "the ConfigMap's graceway.yaml: {out}{err}");
        found += 1;
    }
    assert_eq!(
        found,
        1,
        "one ConfigMap with graceway.yaml in {}",
        path.display()
    );
}

#[test]
fn full_check_reads_sources_and_reports_fingerprints() {
    let dir = TestDir::new();
    dir.write("token", "tok-check-1\n");
    let yaml = format!(
        r#"{GOOD_HEAD}
upstreams:
  - name: emoji
    url: "http://127.0.0.1:9"
    credentials:
      tokens:
        - {{ file: "{}" }}
"#,
        dir.file("token").display()
    );
    let (code, out, err) = check(&dir, &yaml);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("test is successful"), "{out}");
    assert!(
        out.contains(&graceway::tokens::fingerprint("tok-check-1")),
        "{out}"
    );
    assert!(!out.contains("tok-check-1"), "token value printed: {out}");
}

/// (config body after the head, expected fragments of stderr)
fn bad_configs(dir: &TestDir) -> Vec<(String, Vec<&'static str>)> {
    let tok = dir.write("token", "ok-token\n");
    let empty = dir.write("empty", "\n");
    let crlf = dir.write("crlf", "abc\r\nX-Injected: 1\n");
    let big = dir.write("big", &"x".repeat(9000));
    let half = dir.write("half.json", r#"{"key_id": "ok-token"}"#);
    let t = tok.display().to_string();
    vec![
        (
            format!(
                "upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials:\n      inject: [{{ header: X-Key, from: key_id }}, {{ header: X-Secret, from: secret }}]\n      tokens: [{{ file: \"{}\" }}]\n",
                half.display()
            ),
            vec!["upstreams[0].credentials.tokens[0]", "the token has no field `secret`, which `inject` takes a value from"],
        ),
        ("upstreams: []\n".into(), vec!["upstreams: at least one upstream is required"]),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\n    tokenz: 1\n"),
            vec!["upstreams[0]", "unknown field `tokenz`"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"ftp://x\"\n"),
            vec!["upstreams[0].url: `ftp://x` must start with http:// or https://"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x/v1\"\n"),
            vec!["upstreams[0].url:", "must not have a path"],
        ),
        (
            format!("upstreams:\n  - url: \"http://x\"\n"),
            vec!["upstreams[0].name: is required"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\n    timeouts: {{ connect: soon }}\n"),
            vec!["upstreams[0].timeouts.connect: `soon` is not a duration"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\ncache: {{ memory_bytes: lots }}\n"),
            vec!["cache.memory_bytes: `lots` is not a size"],
        ),
        (
            "upstreams:\n  - name: a\n    url: \"http://x\"\n    credentials: none\n    cache: { fresh: always }\n    http: h3\ncache: { coalesce: { wait: soon, fleet: true } }\n".into(),
            vec![
                "upstreams[0].cache.fresh: must be `off` or `honor`, not `always`",
                "upstreams[0].http: must be `auto`, `h1` or `h2`, not `h3`",
                "cache.coalesce.wait: `soon` is not a duration",
                "cache.coalesce.fleet: needs `cache.redis`",
            ],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\n    credentials:\n      inject: {{ header: \"Bad Header\" }}\n      tokens: [ {{ file: {t} }} ]\n"),
            vec!["upstreams[0].credentials.inject.header: `Bad Header` is not a valid header name"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\n    credentials:\n      tokens: [ {{ file: {t}, env: X }} ]\n"),
            vec!["upstreams[0].credentials.tokens[0]: set exactly one of `file`, `env`, `command`, `oauth2` or `fields`"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\n    credentials:\n      tokens: []\n"),
            vec!["upstreams[0].credentials.tokens: at least one token source is required"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\n    credentials:\n      tokens: [ {{ file: {t} }} ]\n      preflight: true\n"),
            vec!["upstreams[0].credentials.preflight: needs `probe`"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\n    stale: {{ on: [401, 418] }}\n"),
            vec!["upstreams[0].stale.on[1]: `418`: must be one of"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://x\"\n  - name: a\n    url: \"http://y\"\n"),
            vec!["upstreams[1].name: `a` is used by an earlier upstream", "upstreams[1].match:"],
        ),
        (
            format!("listen: nowhere\nupstreams:\n  - name: a\n    url: \"http://x\"\n"),
            vec!["listen: `nowhere` is not an address"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials:\n      tokens: [ {{ file: {} }} ]\n", empty.display()),
            vec!["upstreams[0].credentials.tokens[0]:", "the token is empty"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials:\n      tokens: [ {{ file: {} }} ]\n", crlf.display()),
            vec!["upstreams[0].credentials.tokens[0]:", "control character"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials:\n      tokens: [ {{ file: {} }} ]\n", big.display()),
            vec!["upstreams[0].credentials.tokens[0]:", "the limit is 8192"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials:\n      tokens: [ {{ env: GRACEWAY_TEST_SURELY_UNSET }} ]\n"),
            vec!["upstreams[0].credentials.tokens[0]: environment variable GRACEWAY_TEST_SURELY_UNSET is not set"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials:\n      tokens: [ {{ command: [\"false\"] }} ]\n"),
            vec!["upstreams[0].credentials.tokens[0]: command `false` exited with"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"https://127.0.0.1:9\"\n    tls: {{ ca_file: {t} }}\n    credentials: none\n"),
            vec!["upstreams[0].tls.ca_file:", "no PEM certificate found"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials:\n      failover_on: [401, 418]\n      tokens: [ {{ file: {t} }} ]\n"),
            vec!["upstreams[0].credentials.failover_on[1]: `418`: must be one of 401, 403, 429"],
        ),
        (
            format!(
                "upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials:\n      tokens: [ {} ]\n",
                vec![format!("{{ file: {t} }}"); 33].join(", ")
            ),
            vec!["upstreams[0].credentials.tokens: 33 tokens: at most 32 per upstream"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    methods: [GET, TRACE]\n"),
            vec!["upstreams[0].methods[1]: `TRACE` is never forwarded"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials: none\ncache: {{ redis: {{ url: \"http://127.0.0.1:6379\" }} }}\n"),
            vec!["cache.redis.url: `http://127.0.0.1:6379` must start with redis:// or rediss://"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials: none\ncache: {{ redis: {{ cluster: [\"redis://127.0.0.1:7000\", \"redis://:pw@h:notaport\"], timeout: 0s }} }}\n"),
            vec!["cache.redis.cluster[1]:", "cache.redis.timeout: must be greater than zero"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials: none\ncache: {{ redis: {{ url: \"redis://127.0.0.1\", cluster: [\"redis://127.0.0.1\"] }} }}\n"),
            vec!["cache.redis: set either `url` or `cluster`, not both"],
        ),
        // A file cut before `credentials:` (a failed render, a torn write).
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    match: {{ path_prefix: /v1/ }}\n"),
            vec!["upstreams[0].credentials: is required: list the tokens, or write `credentials: none`"],
        ),
        (
            format!("upstreams:\n  - name: a\n    url: \"http://127.0.0.1:9\"\n    credentials: nothing\n"),
            vec!["write `none` for an upstream that needs no token"],
        ),
    ]
}

#[test]
fn bad_configs_fail_with_field_paths() {
    let dir = TestDir::new();
    let cases = bad_configs(&dir);
    assert!(cases.len() >= 12);
    for (body, expected) in cases {
        let yaml = if body.starts_with("listen:") {
            format!("pid_file: /tmp/x.pid\n{body}")
        } else {
            format!("{GOOD_HEAD}{body}")
        };
        let (code, out, err) = check(&dir, &yaml);
        assert_ne!(code, 0, "config should fail:\n{yaml}\nstdout: {out}");
        for e in expected {
            assert!(
                err.contains(e),
                "expected `{e}` in the errors of\n{yaml}\ngot:\n{err}"
            );
        }
        assert!(err.contains("test failed"), "{err}");
        assert!(
            !err.contains("ok-token") && !err.contains("X-Injected"),
            "token value leaked: {err}"
        );
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let dir = TestDir::new();
    let yaml = format!(
        "{GOOD_HEAD}upstreams:\n  - name: a\n    url: \"ftp://x\"\n    credentials: none\n    timeouts: {{ read: never }}\n    stale: {{ max_stale: 0s }}\ncache: {{ max_object_bytes: 2MiB, memory_bytes: 1MiB }}\n"
    );
    let (code, _, err) = check(&dir, &yaml);
    assert_ne!(code, 0);
    for e in [
        "upstreams[0].url:",
        "upstreams[0].timeouts.read:",
        "upstreams[0].stale.max_stale: must be greater than zero",
        "cache.max_object_bytes: must not exceed cache.memory_bytes",
        "(4 errors)",
    ] {
        assert!(err.contains(e), "missing `{e}` in:\n{err}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = run_cli(&["check", "-c", "/nonexistent/graceway.yaml"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot read /nonexistent/graceway.yaml"),
        "{err}"
    );
}

#[test]
fn check_warns_like_run_about_an_admin_listener_anyone_can_reach() {
    let dir = TestDir::new();
    let yaml = format!(
        "{GOOD_HEAD}admin: {{ listen: \"0.0.0.0:19180\" }}\nupstreams:\n  - {{ name: a, url: \"http://127.0.0.1:1\", credentials: none }}\n"
    );
    let (code, out, err) = check_file_only(&dir, &yaml);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: admin.listen 0.0.0.0:19180 is not a loopback address"),
        "{err}"
    );
    // With a bearer, no warning.
    let yaml = yaml.replace(
        "listen: \"0.0.0.0:19180\"",
        "listen: \"0.0.0.0:19180\", token_file: /run/secrets/admin",
    );
    let (code, out, err) = check_file_only(&dir, &yaml);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("admin.listen"), "{err}");
}

fn check_file_only(dir: &TestDir, yaml: &str) -> (i32, String, String) {
    let p = dir.file("check.yaml");
    std::fs::write(&p, yaml).unwrap();
    run_cli(&["check", "--skip-sources", "-c", p.to_str().unwrap()])
}

/// The two stages: `--skip-sources` opens no file the config names (a
/// config checked away from its host), a full check reads each of them and
/// names the field of every one it cannot read.
#[test]
fn skip_sources_opens_no_file_the_config_names_and_a_full_check_reads_them() {
    let dir = TestDir::new();
    let yaml = format!(
        "{GOOD_HEAD}upstreams:
  - name: a
    url: \"https://127.0.0.1:9\"
    tls: {{ ca_file: upstream-ca.pem }}
    credentials:
      tokens: [ {{ file: token }} ]
cache: {{ redis: {{ url: \"rediss://127.0.0.1:9\", ca_file: redis-ca.pem }} }}
alerts: {{ webhook: \"https://127.0.0.1:9/hook\", webhook_ca_file: hook-ca.pem }}
"
    );
    let (code, out, err) = check_file_only(&dir, &yaml);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("token sources not read"), "{out}");

    let (code, _, err) = check(&dir, &yaml);
    assert_ne!(code, 0);
    for (field, file) in [
        ("alerts.webhook_ca_file", "hook-ca.pem"),
        ("cache.redis.ca_file", "redis-ca.pem"),
    ] {
        let want = format!("{field}: cannot read {}", dir.file(file).display());
        assert!(err.contains(&want), "missing `{want}` in:\n{err}");
    }

    // With those readable, the sources come next.
    dir.write("hook-ca.pem", "x");
    dir.write("redis-ca.pem", "x");
    let (code, _, err) = check(&dir, &yaml);
    assert_ne!(code, 0);
    let want = format!(
        "upstreams[0].tls.ca_file: cannot read {}",
        dir.file("upstream-ca.pem").display()
    );
    assert!(err.contains(&want), "missing `{want}` in:\n{err}");
    assert!(!err.contains("webhook_ca_file"), "{err}");
}
