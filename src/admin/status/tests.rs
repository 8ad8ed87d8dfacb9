//! The `/status` round trip: built (by hand, or from an upstream), written
//! as JSON, read back, rendered by `graceway status`.

use super::*;

fn sample() -> Status {
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
            }],
            stored: StoredView {
                entries: 2,
                bytes: 1024,
            },
        }],
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
