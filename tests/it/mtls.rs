//! Client certificates to the upstream (`tls.client_cert`, `tls.client_key`)
//! against a real nginx with `ssl_verify_client on`: the certificate is
//! sent and nginx names it; without one nginx answers its own 400, which
//! graceway passes on; a rotation written as Kubernetes writes a Secret
//! (the `..data` symlink swap) under load drops no request; a pair the
//! upstream refuses (another CA) is caught by preflight and a pair whose key
//! does not match is refused, both keeping the old pair; a certificate near
//! its end is `expiring` in `/status`, the metric and `graceway check`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::support::config::HEAD;
use crate::support::mock::TlsFixture;
use crate::support::nginx::Nginx;
use crate::support::{client, metric_value, run_cli, wait_for, wait_for_async, Graceway, TestDir};

/// A CA that issues client certificates.
struct ClientCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A client certificate and its key, as PEM, and its fingerprint.
struct Issued {
    cert_pem: String,
    key_pem: String,
    fingerprint: String,
    not_after: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl ClientCa {
    fn new(name: &str) -> ClientCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        ClientCa {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A client certificate for `cn`, valid from 10 days ago until
    /// `days_left` days from now (whole seconds).
    fn issue(&self, cn: &str, days_left: u64) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let now = unix_now();
        let not_after = now + days_left * 86_400;
        p.not_before = epoch + Duration::from_secs(now - 10 * 86_400);
        p.not_after = epoch + Duration::from_secs(not_after);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            fingerprint: format!("sha256:{}", hex(&Sha256::digest(cert.der()))),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// nginx over TLS that requires a client certificate from `ca` and answers
/// `{"cn": <the certificate's subject>, "path": ...}` to `Bearer tok-mtls`,
/// 401 to anything else. Returns it and the CA of its server certificate.
async fn vendor(dir: &TestDir, ca: &ClientCa) -> (Nginx, String) {
    let fx = TlsFixture::new();
    dir.write("cert.pem", &fx.cert_pem);
    dir.write("key.pem", &fx.key_pem);
    dir.write("client-ca.pem", &ca.cert.pem());
    let d = dir.path().display();
    let http = format!(
        r#"
    server {{
        listen 127.0.0.1:{{port}} ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_client_certificate {d}/client-ca.pem;
        ssl_verify_client on;
        keepalive_requests 100000;
        default_type application/json;
        location / {{
            if ($http_authorization != "Bearer tok-mtls") {{
                return 401 '{{"error":"unauthorized"}}';
            }}
            return 200 '{{"cn":"$ssl_client_s_dn","path":"$uri"}}';
        }}
    }}
"#
    );
    (Nginx::start(dir.path(), &http).await, fx.ca_pem)
}

/// Writes the pair into `dir/..v<n>/` and points `dir/..data` at it in one
/// rename, as the kubelet updates a Secret volume; `client.pem` and
/// `client.key` are symlinks through `..data`.
fn install(dir: &TestDir, n: u32, cert_pem: &str, key_pem: &str) {
    let v = dir.file(&format!("..v{n}"));
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("client.pem"), cert_pem).unwrap();
    std::fs::write(v.join("client.key"), key_pem).unwrap();
    let tmp = dir.file("..data_tmp");
    std::os::unix::fs::symlink(format!("..v{n}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.file("..data")).unwrap();
    for f in ["client.pem", "client.key"] {
        let link = dir.file(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

/// graceway with upstream `bank` (the client certificate in `{dir}`,
/// installed first as `first`) and upstream `nocert` (same nginx, no
/// certificate) under `/nocert`; `extra` goes into bank's credentials.
fn graceway(port: u16, server_ca: &str, first: &Issued, extra: &str) -> Graceway {
    let dir = TestDir::new();
    dir.write("ca.pem", server_ca);
    dir.write("token", "tok-mtls\n");
    install(&dir, 1, &first.cert_pem, &first.key_pem);
    Graceway::start_in(
        dir,
        &format!(
            r#"{HEAD}upstreams:
  - name: bank
    url: "https://127.0.0.1:{port}"
    timeouts: {{ connect: 2s, read: 5s }}
    tls: {{ ca_file: "{{dir}}/ca.pem", client_cert: "{{dir}}/client.pem", client_key: "{{dir}}/client.key" }}
    credentials:
      tokens: [ {{ file: "{{dir}}/token" }} ]
      {extra}
  - name: nocert
    url: "https://127.0.0.1:{port}"
    match: {{ path_prefix: /nocert }}
    tls: {{ ca_file: "{{dir}}/ca.pem" }}
    credentials:
      tokens: [ {{ file: "{{dir}}/token" }} ]
"#
        ),
    )
}

async fn bank_cert(g: &Graceway) -> serde_json::Value {
    let st = g.status().await;
    st["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bank")
        .unwrap()["client_cert"]
        .clone()
}

/// The first reload record after attempt `after` whose message contains
/// `want` (a stray second refresh from the same folder events may record
/// the previous step again in between).
async fn wait_record(g: &Graceway, after: u64, want: &str) -> serde_json::Value {
    wait_for_async(
        &format!("a reload record saying {want:?}"),
        Duration::from_secs(30),
        || async move {
            let r = g.status().await["reload"].clone();
            let fits = r["attempt"].as_u64()? > after && r["message"].as_str()?.contains(want);
            fits.then_some(r)
        },
    )
    .await
}

/// GET `path` through graceway: (status, body).
async fn get(c: &reqwest::Client, g: &Graceway, path: &str) -> (u16, String) {
    let r = c.get(g.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_sent_and_nginx_answers_400_without_one() {
    let ca = ClientCa::new("bank client CA");
    let ndir = TestDir::new();
    let (nginx, server_ca) = vendor(&ndir, &ca).await;
    let one = ca.issue("client-1", 90);
    let g = graceway(nginx.port, &server_ca, &one, "");
    let c = client();

    let (status, body) = get(&c, &g, "/accounts").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("CN=client-1"), "{body}");

    // Without a certificate nginx completes the handshake and answers its
    // own 400: the vendor's answer, passed on (not a stale trigger).
    let (status, body) = get(&c, &g, "/nocert/accounts").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("No required SSL certificate was sent"),
        "{body}"
    );

    let cert = bank_cert(&g).await;
    assert_eq!(cert["fingerprint"], one.fingerprint.as_str(), "{cert}");
    assert_eq!(cert["subject"], "CN=client-1", "{cert}");
    assert_eq!(cert["state"], "active", "{cert}");
    let m = g.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "graceway_upstream_client_cert_expiry_timestamp_seconds{upstream=\"bank\"}"
        ),
        Some(one.not_after as f64)
    );
    let text = crate::support::run_cli(&["status", "--admin", &g.admin_url("")]).1;
    assert!(
        text.contains(&format!("bank client certificate {}", one.fingerprint)),
        "{text}"
    );
    // The key is never shown or logged.
    let key_line = one.key_pem.lines().nth(1).unwrap();
    let st = g.status().await.to_string();
    assert!(!st.contains(key_line) && !m.contains(key_line) && !g.logs().contains(key_line));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_load_fails_no_request() {
    let ca = ClientCa::new("bank client CA");
    let ndir = TestDir::new();
    let (nginx, server_ca) = vendor(&ndir, &ca).await;
    let (one, two) = (ca.issue("client-1", 90), ca.issue("client-2", 90));
    let g = Arc::new(graceway(nginx.port, &server_ca, &one, ""));

    let rotated = Arc::new(AtomicBool::new(false));
    let (ok, failed, after) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (g, rotated, ok, failed, after) = (
            g.clone(),
            rotated.clone(),
            ok.clone(),
            failed.clone(),
            after.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut seen_two = 0u32;
            // Bounded: stops once this worker got 20 answers from the new
            // certificate, or after 20,000 requests.
            for _ in 0..20_000 {
                match c.get(g.url("/accounts")).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let body = r.text().await.unwrap_or_default();
                        if body.contains("CN=client-2") {
                            after.fetch_add(1, Ordering::Relaxed);
                            seen_two += 1;
                        }
                    }
                    other => {
                        eprintln!("failed during the rotation: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if rotated.load(Ordering::Relaxed) && seen_two >= 20 {
                    break;
                }
            }
        }));
    }
    wait_for_async("load before the rotation", Duration::from_secs(20), || {
        let ok = ok.load(Ordering::Relaxed);
        async move { (ok >= 50).then_some(()) }
    })
    .await;
    install(&g.dir, 2, &two.cert_pem, &two.key_pem);
    wait_for_async(
        "the new certificate in /status",
        Duration::from_secs(20),
        || {
            let g = g.clone();
            let want = two.fingerprint.clone();
            async move { (bank_cert(&g).await["fingerprint"] == want.as_str()).then_some(()) }
        },
    )
    .await;
    rotated.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{}", g.logs());
    assert!(
        after.load(Ordering::Relaxed) >= 80,
        "the new certificate was not used"
    );
    let reload = g.status().await["reload"].clone();
    assert_eq!(reload["ok"], true, "{reload}");
    let msg = reload["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "bank.client_cert {} -> {}",
            one.fingerprint, two.fingerprint
        )),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_the_upstream_refuses_or_that_does_not_match_keeps_the_old_one() {
    let ca = ClientCa::new("bank client CA");
    let other = ClientCa::new("some other CA");
    let ndir = TestDir::new();
    let (nginx, server_ca) = vendor(&ndir, &ca).await;
    let one = ca.issue("client-1", 90);
    let g = graceway(
        nginx.port,
        &server_ca,
        &one,
        "probe: { path: /probe }\n      preflight: true",
    );
    let c = client();
    assert_eq!(get(&c, &g, "/a").await.0, 200);

    // A certificate of a CA nginx does not trust: preflight gets nginx's
    // 400 and the rotation is refused.
    let untrusted = other.issue("client-x", 90);
    let before = g.reload_attempt().await;
    install(&g.dir, 2, &untrusted.cert_pem, &untrusted.key_pem);
    let r = wait_record(&g, before, &untrusted.fingerprint).await;
    assert_eq!(r["ok"], false, "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "upstreams[0].tls.client_cert: preflight: upstream bank refused client certificate"
        ) && msg.contains(&untrusted.fingerprint),
        "{msg}"
    );
    assert_eq!(bank_cert(&g).await["fingerprint"], one.fingerprint.as_str());
    let (status, body) = get(&c, &g, "/a").await;
    assert_eq!(
        (status, body.contains("CN=client-1")),
        (200, true),
        "{body}"
    );

    // A certificate with another certificate's key: refused at load.
    let (two, three) = (ca.issue("client-2", 90), ca.issue("client-3", 90));
    let before = g.reload_attempt().await;
    install(&g.dir, 3, &two.cert_pem, &three.key_pem);
    let r = wait_record(&g, before, "is not the key of").await;
    assert_eq!(r["ok"], false, "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("upstreams[0].tls.client_key:") && msg.contains("is not the key of"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "the previous certificate {} stays in use",
            one.fingerprint
        )),
        "{msg}"
    );
    assert_eq!(bank_cert(&g).await["fingerprint"], one.fingerprint.as_str());
    assert_eq!(get(&c, &g, "/a").await.0, 200);

