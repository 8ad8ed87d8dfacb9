//! The status page at the admin listener's `/`, in a real browser (Debian's
//! `chromium`, headless) during a scripted outage: the primary token
//! rejected and the standby serving, then both rejected and copies served.
//! The rendered DOM (after the page's script redrew it from `/status`)
//! shows the upstream, the token states and the timeline in order; the
//! server's own render (what reads without JavaScript) says the same. Then what the page
//! refuses (cross-origin reads, framing, inline script) and what it never
//! shows (a token value), and `graceway status --watch` under tmux.
//!
//! `graceway status --watch` is tested in [`watch`].
//!
//! `GRACEWAY_SCREENSHOTS=DIR` also writes a PNG of each phase into DIR
//! (`./dev screenshots` sets it to `target/screenshots`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::support::browser::{attr, dump_dom, screenshot, tags};
use crate::support::mock::Wire;
use crate::support::{
    client, wait_for_async, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir,
};

mod watch;

const PRIMARY: &str = "tok-page-Primary-Secret-1";
const STANDBY: &str = "tok-page-Standby-Secret-2";
const ADMIN_TOKEN: &str = "adm-page-Admin-Secret-3";

/// A vendor that answers the tokens it accepts with a storable 200, its
/// quota, a deprecation notice and a sunset three weeks on, and turns every
/// other token away as revoked.
fn vendor() -> (MockUpstream, Arc<Mutex<Vec<String>>>) {
    let accepted = Arc::new(Mutex::new(vec![PRIMARY.to_string(), STANDBY.to_string()]));
    let a = accepted.clone();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let deprecated = format!("@{}", now - 21 * 86400);
    let sunset = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(21 * 86400));
    let reset = (now + 3600).to_string();
    let up = MockUpstream::start(move |r| {
        let ok = r
            .bearer()
            .is_some_and(|b| a.lock().unwrap().iter().any(|t| t == b));
        if !ok {
            return MockReply::revoked(401, r#"{"error":"invalid_token"}"#);
        }
        MockReply::ok(&format!(r#"{{"path":"{}"}}"#, r.path()))
            .header("Cache-Control", "max-age=60")
            .header("X-RateLimit-Limit", "100")
            .header("X-RateLimit-Remaining", "41")
            .header("X-RateLimit-Reset", &reset)
            .header("Deprecation", &deprecated)
            .header("Sunset", &sunset)
            .header(
                "Link",
                r#"<https://emoji.example/v2>; rel="successor-version""#,
            )
    });
    (up, accepted)
}

fn config(port: u16) -> String {
    EmojiConfig::new(port)
        .health("{ retry_after: 30s, max_retry_after: 60s }")
        .tokens("        - { file: \"{dir}/token\" }\n        - { file: \"{dir}/token.standby\" }")
        .build()
}

fn start(port: u16) -> Graceway {
    let dir = TestDir::new();
    dir.write("token", PRIMARY);
    dir.write("token.standby", STANDBY);
    Graceway::start_in(dir, &config(port))
}

/// Polls `/status` until `pred` holds (20 s at most).
async fn wait_status(
    g: &Graceway,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = g.admin_url("/status");
    wait_for_async(what, Duration::from_secs(20), || {
        let url = url.clone();
        let pred = &pred;
        async move {
            let s: serde_json::Value = client().get(&url).send().await.ok()?.json().await.ok()?;
            pred(&s).then_some(s)
        }
    })
    .await
}

/// Whether the timeline holds a change of `kind` (token `token`) to `to`.
fn has_change(st: &serde_json::Value, kind: &str, token: Option<u64>, to: &str) -> bool {
    st["timeline"].as_array().is_some_and(|t| {
        t.iter()
            .any(|c| c["kind"] == kind && c["token"].as_u64() == token && c["to"] == to)
    })
}

/// The state the page shows for token `index`.
fn token_state(dom: &str, index: usize) -> Option<String> {
    tags(dom, "class=\"token\"")
        .into_iter()
        .find(|t| attr(t, "data-index").as_deref() == Some(&index.to_string()))
        .and_then(|t| attr(t, "data-state"))
}

/// The page's timeline as (kind, token, from, to), top to bottom.
fn page_timeline(dom: &str) -> Vec<(String, String, String, String)> {
    tags(dom, "class=\"change\"")
        .into_iter()
        .map(|t| {
            let a = |n| attr(t, n).unwrap_or_default();
            (
                a("data-kind"),
                a("data-token"),
                a("data-from"),
                a("data-to"),
            )
        })
        .collect()
}

/// `/status`'s timeline as the page must show it: newest first.
fn json_timeline(st: &serde_json::Value) -> Vec<(String, String, String, String)> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    st["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|c| {
            let token = c["token"]
                .as_u64()
                .map(|t| t.to_string())
                .unwrap_or_default();
            (s(&c["kind"]), token, s(&c["from"]), s(&c["to"]))
        })
        .collect()
}

