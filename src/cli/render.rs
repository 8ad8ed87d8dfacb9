//! `graceway status` as text: the tables, the notes below them and the
//! timeline, from the typed `/status` document.

use crate::admin::status::{BreakerView, QuotaView, Status};

/// An optional field as a table cell: `-` when absent.
fn s(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// Renders `/status` as aligned text tables.
pub fn render_status(st: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "graceway {}  pid {}  config {} ({}, generation {})\n",
        st.version, st.pid, st.config.path, st.config.hash, st.config.generation,
    ));
    let r = &st.reload;
    out.push_str(&format!(
        "last reload: {} {} ({}) {}\n",
        r.at,
        if r.ok { "ok" } else { "FAILED" },
        r.trigger,
        r.message,
    ));
    let c = &st.cache;
    out.push_str(&format!(
        "cache: {} entries, {} of {} bytes\n",
        c.entries, c.bytes, c.limit_bytes
    ));
    if let Some(f) = &c.fleet {
        out.push_str(&format!(
            "fleet: {} ({}) {}; {} hits, {} misses, {} writes, {} errors, {} dropped{}\n",
            f.target,
            f.mode,
            if f.up { "up" } else { "DOWN" },
            f.hits,
            f.misses,
            f.writes,
            f.errors,
            f.dropped,
            f.last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        ));
    }
    out.push('\n');
    let mut rows = vec![vec![
        "UPSTREAM".to_string(),
        "STATE".into(),
        "REASON".into(),
        "SINCE".into(),
        "HEALTH BREAKER".into(),
        "AUTH BREAKER".into(),
        "COPIES".into(),
        "URL".into(),
        "LAST SUCCESS".into(),
        "LAST FAILURE".into(),
    ]];
    let breaker = |b: &BreakerView| {
        if b.open {
            format!("open ({}) since {}", s(&b.reason), s(&b.since))
        } else {
            "closed".to_string()
        }
    };
    let mut token_rows = vec![vec![
        "UPSTREAM".to_string(),
        "TOKEN".into(),
        "SOURCE".into(),
        "FINGERPRINT".into(),
        "STATE".into(),
        "EXPIRES".into(),
        "LAST USED".into(),
        "QUOTA".into(),
    ]];
    // One line each: the vendor's words (refusals, deprecation notices),
    // what another replica learned, a token source's failure, a quota
    // cool-down.
    let mut notes = Vec::new();
    for u in &st.upstreams {
        rows.push(vec![
            u.name.clone(),
            u.state.as_str().to_string(),
            u.reason.map_or("-".into(), |r| r.as_str().to_string()),
            s(&u.degraded_since),
            breaker(&u.breakers.health),
            breaker(&u.breakers.auth),
            u.stored.entries.to_string(),
            u.url.clone(),
            s(&u.last_success),
            match &u.last_failure {
                None => "-".into(),
                Some(f) => format!("{} {}", s(&f.at), s(&f.reason)),
            },
        ]);
        let c = &u.calls;
        if c.fresh_hits
            + c.stale_while_revalidate_hits
            + c.coalesced
            + c.revalidated_304
            + c.revalidated_200
            + c.revalidations_failed
            > 0
            || c.waiting > 0
        {
            notes.push(format!(
                "{} calls spared: {} fresh hits, {} stale-while-revalidate, {} coalesced ({} waiting); revalidated {} x 304, {} x 200, {} failed",
                u.name,
                c.fresh_hits,
                c.stale_while_revalidate_hits,
                c.coalesced,
                c.waiting,
                c.revalidated_304,
                c.revalidated_200,
                c.revalidations_failed
            ));
        }
        if let Some(p) = &u.pool {
            let sticky = p
                .sticky_header
                .as_ref()
                .map(|h| format!(", sticky header {h}"))
                .unwrap_or_default();
            let queue = if p.queue.max_wait_ms == 0 {
                "no quota queue".to_string()
            } else {
                format!(
                    "quota queue {} of {} waiting (max wait {} ms)",
                    p.queue.waiting, p.queue.max_queued, p.queue.max_wait_ms
                )
            };
            if p.select != "failover" || p.sticky_header.is_some() || p.queue.max_wait_ms > 0 {
                notes.push(format!(
                    "{} tokens by {}{sticky}; {queue}",
                    u.name, p.select
                ));
            }
        }
        if let Some(c) = &u.client_cert {
            notes.push(format!(
                "{} client certificate {} ({}) {}, valid {} to {}",
                u.name,
                c.fingerprint,
                c.subject,
                c.state.as_str(),
                c.not_before,
                c.not_after
            ));
        }
        for t in &u.tokens {
            token_rows.push(vec![
                u.name.clone(),
                t.index.to_string(),
                t.source.clone(),
                t.fingerprint.clone(),
                t.state.as_str().to_string(),
                s(&t.expires_at),
                s(&t.last_used),
                quota(t.quota.as_ref()),
            ]);
            let who = format!("{} token {} ({})", u.name, t.index, t.fingerprint);
            if let Some(d) = &t.detail {
                notes.push(format!("{who} {}: {d}", t.state.as_str()));
            }
            if let Some(l) = t.learned.as_ref().filter(|l| l.from == "fleet") {
                notes.push(format!(
                    "{who} {} by replica {} at {} (fleet ledger)",
                    l.finding,
                    l.replica,
                    s(&l.at)
                ));
            }
            if let Some(m) = t.minted.as_ref().filter(|m| m.from == "fleet") {
                notes.push(format!(
                    "{who} shared by replica {}, fetched at {} (oauth2.share)",
                    m.replica.as_deref().unwrap_or("-"),
                    s(&m.fetched_at)
                ));
            }
            // Why a token has no value, and when a spent quota is back: the
            // table's state says only that it cannot be sent.
            if let Some(e) = &t.error {
                notes.push(format!("{who} source failed: {e}"));
            }
            if let Some(until) = &t.cool_until {
                notes.push(format!("{who} quota spent: skipped until {until}"));
            }
            if let Some(n) = &t.notice {
                let mut what = Vec::new();
                if n.deprecated {
                    what.push(format!("DEPRECATED (from {})", s(&n.deprecation_at)));
                }
                if let Some(at) = &n.sunset_at {
                    what.push(format!("SUNSET at {at}"));
                }
                for l in &n.links {
                    what.push(format!("{}: {}", l.rel, l.url));
                }
                notes.push(format!("{who}: {}", what.join("; ")));
            }
        }
    }
    out.push_str(&table(&rows));
    out.push('\n');
    out.push_str(&table(&token_rows));
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    if !st.timeline.is_empty() {
        out.push_str("\nrecent changes (newest first):\n");
        for c in st.timeline.iter().rev().take(TIMELINE_LINES) {
            out.push_str(&change_line(c));
            out.push('\n');
        }
    }
    out
}

