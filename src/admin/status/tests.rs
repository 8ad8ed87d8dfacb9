//! The `/status` round trip: built (by hand, or from an upstream), written
//! as JSON, read back, rendered by `graceway status`.

use super::*;

pub(crate) fn sample() -> Status {
    let breaker = |open| BreakerView {
        open,
        reason: open.then(|| "token-rejected".to_string()),
        since: open.then(|| "2026-12-01T10:00:03Z".to_string()),
        next_trial: None,
    };
    Status {
        version: "0.1.0".into(),
        pid: 42,
        started_at: Some("2026-12-01T09:00:00Z".into()),
        config: ConfigView {
            path: "/etc/graceway/graceway.yaml".into(),
            hash: "sha256:3e55cf96a519".into(),
            generation: 3,
            loaded_at: None,
        },
        reload: ReloadView {
            attempt: 3,
            at: "2026-12-01T10:00:00Z".into(),
            trigger: "signal".into(),
            ok: true,
            message: "tokens[0] sha256:aaaa -> sha256:bbbb".into(),
            generation: 3,
        },
        memory: MemoryView {
            rss_bytes: 1 << 24,
            soft_limit_bytes: None,
            shed_entries: 0,
            shed_bytes: 0,
            last_shed: None,
        },
        cache: CacheView {
            entries: 2,
            bytes: 1024,
            limit_bytes: 64 << 20,
            max_object_bytes: 1 << 20,
            persist: None,
            fleet: None,
        },
        connections: ConnectionsView {
            proxy: ListenerView {
                open: 1,
                max: 4096,
                refused: 0,
                header_timeouts: 0,
                evicted: 0,
            },
            admin: ListenerView {
                open: 1,
                max: 64,
                refused: 0,
                header_timeouts: 0,
                evicted: 0,
            },
            nofile_soft: Some(20000),
            nofile_hard: Some(20000),
        },
        upstreams: vec![UpstreamView {
            name: "emoji".into(),
            url: "https://api.emoji.example".into(),
            route: RouteView {
                host: None,
                path_prefix: "/".into(),
            },
            state: UpstreamState::Degraded,
            reason: Some(Reason::TokenRejected),
            degraded_since: Some("2026-12-01T10:00:03Z".into()),
            last_success: None,
            last_failure: None,
            breakers: BreakersView {
                health: breaker(false),
                auth: breaker(true),
            },
            tokens: vec![TokenView {
                index: 0,
                source: "file:/run/secrets/emoji".into(),
                kind: "file".into(),
                fingerprint: "sha256:3ca7c3e0".into(),
                state: TokenState::Rejected,
                expires_at: None,
                last_used: None,
                error: None,
                detail: Some("invalid_token (revoked)".into()),
                quota: Some(QuotaView {
                    remaining: 0,
                    limit: Some(100),
                    reset_at: None,
                }),
                notice: None,
                cool_until: None,
                learned: Some(LearnedView {
                    from: "fleet".into(),
                    replica: "emoji-7d9f/12".into(),
                    finding: "rejected".into(),
                    at: Some("2026-12-01T10:00:02Z".into()),
                }),
                minted: Some(MintedView {
                    from: "fleet".into(),
                    replica: Some("emoji-5c2a/7".into()),
                    fetched_at: Some("2026-12-01T09:50:00Z".into()),
                }),
            }],
            stored: StoredView {
                entries: 2,
                bytes: 1024,
            },
            calls: CallsView {
                fresh_hits: 0,
                stale_while_revalidate_hits: 0,
                coalesced: 0,
                waiting: 0,
                revalidated_304: 0,
                revalidated_200: 0,
                revalidations_failed: 0,
            },
            pool: Some(PoolView {
                select: "round_robin".into(),
                sticky_header: Some("x-session-id".into()),
                queue: QueueView {
                    max_wait_ms: 2000,
                    max_queued: 100,
                    waiting: 3,
                },
            }),
            client_cert: None,
        }],
        timeline: Vec::new(),
    }
}

