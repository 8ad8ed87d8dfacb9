//! The page's server-side render: every string escaped, every value of a
//! full `/status` document shown, the timeline newest first.

use super::*;

/// What a vendor, a ledger record or a config could slip into the page.
const HOSTILE: [&str; 6] = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "' onmouseover='alert(1)",
    "</td></tr></table><iframe src=//evil.example>",
    "&lt;already escaped&gt; & more",
    "javascript:alert(document.cookie)",
];

#[test]
fn esc_leaves_no_markup_in_hostile_strings() {
    for h in HOSTILE {
        let e = esc(h);
        for bad in ['<', '>', '"', '\''] {
            assert!(!e.contains(bad), "{bad:?} left in {e:?} (from {h:?})");
        }
        // Every `&` starts an entity this function wrote.
        let amp = e.matches('&').count();
        let entities = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
            .iter()
            .map(|x| e.matches(x).count())
            .sum::<usize>();
        assert_eq!(amp, entities, "{e:?}");
    }
    assert_eq!(
        esc("a<b>&\"c'"),
        "a&lt;b&gt;&amp;&quot;c&#39;",
        "each character maps to its entity"
    );
    assert_eq!(esc("plain text, ünïcode 🔥"), "plain text, ünïcode 🔥");
}

/// The full document with a hostile string in every field a vendor, the
/// fleet or a config supplies.
fn hostile() -> Status {
    let mut st = crate::admin::status::tests::full();
    let u = &mut st.upstreams[0];
    u.name = HOSTILE[0].into();
    u.url = HOSTILE[1].into();
    u.route.path_prefix = HOSTILE[2].into();
    if let Some(c) = u.client_cert.as_mut() {
        // A certificate's subject is whatever its issuer wrote.
        c.subject = HOSTILE[4].into();
    }
    let t = &mut u.tokens[0];
    t.detail = Some(HOSTILE[3].into());
    t.error = Some(HOSTILE[4].into());
    t.source = HOSTILE[1].into();
    if let Some(l) = t.learned.as_mut() {
        l.replica = HOSTILE[0].into();
    }
    if let Some(n) = t.notice.as_mut() {
        n.links[0].url = HOSTILE[5].into();
        n.links[0].rel = HOSTILE[3].into();
    }
    st.timeline[0].reason = Some(HOSTILE[3].into());
    st.timeline[0].upstream = Some(HOSTILE[1].into());
    if let Some(f) = st.cache.fleet.as_mut() {
        f.last_error = Some(HOSTILE[0].into());
    }
    st.version = HOSTILE[2].into();
    st
}

