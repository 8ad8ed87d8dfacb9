//! The status page at the admin listener's `/`: what `/status` holds, for
//! a person. The first render is here, on the server, so the page reads
//! without JavaScript; `/status.js` then redraws the same markup from
//! `/status` every few seconds (same origin only, no page reload), and
//! `/status.css` styles it. The three files live in `page/`.
//!
//! No external asset and nothing inline: the Content-Security-Policy
//! ([`CSP`]) allows scripts, styles and reads from this origin only. Every
//! string of the document (upstream names, the vendor's words and links,
//! replica names from the fleet ledger) is escaped here by [`esc`], and
//! set with `textContent` by the script. Tokens appear by fingerprint only,
//! as everywhere in `/status`.

use crate::admin::status::{
    BreakerView, ClientCertView, PoolView, Status, TokenView, UpstreamView,
};
use crate::app::timeline::Change;

/// The page's shell; `<!--view-->` is replaced by [`view`].
const SHELL: &str = include_str!("page/index.html");
/// Redraws the view from `/status` (served as `/status.js`).
pub const SCRIPT: &str = include_str!("page/status.js");
/// The page's styles (served as `/status.css`).
pub const STYLE: &str = include_str!("page/status.css");

/// The policy of the page and its two files: nothing from elsewhere, no
/// inline script or style, reads from this origin only, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Escapes text for an HTML element's content or a quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page for `st`. `bearer` says whether `admin.token_file` is
/// set (the page says what it guards).
pub fn html(st: &Status, bearer: bool) -> String {
    SHELL.replace("<!--view-->", &view(st, bearer))
}

/// `<tag a="v" ...>inner</tag>`, with every attribute value escaped; `inner`
/// is markup already escaped.
fn el(tag: &str, attrs: &[(&str, &str)], inner: &str) -> String {
    let mut out = format!("<{tag}");
    for (k, v) in attrs {
        out.push_str(&format!(" {k}=\"{}\"", esc(v)));
    }
    out.push('>');
    out.push_str(inner);
    out.push_str(&format!("</{tag}>"));
    out
}

fn or_dash(v: &Option<String>) -> String {
    esc(v.as_deref().unwrap_or("-"))
}

/// `1.5 MiB`: sizes as the page and the script show them.
pub fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `1 copy`, `2 copies`.
pub fn copies(n: i64) -> String {
    format!("{n} {}", if n == 1 { "copy" } else { "copies" })
}

/// The view: header, one card per upstream, the cache tiers, the
/// timeline (newest first) and the footer. `status.js` builds the same.
fn view(st: &Status, bearer: bool) -> String {
    let r = &st.reload;
    let meta = format!(
        "pid {} · config generation {} · last reload {} {} ({})",
        st.pid,
        st.config.generation,
        esc(&r.at),
        if r.ok { "ok" } else { "FAILED" },
        esc(&r.trigger)
    );
    let mut out = el(
        "header",
        &[("class", "top")],
        &format!(
            "{}{}",
            el(
                "h1",
                &[],
                &format!(
                    "graceway {}",
                    el("span", &[("class", "version")], &esc(&st.version))
                )
            ),
            el("p", &[("class", "meta")], &meta)
        ),
    );
    let cards: String = st.upstreams.iter().map(upstream).collect();
    out.push_str(&el("section", &[("class", "upstreams")], &cards));
    out.push_str(&cache(st));
    out.push_str(&timeline(&st.timeline));
    out.push_str(&el(
        "footer",
        &[],
        &format!(
            "{}{}",
            el(
                "p",
                &[
                    ("id", "updated"),
                    ("data-source", "server"),
                    ("data-generation", &st.config.generation.to_string())
                ],
                "Rendered by the server; without JavaScript, reload the page to update it."
            ),
            el("p", &[("class", "auth")], &auth_note(bearer))
        ),
    ));
    out
}

/// What the admin bearer guards, said on the page.
fn auth_note(bearer: bool) -> String {
    if bearer {
        "admin.token_file is set: POST /reload needs Authorization: Bearer &lt;the admin token&gt;. \
This page, /status and /metrics are read-only and, like them, need none; they never show a token value."
            .into()
    } else {
        "No admin bearer is configured (admin.token_file): POST /reload is open to this host. \
This page is read-only and never shows a token value."
            .into()
    }
}