#[test]
fn status_round_trips_and_renders() {
    let json = serde_json::to_value(sample()).unwrap();
    // The JSON shape the docs and clients rely on.
    assert_eq!(json["upstreams"][0]["breakers"]["auth"]["open"], true);
    assert_eq!(json["upstreams"][0]["tokens"][0]["state"], "rejected");
    assert_eq!(json["cache"]["persist"], serde_json::Value::Null);
    let back: Status = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    let text = crate::cli::render_status(&back);
    for want in [
        "graceway 0.1.0  pid 42",
        "last reload: 2026-12-01T10:00:00Z ok (signal)",
        "open (token-rejected) since 2026-12-01T10:00:03Z",
        "sha256:3ca7c3e0",
        "0/100",
        "emoji token 0 (sha256:3ca7c3e0) rejected: invalid_token (revoked)",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}

#[test]
fn a_document_missing_a_field_is_an_error_not_a_dash() {
    let mut json = serde_json::to_value(sample()).unwrap();
    json["upstreams"][0]
        .as_object_mut()
        .unwrap()
        .remove("stored");
    let err = serde_json::from_value::<Status>(json).unwrap_err();
    assert!(err.to_string().contains("stored"), "{err}");
}

/// Every field set, each to a value found nowhere else in the document.
pub(crate) fn full() -> Status {
    let mut st = sample();
    st.started_at = Some("2026-12-01T09:00:00Z".into());
    st.config.loaded_at = Some("2026-12-01T09:59:59Z".into());
    st.memory.soft_limit_bytes = Some(256 << 20);
    st.memory.last_shed = Some("2026-12-01T09:30:00Z".into());
    st.cache.persist = Some(crate::cache::persist::PersistView {
        path: "/var/lib/graceway/stale.redb".into(),
        open: true,
        dropped_writes: 0,
    });
    st.cache.fleet = Some(crate::cache::fleet::FleetView {
        target: "redis://10.0.0.7:6379".into(),
        mode: "single".into(),
        up: true,
        connected: true,
        breaker_open: false,
        last_error: Some("timed out".into()),
        hits: 11,
        misses: 12,
        writes: 13,
        errors: 14,
        corrupt: 0,
        dropped: 15,
        timeout_ms: 50,
    });
    let u = &mut st.upstreams[0];
    u.calls = CallsView {
        fresh_hits: 31,
        stale_while_revalidate_hits: 32,
        coalesced: 33,
        waiting: 34,
        revalidated_304: 35,
        revalidated_200: 36,
        revalidations_failed: 37,
    };
    u.client_cert = Some(ClientCertView {
        fingerprint: "sha256:5d1c0a3f9e8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d"
            .into(),
        subject: "CN=graceway-client,O=Bank Ltd".into(),
        not_before: "2026-11-01T00:00:00Z".into(),
        not_after: "2026-12-20T00:00:00Z".into(),
        state: crate::net::client_cert::CertState::Expiring,
    });
    u.route.host = Some("emoji.internal".into());
    u.last_success = Some("2026-12-01T09:58:00Z".into());
    u.last_failure = Some(FailureView {
        at: Some("2026-12-01T10:00:02Z".into()),
        reason: Some("token-rejected".into()),
    });
    u.breakers.health = BreakerView {
        open: true,
        reason: Some("upstream-5xx".into()),
        since: Some("2026-12-01T10:00:01Z".into()),
        next_trial: Some("2026-12-01T10:00:11Z".into()),
    };
    u.breakers.auth.next_trial = Some("2026-12-01T10:00:13Z".into());
    let t = &mut u.tokens[0];
    t.expires_at = Some("2027-03-01T00:00:00Z".into());
    t.last_used = Some("2026-12-01T10:00:03Z".into());
    t.error = Some("command exited with status 1".into());
    t.quota.as_mut().unwrap().reset_at = Some("2026-12-01T11:00:00Z".into());
    t.notice = Some(NoticeView {
        deprecated: true,
        deprecation_at: Some("2026-12-01T00:00:00Z".into()),
        sunset_at: Some("2027-01-01T00:00:00Z".into()),
        links: vec![LinkView {
            rel: "successor-version".into(),
            url: "https://api.emoji.example/v2".into(),
        }],
    });
    t.cool_until = Some("2026-12-01T10:01:00Z".into());
    st.timeline = vec![
        crate::app::timeline::Change {
            at: "2026-12-01T10:00:02Z".into(),
            kind: "token".into(),
            upstream: Some("emoji".into()),
            token: Some(0),
            fingerprint: Some("sha256:3ca7c3e0".into()),
            from: "active".into(),
            to: "rejected".into(),
            reason: Some("invalid_token (revoked)".into()),
        },
        crate::app::timeline::Change {
            at: "2026-12-01T10:00:05Z".into(),
            kind: "reload".into(),
            upstream: None,
            token: None,
            fingerprint: None,
            from: "generation 2".into(),
            to: "generation 3".into(),
            reason: Some("signal: tokens[0] sha256:aaaa -> sha256:bbbb".into()),
        },
    ];
    st
}

/// The rows, as cells, of the table whose header begins `UPSTREAM
/// <second>` (cells are two or more spaces apart).
fn rows(text: &str, second: &str) -> Vec<Vec<String>> {
    let cells = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    text.lines()
        .skip_while(|l| !l.split_whitespace().take(2).eq(["UPSTREAM", second]))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(cells)
        .collect()
}

/// The row of that table whose first cell is `first`.
fn row(text: &str, second: &str, first: &str) -> Vec<String> {
    rows(text, second)
        .into_iter()
        .find(|r| r[0] == first)
        .unwrap_or_else(|| panic!("no {first:?} row under UPSTREAM {second} in:\n{text}"))
}

#[test]
fn every_value_of_a_full_document_is_rendered_and_no_cell_is_a_dash() {
    let json = serde_json::to_value(full()).unwrap();
    let back: Status = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    let text = crate::cli::render_status(&back);

    assert!(
        !text.split_whitespace().any(|w| w == "-"),
        "a value exists for every field, yet a `-`:\n{text}"
    );
    for line in [
        "graceway 0.1.0  pid 42  config /etc/graceway/graceway.yaml (sha256:3e55cf96a519, generation 3)",
        "last reload: 2026-12-01T10:00:00Z ok (signal) tokens[0] sha256:aaaa -> sha256:bbbb",
        "cache: 2 entries, 1024 of 67108864 bytes",
        "fleet: redis://10.0.0.7:6379 (single) up; 11 hits, 12 misses, 13 writes, 14 errors, 15 dropped; last error: timed out",
        "emoji tokens by round_robin, sticky header x-session-id; quota queue 3 of 100 waiting (max wait 2000 ms)",
        "emoji client certificate sha256:5d1c0a3f9e8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d (CN=graceway-client,O=Bank Ltd) expiring, valid 2026-11-01T00:00:00Z to 2026-12-20T00:00:00Z",
        "emoji calls spared: 31 fresh hits, 32 stale-while-revalidate, 33 coalesced (34 waiting); revalidated 35 x 304, 36 x 200, 37 failed",
        "emoji token 0 (sha256:3ca7c3e0) rejected: invalid_token (revoked)",
        "emoji token 0 (sha256:3ca7c3e0) rejected by replica emoji-7d9f/12 at 2026-12-01T10:00:02Z (fleet ledger)",
        "emoji token 0 (sha256:3ca7c3e0) shared by replica emoji-5c2a/7, fetched at 2026-12-01T09:50:00Z (oauth2.share)",
        "emoji token 0 (sha256:3ca7c3e0) source failed: command exited with status 1",
        "emoji token 0 (sha256:3ca7c3e0) quota spent: skipped until 2026-12-01T10:01:00Z",
        "emoji token 0 (sha256:3ca7c3e0): DEPRECATED (from 2026-12-01T00:00:00Z); SUNSET at 2027-01-01T00:00:00Z; successor-version: https://api.emoji.example/v2",
        "recent changes (newest first):",
        "2026-12-01T10:00:05Z  reload  generation 2 -> generation 3 (signal: tokens[0] sha256:aaaa -> sha256:bbbb)",
        "2026-12-01T10:00:02Z  emoji token 0 (sha256:3ca7c3e0)  active -> rejected (invalid_token (revoked))",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    assert_eq!(
        row(&text, "STATE", "emoji"),
        [
            "emoji",
            "degraded",
            "token-rejected",
            "2026-12-01T10:00:03Z",
            "open (upstream-5xx) since 2026-12-01T10:00:01Z",
            "open (token-rejected) since 2026-12-01T10:00:03Z",
            "2",
            "https://api.emoji.example",
            "2026-12-01T09:58:00Z",
            "2026-12-01T10:00:02Z token-rejected",
        ]
    );
    assert_eq!(
        row(&text, "TOKEN", "emoji"),
        [
            "emoji",
            "0",
            "file:/run/secrets/emoji",
            "sha256:3ca7c3e0",
            "rejected",
            "2027-03-01T00:00:00Z",
            "2026-12-01T10:00:03Z",
            "0/100 until 2026-12-01T11:00:00Z",
        ]
    );
}

#[test]
fn absent_values_are_dashes_in_their_own_columns() {
    let mut st = sample();
    let u = &mut st.upstreams[0];
    u.state = UpstreamState::Healthy;
    u.reason = None;
    u.degraded_since = None;
    u.breakers.auth.open = false;
    u.tokens[0].quota = None;
    u.tokens[0].detail = None;
    u.tokens[0].learned = None;
    u.tokens[0].minted = None;
    let text = crate::cli::render_status(&st);
    assert_eq!(
        row(&text, "STATE", "emoji"),
        [
            "emoji",
            "healthy",
            "-",
            "-",
            "closed",
            "closed",
            "2",
            "https://api.emoji.example",
            "-",
            "-"
        ]
    );
    assert_eq!(
        row(&text, "TOKEN", "emoji")[5..],
        ["-", "-", "-"],
        "expires, last used, quota"
    );
    assert!(!text.contains("emoji token 0 ("), "no note:\n{text}");
    assert!(!text.contains("fleet:"), "no fleet line:\n{text}");
}

#[test]
fn an_upstream_is_shown_as_the_request_path_sees_it() {
    use crate::generation::upstream::testing;
    let now = SystemTime::now();
    let rejected = testing::token(0, "tok-rejected", None);
    rejected.mark_rejected(401, crate::tokens::ledger::Evidence::VendorSaid);
    rejected
        .evidence
        .set_detail(Some("invalid_token (revoked)".into()));
    let cooling = testing::token(1, "tok-cooling", None);
    cooling.evidence.cool_down(crate::clock::unix(now) + 3600);
    let (fp0, fp1) = (rejected.fingerprint.clone(), cooling.fingerprint.clone());
    let up = testing::upstream(
        "status-tests-view",
        Some(vec![rejected, cooling, testing::unavailable(2)]),
    );
    up.status.mark_degraded(Reason::TokenRejected);
    up.status.record_success(1_700_000_000);
    up.status.stored_entries.store(5, Ordering::Relaxed);
    up.status.stored_bytes.store(-3, Ordering::Relaxed);
    up.auth.trip(Reason::TokenRejected);

    let view = upstream_view(&up, now);
    assert_eq!(view.name, "status-tests-view");
    assert_eq!(view.url, "http://127.0.0.1:1");
    assert_eq!(view.state, UpstreamState::Degraded);
    assert_eq!(view.reason, Some(Reason::TokenRejected));
    assert!(view.degraded_since.is_some());
    assert_eq!(view.last_success.as_deref(), Some("2023-11-14T22:13:20Z"));
    assert_eq!(
        view.last_failure.as_ref().and_then(|f| f.reason.as_deref()),
        Some("token-rejected")
    );
    assert!(view.breakers.auth.open && !view.breakers.health.open);
    assert_eq!(view.breakers.auth.reason.as_deref(), Some("token-rejected"));
    assert!(view.breakers.auth.next_trial.is_some());
    assert_eq!(
        (view.stored.entries, view.stored.bytes),
        (5, 0),
        "a count below zero (a race of insert and evict) shows as 0"
    );
    let states: Vec<TokenState> = view.tokens.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            TokenState::Rejected,
            TokenState::RateLimited,
            TokenState::Unavailable
        ]
    );
    assert_eq!(view.tokens[0].source, "env:TOKEN_0");
    assert_eq!(view.tokens[0].kind, "env");
    assert_eq!(
        view.tokens[0].detail.as_deref(),
        Some("invalid_token (revoked)")
    );
    assert!(view.tokens[1].cool_until.is_some());
    assert_eq!(view.tokens[2].fingerprint, "unavailable");
    assert!(view.tokens[2].error.is_some());

    // Through JSON and the table, as `graceway status` gets it.
    let mut st = sample();
    st.upstreams = vec![view];
    let json = serde_json::to_value(&st).unwrap();
    let back: Status = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    let text = crate::cli::render_status(&back);
    let up_row = row(&text, "STATE", "status-tests-view");
    assert_eq!(
        up_row[..3],
        ["status-tests-view", "degraded", "token-rejected"]
    );
    assert!(
        up_row[5].starts_with("open (token-rejected) since "),
        "{up_row:?}"
    );
    let fps = [fp0.as_str(), fp1.as_str(), "unavailable"];
    let tokens = rows(&text, "TOKEN");
    assert_eq!(tokens.len(), 3, "{text}");
    for (i, (fp, state)) in fps
        .iter()
        .zip(["rejected", "rate-limited", "unavailable"])
        .enumerate()
    {
        let want = [
            i.to_string(),
            format!("env:TOKEN_{i}"),
            fp.to_string(),
            state.into(),
        ];
        assert_eq!(tokens[i][1..5], want, "{text}");
    }
    assert!(
        text.contains(&format!("({fp1}) quota spent: skipped until ")),
        "{text}"
    );
    assert!(
        text.contains(
            "token 2 (unavailable) source failed: environment variable TOKEN_2 is not set"
        ),
        "{text}"
    );
}

#[test]
fn a_newer_servers_extra_keys_are_ignored() {
    // No `deny_unknown_fields` on the document: a `graceway status` older
    // than the server reads what it knows.
    let mut json = serde_json::to_value(full()).unwrap();
    let want = json.clone();
    json["ledger"] = serde_json::json!({ "peers": 3 });
    json["cache"]["coalesced"] = 7.into();
    json["upstreams"][0]["streams"] = serde_json::json!([]);
    json["upstreams"][0]["breakers"]["auth"]["trials"] = 2.into();
    json["upstreams"][0]["tokens"][0]["scope"] = "read".into();
    let back: Status = serde_json::from_value(json).expect("extra keys are ignored");
    assert_eq!(serde_json::to_value(&back).unwrap(), want);
}