#[test]
fn hostile_strings_are_shown_as_text_never_as_markup() {
    let page = html(&hostile(), false);
    for h in HOSTILE {
        if h.contains(['<', '>', '"', '\'']) {
            assert!(!page.contains(h), "{h:?} is in the page unescaped");
        }
        assert!(page.contains(&esc(h)), "{h:?} is not shown (escaped)");
    }
    // The only elements are the page's own.
    for tag in ["<script", "<img", "<iframe"] {
        let n = page.matches(tag).count();
        let expected = usize::from(tag == "<script");
        assert_eq!(n, expected, "{tag} appears {n} times");
    }
    assert!(page.contains("<script src=\"/status.js\" defer></script>"));
    // Every tag is one the page writes itself, and no attribute is an
    // event handler.
    const OURS: [&str; 30] = [
        "!doctype", "html", "head", "meta", "title", "link", "script", "body", "p", "main",
        "header", "h1", "h2", "span", "section", "article", "dl", "div", "dt", "dd", "table",
        "thead", "tbody", "tr", "th", "td", "code", "small", "meter", "footer",
    ];
    for tag in page.split('<').skip(1) {
        let end = tag.find('>').expect("a closed tag");
        let inside = &tag[..end];
        let name = inside
            .trim_start_matches('/')
            .split([' ', '>'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            OURS.contains(&name.as_str()) || ["ol", "li", "time", "!--"].contains(&name.as_str()),
            "a tag the page does not write: <{inside}>"
        );
        // Attribute names only: the quoted values are escaped text.
        let names: String = inside.split('"').step_by(2).collect();
        assert!(!names.contains(" on"), "an event attribute: <{inside}>");
    }
    assert!(!page.contains("href=\"javascript:"));
}

#[test]
fn the_page_shows_every_part_of_the_document() {
    let st = crate::admin::status::tests::full();
    let page = html(&st, true);
    for want in [
        "<article class=\"upstream s-degraded\" data-upstream=\"emoji\" data-state=\"degraded\">",
        "token-rejected since 2026-12-01T10:00:03Z",
        "data-breaker=\"health\" data-open=\"true\"",
        "open (upstream-5xx) since 2026-12-01T10:00:01Z, next trial 2026-12-01T10:00:11Z",
        "data-index=\"0\" data-fingerprint=\"sha256:3ca7c3e0\" data-state=\"rejected\"",
        "invalid_token (revoked)",
        "rejected by replica emoji-7d9f/12 at 2026-12-01T10:00:02Z (fleet ledger)",
        "0 / 100, resets 2026-12-01T11:00:00Z",
        "deprecated from 2026-12-01T00:00:00Z; sunset at 2027-01-01T00:00:00Z; successor-version: https://api.emoji.example/v2",
        "cool-down until 2026-12-01T10:01:00Z",
        "2027-03-01T00:00:00Z",
        "2 copies (1.0 KiB)",
        "calls spared: 31 fresh hits · 32 stale-while-revalidate · 33 coalesced, 34 waiting · revalidated 35 × 304, 36 × 200, 37 failed",
        "tokens by round_robin · sticky header x-session-id · quota queue 3 of 100 waiting (max wait 2000 ms)",
        "<p class=\"client-cert\" data-state=\"expiring\">client certificate sha256:5d1c0a3f9e8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d · CN=graceway-client,O=Bank Ltd · expiring · valid 2026-11-01T00:00:00Z to 2026-12-20T00:00:00Z</p>",
        "/var/lib/graceway/stale.redb open",
        "data-tier=\"fleet\" data-health=\"up\"",
        "11 hits, 12 misses, 13 writes, 14 errors, 15 dropped · last error: timed out",
        "data-source=\"server\"",
        "POST /reload needs Authorization: Bearer",
    ] {
        assert!(page.contains(want), "{want:?} not in the page:\n{page}");
    }
    // Newest first: the reload (10:00:05) before the token (10:00:02).
    let reload = page
        .find("data-kind=\"reload\"")
        .expect("the reload change");
    let token = page.find("data-kind=\"token\"").expect("the token change");
    assert!(reload < token, "the timeline is not newest first");
    assert!(page.contains("generation 2 → generation 3"));
    assert!(page.contains("emoji token 0 (sha256:3ca7c3e0)"));
    assert!(!html(&st, false).contains("POST /reload needs Authorization"));
}

#[test]
fn sizes_read_as_people_write_them() {
    assert_eq!(bytes(0), "0 B");
    assert_eq!(bytes(1023), "1023 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(64 << 20), "64.0 MiB");
    assert_eq!(bytes(-5), "0 B");
    assert_eq!(copies(1), "1 copy");
    assert_eq!(copies(0), "0 copies");
}

#[test]
fn the_script_never_parses_data_as_markup() {
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setTimeout(\"",
        "createContextualFragment",
    ] {
        assert!(!SCRIPT.contains(sink), "status.js uses {sink}");
    }
    // It reads its own origin only.
    assert!(SCRIPT.contains("fetch(\"/status\""));
    assert!(!SCRIPT.contains("http://") && !SCRIPT.contains("https://"));
    assert!(!STYLE.contains("url(") && !STYLE.contains("@import"));
}