/// How many of the timeline's changes `graceway status` prints.
const TIMELINE_LINES: usize = 10;

/// `<at>  <who>  <from> -> <to> (<reason>)`: one change of the timeline.
fn change_line(c: &crate::app::timeline::Change) -> String {
    let who = match (&c.upstream, c.token) {
        (Some(u), Some(i)) if c.kind == "notice" => format!(
            "{u} token {i} ({}) notice",
            c.fingerprint.as_deref().unwrap_or("-")
        ),
        (Some(u), Some(i)) => format!(
            "{u} token {i} ({})",
            c.fingerprint.as_deref().unwrap_or("-")
        ),
        (Some(u), None) if c.kind == "upstream" => u.clone(),
        (Some(u), None) => format!("{u} {}", c.kind),
        (None, _) => c.kind.clone(),
    };
    let why = c
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    format!("{}  {who}  {} -> {}{why}", c.at, c.from, c.to)
}

/// `remaining/limit, resets <time>` or `-`.
fn quota(q: Option<&QuotaView>) -> String {
    let Some(q) = q else {
        return "-".into();
    };
    let mut out = q.remaining.to_string();
    if let Some(l) = q.limit {
        out = format!("{out}/{l}");
    }
    if let Some(at) = &q.reset_at {
        out = format!("{out} until {at}");
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |v| v.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{v:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