    // The good pair then goes through preflight and applies.
    let before = g.reload_attempt().await;
    install(&g.dir, 4, &two.cert_pem, &two.key_pem);
    let r = wait_record(&g, before, &two.fingerprint).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(bank_cert(&g).await["fingerprint"], two.fingerprint.as_str());
    let (status, body) = get(&c, &g, "/a").await;
    assert_eq!(
        (status, body.contains("CN=client-2")),
        (200, true),
        "{body}"
    );
    assert!(g.logs().contains(&format!(
        "preflight: client certificate {} accepted",
        two.fingerprint
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_its_end_is_expiring_in_status_metrics_and_check() {
    let ca = ClientCa::new("bank client CA");
    let ndir = TestDir::new();
    let (nginx, server_ca) = vendor(&ndir, &ca).await;
    // Valid 12 days in all, 2 left: in its last third.
    let soon = ca.issue("client-soon", 2);
    let g = graceway(nginx.port, &server_ca, &soon, "");
    assert_eq!(get(&client(), &g, "/a").await.0, 200);
    let cert = bank_cert(&g).await;
    assert_eq!(cert["state"], "expiring", "{cert}");
    let m = g.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "graceway_upstream_client_cert_expiry_timestamp_seconds{upstream=\"bank\"}"
        ),
        Some(soon.not_after as f64)
    );
    // The state watch says so once: the log (a WARN), the timeline and
    // the webhook carry the same event.
    let line = format!(
        "upstream bank: client certificate {} is now expiring (was new)",
        soon.fingerprint
    );
    wait_for(
        "the certificate's state change in the log",
        Duration::from_secs(10),
        || g.logs().contains(&line).then_some(()),
    );
    assert_eq!(g.logs().matches(&line).count(), 1, "{}", g.logs());

    let config = g.config.to_str().unwrap().to_string();
    let (code, out, err) = run_cli(&["check", "-c", &config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "upstream bank client certificate {} (CN=client-soon), key matches, expiring",
            soon.fingerprint
        )),
        "{out}"
    );
    assert!(
        err.contains("upstreams[0].tls.client_cert is expiring"),
        "{err}"
    );

    // A key that is not the certificate's fails the check, by field.
    let other = ca.issue("client-other", 90);
    install(&g.dir, 2, &soon.cert_pem, &other.key_pem);
    let (code, out, err) = run_cli(&["check", "-c", &config]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("upstreams[0].tls.client_key:") && err.contains("is not the key of"),
        "{err}"
    );
}