fn breaker(name: &str, b: &BreakerView) -> String {
    let state = if b.open {
        format!(
            "open ({}) since {}{}",
            or_dash(&b.reason),
            or_dash(&b.since),
            b.next_trial
                .as_ref()
                .map(|t| format!(", next trial {}", esc(t)))
                .unwrap_or_default()
        )
    } else {
        "closed".into()
    };
    el(
        "div",
        &[
            ("class", "breaker"),
            ("data-breaker", name),
            ("data-open", if b.open { "true" } else { "false" }),
        ],
        &format!(
            "{}{}",
            el("dt", &[], &format!("{name} breaker")),
            el("dd", &[], &state)
        ),
    )
}

/// The token table's columns (also each cell's label in a narrow window).
const TOKEN_COLUMNS: [&str; 8] = [
    "#",
    "fingerprint",
    "source",
    "state",
    "state from",
    "expires",
    "quota",
    "vendor notice",
];

fn upstream(u: &UpstreamView) -> String {
    let state = u.state.as_str();
    let why = match (u.reason, &u.degraded_since) {
        (Some(r), Some(since)) => format!("{} since {}", r.as_str(), esc(since)),
        (Some(r), None) => r.as_str().to_string(),
        (None, _) => String::new(),
    };
    let head = el(
        "header",
        &[],
        &format!(
            "{}{}{}",
            el("h2", &[], &esc(&u.name)),
            el("span", &[("class", &format!("badge s-{state}"))], state),
            el("span", &[("class", "why")], &why)
        ),
    );
    let route = format!(
        "{} · route {}{}",
        esc(&u.url),
        u.route
            .host
            .as_ref()
            .map(|h| format!("host {} ", esc(h)))
            .unwrap_or_default(),
        esc(&u.route.path_prefix)
    );
    let failure = match &u.last_failure {
        None => "-".to_string(),
        Some(f) => format!("{} {}", or_dash(&f.at), or_dash(&f.reason)),
    };
    let copies = format!(
        "{} ({}) · last success {} · last failure {}",
        copies(u.stored.entries),
        bytes(u.stored.bytes),
        or_dash(&u.last_success),
        failure
    );
    let c = &u.calls;
    let calls = format!(
        "calls spared: {} fresh hits · {} stale-while-revalidate · {} coalesced, {} waiting · revalidated {} × 304, {} × 200, {} failed",
        c.fresh_hits,
        c.stale_while_revalidate_hits,
        c.coalesced,
        c.waiting,
        c.revalidated_304,
        c.revalidated_200,
        c.revalidations_failed
    );
    let mut rows = String::new();
    for t in &u.tokens {
        rows.push_str(&token(t));
    }
    let head_row: String = TOKEN_COLUMNS.iter().map(|h| el("th", &[], h)).collect();
    let table = el(
        "div",
        &[("class", "scroll")],
        &el(
            "table",
            &[("class", "tokens")],
            &format!(
                "{}{}",
                el("thead", &[], &el("tr", &[], &head_row)),
                el("tbody", &[], &rows)
            ),
        ),
    );
    el(
        "article",
        &[
            ("class", &format!("upstream s-{state}")),
            ("data-upstream", &u.name),
            ("data-state", state),
        ],
        &format!(
            "{head}{}{}{}{}{table}{}{}",
            el("p", &[("class", "url")], &route),
            el(
                "dl",
                &[("class", "breakers")],
                &format!(
                    "{}{}",
                    breaker("health", &u.breakers.health),
                    breaker("auth", &u.breakers.auth)
                )
            ),
            el("p", &[("class", "copies")], &copies),
            el("p", &[("class", "calls")], &calls),
            u.pool.as_ref().map(pool).unwrap_or_default(),
            u.client_cert.as_ref().map(client_cert).unwrap_or_default()
        ),
    )
}

