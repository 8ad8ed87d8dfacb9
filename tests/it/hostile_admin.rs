//! Hostile clients of the admin listener: cross-site reloads, bursts of
//! them, DNS-rebinding `Host`s and a second `Origin`. Rows of
//! `docs/reliability.md`, beside `hostile.rs` (the proxy listener).

use std::time::Duration;

use crate::support::{client, raw_exchange, EmojiConfig, Graceway, MockReply, MockUpstream};

const TOKEN: &str = "tok-crown-jewel-7f3a";

fn start(cfg: EmojiConfig) -> Graceway {
    Graceway::start_with_token(&format!("{TOKEN}\n"), &cfg.build())
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_reloads_are_refused_and_bursts_coalesce() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    // A token source that takes 300 ms, so each reload run lasts long
    // enough for the burst to arrive during it, however fast the machine
    // (with a file source a run took ~1 ms and the count was timing).
    let g = start(EmojiConfig::new(up.port).tokens(&format!(
        "        - {{ command: [\"sh\", \"-c\", \"sleep 0.3; echo {TOKEN}\"], timeout: 5s }}"
    )));
    let c = client();
    let url = g.admin_url("/reload");
    for (name, value) in [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Site", "same-site"),
    ] {
        let r = c.post(&url).header(name, value).send().await.unwrap();
        assert_eq!(r.status(), 403, "{name}: {value}");
    }
    let before = g.reload_attempt().await;
    assert_eq!(before, 0, "a refused reload must not run");
    let own = format!("http://127.0.0.1:{}", g.admin);
    let r = c.post(&url).header("Origin", own).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // 40 concurrent reloads share at most a few runs.
    let before = g.reload_attempt().await;
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move { c.post(&url).send().await.unwrap().status() })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    let runs = g.reload_attempt().await - before;
    assert!(
        (1..=10).contains(&runs),
        "{runs} reload runs for 40 requests"
    );
}

#[test]
fn the_admin_listener_refuses_rebinding_hosts_and_two_origins() {
    let up = MockUpstream::start(|_| MockReply::ok("{}"));
    let cfg = EmojiConfig::new(up.port).build().replace(
        r#"admin: { listen: "127.0.0.1:{admin}" }"#,
        r#"admin: { listen: "127.0.0.1:{admin}", allowed_hosts: [graceway-admin.internal] }"#,
    );
    assert!(cfg.contains("allowed_hosts"));
    let g = Graceway::start_with_token(&format!("{TOKEN}\n"), &cfg);
    let ask = |head: &str| {
        raw_exchange(
            g.admin,
            format!("{head}Connection: close\r\n\r\n").as_bytes(),
            WAIT,
        )
    };
    let port = g.admin;
    // A page on evil.example whose name now resolves to 127.0.0.1.
    for head in [
        format!("POST /reload HTTP/1.1\r\nHost: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\nContent-Length: 0\r\n"),
        format!("GET /status HTTP/1.1\r\nHost: evil.example:{port}\r\n"),
        "GET /metrics HTTP/1.1\r\nHost: evil.example\r\n".to_string(),
        "GET /status HTTP/1.1\r\nHost: \r\n".to_string(),
    ] {
        let r = ask(&head);
        assert_eq!(r.status(), 421, "{head}: {}", r.text);
        assert!(!r.text.contains("upstreams"), "{}", r.text);
    }
    let r = ask(&format!(
        "POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\n"
    ));
    assert_eq!(r.status(), 403, "{}", r.text);
    assert_eq!(g.logs().matches("reload").count(), 0, "{}", g.logs());
    // The listener's own names still work.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "graceway-admin.internal".to_string(),
    ] {
        let r = ask(&format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n"));
        assert_eq!(r.status(), 200, "{host}: {}", r.text);
    }
}