/// The page in the browser at this phase, checked against `/status` read
/// before and after it (a change in between, such as a breaker opening on
/// the next tick, means another look; three at most): the upstream's state,
/// each token's, and the timeline entry for entry. Returns the DOM and the
/// `/status` it matched.
async fn check_phase(g: &Graceway, phase: &str, tokens: [&str; 2]) -> (String, serde_json::Value) {
    let mut looks = 0;
    let (dom, st) = loop {
        looks += 1;
        let before = g.status().await;
        let dom = dump_dom(&g.admin_url("/"), 5000);
        let after = g.status().await;
        let settled = before["timeline"] == after["timeline"]
            && before["upstreams"][0]["state"] == after["upstreams"][0]["state"];
        if settled || looks == 3 {
            break (dom, after);
        }
    };
    let st = &st;
    let ctx = || format!("phase {phase}; /status {st:#}\nDOM:\n{dom}");
    let updated = tags(&dom, "id=\"updated\"");
    assert_eq!(
        updated
            .first()
            .and_then(|t| attr(t, "data-source"))
            .as_deref(),
        Some("live"),
        "the page's script did not redraw it from /status: {}",
        ctx()
    );
    let banner = tags(&dom, "id=\"offline\"");
    assert!(
        banner.first().is_some_and(|b| b.contains(" hidden")),
        "the page says it cannot read /status: {}",
        ctx()
    );
    let article = tags(&dom, "class=\"upstream ");
    assert_eq!(article.len(), 1, "{}", ctx());
    assert_eq!(attr(article[0], "data-upstream").as_deref(), Some("emoji"));
    assert_eq!(
        attr(article[0], "data-state").as_deref(),
        st["upstreams"][0]["state"].as_str(),
        "{}",
        ctx()
    );
    for (i, want) in tokens.iter().enumerate() {
        assert_eq!(
            token_state(&dom, i).as_deref(),
            Some(*want),
            "token {i}: {}",
            ctx()
        );
    }
    for b in ["health", "auth"] {
        let tag = tags(&dom, &format!("data-breaker=\"{b}\""));
        let open = st["upstreams"][0]["breakers"][b]["open"].as_bool().unwrap();
        assert_eq!(
            tag.first().and_then(|t| attr(t, "data-open")),
            Some(open.to_string()),
            "{b} breaker: {}",
            ctx()
        );
    }
    assert_eq!(page_timeline(&dom), json_timeline(st), "{}", ctx());
    for want in [
        "41 / 100",
        "deprecated from",
        "sunset at",
        "successor-version: https://emoji.example/v2",
    ] {
        assert!(dom.contains(want), "{want:?} not on the page: {}", ctx());
    }
    if let Ok(dir) = std::env::var("GRACEWAY_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = g.admin_url("/");
        screenshot(&url, &dir.join(format!("{phase}.png")), 1280, 1000, 5000);
        screenshot(
            &url,
            &dir.join(format!("{phase}-narrow.png")),
            420,
            1600,
            5000,
        );
    }
    (dom, st.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_an_outage_in_a_real_browser() {
    let (up, accepted) = vendor();
    let g = start(up.port);

    // 1. Healthy: the primary answers, with its quota and the vendor's notice.
    let r = g.get("/v1/emojis/smile").await;
    assert_eq!(r.status(), 200);
    wait_status(&g, "the quota and notice", |s| {
        let t = &s["upstreams"][0]["tokens"][0];
        t["quota"]["remaining"] == 41 && t["notice"]["deprecated"] == true
    })
    .await;
    check_phase(&g, "1-healthy", ["active", "active"]).await;

    // 2. The vendor revokes the primary: the standby answers, fresh.
    accepted.lock().unwrap().retain(|t| t != PRIMARY);
    let r = g.get("/v1/emojis/smile").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-graceway-degraded").is_none());
    wait_status(&g, "token 0 rejected in the timeline", |s| {
        has_change(s, "token", Some(0), "rejected")
    })
    .await;
    check_phase(&g, "2-failover", ["rejected", "active"]).await;

    // 3. Then the standby too: the copy is served, and says so.
    accepted.lock().unwrap().clear();
    let r = g.get("/v1/emojis/smile").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-graceway-degraded")
            .and_then(|v| v.to_str().ok()),
        Some("token-rejected")
    );
    wait_status(&g, "the outage in the timeline", |s| {
        has_change(s, "token", Some(1), "rejected")
            && has_change(s, "upstream", None, "degraded")
            && s["upstreams"][0]["state"] == "degraded"
    })
    .await;
    let (dom, st) = check_phase(&g, "3-outage", ["rejected", "rejected"]).await;

    // The timeline, newest first: the standby's rejection above the
    // primary's, each with the vendor's words.
    let changes = page_timeline(&dom);
    let at = |token: &str| {
        changes
            .iter()
            .position(|c| c.0 == "token" && c.1 == token && c.3 == "rejected")
            .unwrap_or_else(|| panic!("no rejection of token {token} on the page: {changes:?}"))
    };
    assert!(at("1") < at("0"), "not newest first: {changes:?}");
    let timeline = st["timeline"].as_array().unwrap();
    let times: Vec<&str> = timeline.iter().map(|c| c["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let primary = timeline
        .iter()
        .find(|c| c["token"] == 0 && c["to"] == "rejected")
        .unwrap();
    assert_eq!(primary["from"], "active", "{primary}");
    assert_eq!(
        primary["fingerprint"],
        graceway::tokens::fingerprint(PRIMARY)
    );
    assert!(
        primary["reason"]
            .as_str()
            .is_some_and(|r| r.contains("invalid_token")),
        "{primary}"
    );

    // Without JavaScript the page is the server's own render (what the
    // browser got before the script ran): it says the same.
    let plain = client()
        .get(g.admin_url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let updated = tags(&plain, "id=\"updated\"");
    assert_eq!(
        updated
            .first()
            .and_then(|t| attr(t, "data-source"))
            .as_deref(),
        Some("server"),
        "{plain}"
    );
    assert_eq!(
        token_state(&plain, 0).as_deref(),
        Some("rejected"),
        "{plain}"
    );
    assert_eq!(
        token_state(&plain, 1).as_deref(),
        Some("rejected"),
        "{plain}"
    );
    assert_eq!(page_timeline(&plain), json_timeline(&st), "{plain}");
}

/// A page on another origin (the mock's port) that tries to read the admin
/// listener's `/status` and `/` with `fetch`, and writes what happened
/// into `<body data-status=... data-page=...>`.
fn other_site(admin: u16) -> MockUpstream {
    let html = format!(
        r#"<!doctype html><html><body data-status="pending" data-page="pending"><script>
const read = (path, key) => fetch("http://127.0.0.1:{admin}" + path, {{ credentials: "include" }})
  .then((r) => r.text())
  .then((t) => {{ document.body.dataset[key] = "read:" + t.length; }})
  .catch((e) => {{ document.body.dataset[key] = "blocked"; }});
read("/status", "status");
read("/", "page");
</script></body></html>"#
    );
    MockUpstream::start(move |_| MockReply {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: html.clone().into_bytes(),
        delay: Duration::ZERO,
        wire: Wire::Normal,
        hold: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_refuses_cross_origin_reads_and_shows_no_token_value() {
    let (up, accepted) = vendor();
    let dir = TestDir::new();
    dir.write("token", PRIMARY);
    dir.write("token.standby", STANDBY);
    dir.write("admin-token", ADMIN_TOKEN);
    // Every tier on, so that the script draws each: memory, a persist
    // file, the fleet tier (and its ledger) on a real Redis.
    let redis = crate::support::redis::Redis::start(&[]);
    let template = EmojiConfig::new(up.port)
        .health("{ retry_after: 30s, max_retry_after: 60s }")
        .tokens("        - { file: \"{dir}/token\" }\n        - { file: \"{dir}/token.standby\" }")
        .top(&format!(
            "cache: {{ persist: {{ path: \"{{dir}}/stale.redb\" }}, redis: {{ url: \"{}\" }} }}",
            redis.url()
        ))
        .build()
        .replace(
            r#"admin: { listen: "127.0.0.1:{admin}" }"#,
            r#"admin: { listen: "127.0.0.1:{admin}", token_file: "{dir}/admin-token" }"#,
        );
    assert!(template.contains("token_file"), "{template}");
    let g = Graceway::start_in(dir, &template);
    // Traffic through each path that names a token: fresh, failover, stale.
    assert_eq!(g.get("/v1/a").await.status(), 200);
    accepted.lock().unwrap().retain(|t| t != PRIMARY);
    assert_eq!(g.get("/v1/a").await.status(), 200);
    accepted.lock().unwrap().clear();
    assert_eq!(g.get("/v1/a").await.status(), 200);
    wait_status(&g, "both tokens rejected in the timeline", |s| {
        has_change(s, "token", Some(0), "rejected") && has_change(s, "token", Some(1), "rejected")
    })
    .await;

    // Every part of the page, asked for as another site would: no CORS
    // header, never framed, same-origin resources only.
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    let mut served = String::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/status.js", "text/javascript"),
        ("/status.css", "text/css"),
        ("/status", "application/json"),
    ] {
        let r = client()
            .get(g.admin_url(path))
            .header("Origin", "http://evil.example")
            .header("Sec-Fetch-Site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let cors: Vec<_> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(
            cors.is_empty(),
            "{path} answers with CORS headers: {cors:?}"
        );
        assert!(
            get("content-type").is_some_and(|c| c.starts_with(kind)),
            "{path}: {h:?}"
        );
        assert_eq!(
            get("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(get("cache-control").as_deref(), Some("no-store"), "{path}");
        assert_eq!(
            get("cross-origin-resource-policy").as_deref(),
            Some("same-origin"),
            "{path}"
        );
        if path != "/status" {
            assert_eq!(
                get("content-security-policy").as_deref(),
                Some(csp),
                "{path}"
            );
            assert_eq!(get("x-frame-options").as_deref(), Some("DENY"), "{path}");
        }
        served.push_str(&r.text().await.unwrap());
    }
    // No inline script or style for the CSP to refuse: the page's own
    // script is its file.
    let page = client()
        .get(g.admin_url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(
        page.contains(r#"<script src="/status.js" defer></script>"#),
        "{page}"
    );
    assert!(
        !page.contains("<style") && !page.contains(" style="),
        "{page}"
    );
    assert!(
        page.contains("POST /reload needs Authorization: Bearer"),
        "{page}"
    );
    for secret in [PRIMARY, STANDBY, ADMIN_TOKEN] {
        assert!(!served.contains(secret), "{secret} is served:\n{served}");
        assert!(!g.logs().contains(secret), "{secret} is logged");
    }
    assert!(served.contains(&graceway::tokens::fingerprint(PRIMARY)));

    // In a real browser: a page of another origin cannot read /status or
    // the page; the page itself, same-origin, can (the control).
    let other = other_site(g.admin);
    let dom = dump_dom(&format!("http://127.0.0.1:{}/", other.port), 5000);
    let body = tags(&dom, "data-status=");
    assert_eq!(body.len(), 1, "{dom}");
    assert_eq!(
        attr(body[0], "data-status").as_deref(),
        Some("blocked"),
        "{dom}"
    );
    assert_eq!(
        attr(body[0], "data-page").as_deref(),
        Some("blocked"),
        "{dom}"
    );
    let own = dump_dom(&g.admin_url("/"), 5000);
    let updated = tags(&own, "id=\"updated\"");
    assert_eq!(
        updated
            .first()
            .and_then(|t| attr(t, "data-source"))
            .as_deref(),
        Some("live"),
        "{own}"
    );
    for secret in [PRIMARY, STANDBY, ADMIN_TOKEN] {
        assert!(!own.contains(secret), "{secret} on the page:\n{own}");
    }
    // The script drew every tier and where each token's state came from.
    let fleet = tags(&own, "data-tier=\"fleet\"");
    assert_eq!(
        fleet
            .first()
            .and_then(|t| attr(t, "data-health"))
            .as_deref(),
        Some("up"),
        "{own}"
    );
    assert!(own.contains("stale.redb open"), "{own}");
    assert!(own.contains("rejected here at"), "{own}");

    // The bearer guards the one write, as before: a reload without it is
    // refused; with it, it lands at the top of the page's timeline.
    let reload = |bearer: Option<&str>| {
        let mut r = client().post(g.admin_url("/reload"));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        r.send()
    };
    assert_eq!(reload(None).await.unwrap().status(), 401);
    assert_eq!(reload(Some(ADMIN_TOKEN)).await.unwrap().status(), 200);
    wait_status(&g, "the reload in the timeline", |s| {
        has_change(s, "reload", None, "generation 2")
    })
    .await;
    // The state watch may add an entry between two reads: compare the page
    // with /status read before and after it, once the two agree.
    let (page, st) = wait_for_async(
        "a page between two equal timelines",
        Duration::from_secs(10),
        || async {
            let before = g.status().await;
            let page = client()
                .get(g.admin_url("/"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let after = g.status().await;
            (json_timeline(&before) == json_timeline(&after)).then_some((page, after))
        },
    )
    .await;
    let changes = page_timeline(&page);
    assert_eq!(changes, json_timeline(&st), "{page}");
    assert_eq!(changes[0].0, "reload", "{changes:?}");
    assert_eq!(changes[0].2, "generation 1", "{changes:?}");
    assert!(!page.contains(ADMIN_TOKEN) && !g.logs().contains(ADMIN_TOKEN));
}