/// The client certificate sent (mTLS): fingerprint, subject, validity.
fn client_cert(c: &ClientCertView) -> String {
    el(
        "p",
        &[("class", "client-cert"), ("data-state", c.state.as_str())],
        &format!(
            "client certificate {} · {} · {} · valid {} to {}",
            esc(&c.fingerprint),
            esc(&c.subject),
            c.state.as_str(),
            esc(&c.not_before),
            esc(&c.not_after)
        ),
    )
}

/// How requests share the tokens, and the quota queue now.
fn pool(p: &PoolView) -> String {
    let sticky = p
        .sticky_header
        .as_ref()
        .map(|h| format!(" · sticky header {}", esc(h)))
        .unwrap_or_default();
    let queue = if p.queue.max_wait_ms == 0 {
        "no quota queue".to_string()
    } else {
        format!(
            "quota queue {} of {} waiting (max wait {} ms)",
            p.queue.waiting, p.queue.max_queued, p.queue.max_wait_ms
        )
    };
    el(
        "p",
        &[("class", "pool")],
        &format!("tokens by {}{sticky} · {queue}", esc(&p.select)),
    )
}

/// Where a token's state came from: the fleet ledger's record, or this
/// replica's own answers.
fn origin(t: &TokenView) -> String {
    match &t.learned {
        Some(l) if l.from == "fleet" => format!(
            "{} by replica {} at {} (fleet ledger)",
            esc(&l.finding),
            esc(&l.replica),
            or_dash(&l.at)
        ),
        Some(l) => format!("{} here at {}", esc(&l.finding), or_dash(&l.at)),
        None => "this replica".into(),
    }
}

fn token(t: &TokenView) -> String {
    let state = t.state.as_str();
    let mut state_cell = el("span", &[("class", &format!("badge s-{state}"))], state);
    for d in [&t.detail, &t.error].into_iter().flatten() {
        state_cell.push_str(&el("small", &[], &esc(d)));
    }
    if let Some(until) = &t.cool_until {
        state_cell.push_str(&el(
            "small",
            &[],
            &format!("cool-down until {}", esc(until)),
        ));
    }
    let quota = match &t.quota {
        None => "-".to_string(),
        Some(q) => format!(
            "{}{}{}",
            q.remaining,
            q.limit.map(|l| format!(" / {l}")).unwrap_or_default(),
            q.reset_at
                .as_ref()
                .map(|r| format!(", resets {}", esc(r)))
                .unwrap_or_default()
        ),
    };
    let notice = match &t.notice {
        None => "-".to_string(),
        Some(n) => {
            let mut parts = Vec::new();
            if n.deprecated {
                parts.push(format!("deprecated from {}", or_dash(&n.deprecation_at)));
            }
            if let Some(s) = &n.sunset_at {
                parts.push(format!("sunset at {}", esc(s)));
            }
            for l in &n.links {
                parts.push(format!("{}: {}", esc(&l.rel), esc(&l.url)));
            }
            parts.join("; ")
        }
    };
    let cells = [
        t.index.to_string(),
        el("code", &[], &esc(&t.fingerprint)),
        esc(&t.source),
        state_cell,
        origin(t),
        or_dash(&t.expires_at),
        quota,
        notice,
    ];
    let tds: String = cells
        .iter()
        .zip(TOKEN_COLUMNS)
        .map(|(c, label)| el("td", &[("data-label", label)], c))
        .collect();
    el(
        "tr",
        &[
            ("class", "token"),
            ("data-index", &t.index.to_string()),
            ("data-fingerprint", &t.fingerprint),
            ("data-state", state),
        ],
        &tds,
    )
}

fn cache(st: &Status) -> String {
    let c = &st.cache;
    let fill = format!(
        "{}{}",
        el(
            "meter",
            &[
                ("min", "0"),
                ("max", &c.limit_bytes.to_string()),
                ("value", &c.bytes.max(0).to_string()),
            ],
            ""
        ),
        el(
            "span",
            &[],
            &format!(
                "{}, {} of {}",
                copies(c.entries),
                bytes(c.bytes),
                bytes(c.limit_bytes.min(i64::MAX as u64) as i64)
            )
        )
    );
    let mut tiers = el(
        "div",
        &[("class", "tier"), ("data-tier", "memory")],
        &format!("{}{}", el("dt", &[], "memory"), el("dd", &[], &fill)),
    );
    let persist = match &c.persist {
        None => "off".to_string(),
        Some(p) => format!(
            "{} {}{}",
            esc(&p.path),
            if p.open { "open" } else { "CLOSED" },
            if p.dropped_writes > 0 {
                format!(", {} writes dropped", p.dropped_writes)
            } else {
                String::new()
            }
        ),
    };
    tiers.push_str(&el(
        "div",
        &[("class", "tier"), ("data-tier", "persist")],
        &format!(
            "{}{}",
            el("dt", &[], "persist file"),
            el("dd", &[], &persist)
        ),
    ));
    let (fleet, health) = match &c.fleet {
        None => ("off".to_string(), "off"),
        Some(f) => (
            format!(
                "{}{} ({}){}{} · {} hits, {} misses, {} writes, {} errors, {} dropped{}",
                el(
                    "span",
                    &[(
                        "class",
                        &format!("badge s-{}", if f.up { "up" } else { "down" })
                    )],
                    if f.up { "up" } else { "down" }
                ),
                esc(&f.target),
                esc(&f.mode),
                if f.connected { "" } else { " · not connected" },
                if f.breaker_open {
                    " · breaker open"
                } else {
                    ""
                },
                f.hits,
                f.misses,
                f.writes,
                f.errors,
                f.dropped,
                f.last_error
                    .as_ref()
                    .map(|e| format!(" · last error: {}", esc(e)))
                    .unwrap_or_default()
            ),
            if f.up { "up" } else { "down" },
        ),
    };
    tiers.push_str(&el(
        "div",
        &[
            ("class", "tier"),
            ("data-tier", "fleet"),
            ("data-health", health),
        ],
        &format!(
            "{}{}",
            el("dt", &[], "fleet (Redis)"),
            el("dd", &[], &fleet)
        ),
    ));
    el(
        "section",
        &[("class", "cache")],
        &format!(
            "{}{}",
            el("h2", &[], "Last-good copies"),
            el("dl", &[], &tiers)
        ),
    )
}

/// Who a change concerns, as the page and the CLI say it.
fn who(c: &Change) -> String {
    match (&c.upstream, c.token) {
        (Some(u), Some(i)) => format!(
            "{} token {i} ({}){}",
            esc(u),
            or_dash(&c.fingerprint),
            if c.kind == "notice" { " notice" } else { "" }
        ),
        (Some(u), None) if c.kind == "upstream" => esc(u),
        (Some(u), None) => format!("{} {}", esc(u), esc(&c.kind)),
        (None, _) => esc(&c.kind),
    }
}

fn timeline(changes: &[Change]) -> String {
    let items: String = changes
        .iter()
        .rev()
        .map(|c| {
            el(
                "li",
                &[
                    ("class", "change"),
                    ("data-kind", &c.kind),
                    ("data-upstream", c.upstream.as_deref().unwrap_or("")),
                    (
                        "data-token",
                        &c.token.map(|t| t.to_string()).unwrap_or_default(),
                    ),
                    ("data-from", &c.from),
                    ("data-to", &c.to),
                ],
                &format!(
                    "{}{}{}{}",
                    el("time", &[("datetime", &c.at)], &esc(&c.at)),
                    el("span", &[("class", "who")], &who(c)),
                    el(
                        "span",
                        &[("class", "what")],
                        &format!("{} → {}", esc(&c.from), esc(&c.to))
                    ),
                    el("span", &[("class", "why")], &or_dash(&c.reason))
                ),
            )
        })
        .collect();
    let list = if changes.is_empty() {
        el("p", &[("class", "empty")], "No state change since start.")
    } else {
        String::new()
    };
    el(
        "section",
        &[("class", "changes")],
        &format!(
            "{}{list}{}",
            el(
                "h2",
                &[],
                &format!("Recent changes {}", el("small", &[], "newest first"))
            ),
            el("ol", &[("id", "timeline")], &items)
        ),
    )
}

#[cfg(test)]
mod tests;
