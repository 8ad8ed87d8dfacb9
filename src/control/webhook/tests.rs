//! The state watch's diff ([`Seen::changes`]): each transition it sends,
//! the ones it does not, and the log line of each kind.

use super::*;

const AT: &str = "2026-12-01T10:00:00Z";

const CLOSED: BreakerSeen = BreakerSeen {
    open: false,
    reason: None,
};

fn upstream(state: UpstreamState, reason: Option<Reason>, tokens: Vec<TokenSeen>) -> Observed {
    Observed {
        name: "emoji".into(),
        state,
        reason,
        health: CLOSED,
        auth: CLOSED,
        tokens,
        client_cert: None,
    }
}

fn healthy(tokens: Vec<TokenSeen>) -> Observed {
    upstream(UpstreamState::Healthy, None, tokens)
}

fn token(index: usize, fingerprint: &str, state: TokenState) -> TokenSeen {
    TokenSeen {
        index,
        fingerprint: fingerprint.into(),
        state,
        detail: None,
        notice: None,
    }
}

/// An event of upstream `emoji` stamped [`AT`].
fn event(
    kind: &'static str,
    token: Option<(usize, &str)>,
    from: &str,
    to: &str,
    reason: Option<&str>,
) -> Event {
    Event {
        kind,
        upstream: "emoji".into(),
        token: token.map(|t| t.0),
        fingerprint: token.map(|t| t.1.to_string()),
        from: from.into(),
        to: to.into(),
        reason: reason.map(str::to_string),
        at: AT.into(),
    }
}

/// A watch that has seen `first` once (and sent whatever that gave).
fn seen(first: Observed) -> Seen {
    let mut s = Seen::default();
    s.changes(&[first], AT);
    s
}

#[test]
fn nothing_is_sent_on_first_sight_or_when_nothing_changed() {
    let now = healthy(vec![token(0, "sha256:aaaa", TokenState::Active)]);
    let mut s = Seen::default();
    assert_eq!(s.changes(std::slice::from_ref(&now), AT), []);
    assert_eq!(s.changes(std::slice::from_ref(&now), AT), []);
    // A degraded upstream or an open breaker seen first is no change either.
    let mut first = upstream(UpstreamState::Degraded, Some(Reason::TokenRejected), vec![]);
    first.auth = BreakerSeen {
        open: true,
        reason: Some(Reason::TokenRejected),
    };
    let mut s = Seen::default();
    assert_eq!(s.changes(std::slice::from_ref(&first), AT), []);
    assert_eq!(s.changes(&[first], AT), []);
    assert_eq!(Seen::default().changes(&[], AT), []);
}

#[test]
fn each_upstream_transition_is_sent_once_with_its_reason() {
    let mut s = seen(healthy(vec![]));
    let degraded = |r| upstream(UpstreamState::Degraded, Some(r), vec![]);

    assert_eq!(
        s.changes(&[degraded(Reason::TokenRejected)], AT),
        [event(
            "upstream",
            None,
            "healthy",
            "degraded",
            Some("token-rejected")
        )]
    );
    assert_eq!(s.changes(&[degraded(Reason::TokenRejected)], AT), []);
    // The same state for another reason is a change.
    assert_eq!(
        s.changes(&[degraded(Reason::Upstream5xx)], AT),
        [event(
            "upstream",
            None,
            "degraded",
            "degraded",
            Some("upstream-5xx")
        )]
    );
    let down = upstream(
        UpstreamState::Down,
        Some(Reason::UpstreamUnreachable),
        vec![],
    );
    assert_eq!(
        s.changes(std::slice::from_ref(&down), AT),
        [event(
            "upstream",
            None,
            "degraded",
            "down",
            Some("upstream-unreachable")
        )]
    );
    assert_eq!(
        s.changes(&[healthy(vec![])], AT),
        [event("upstream", None, "down", "healthy", None)]
    );
    assert_eq!(s.changes(&[healthy(vec![])], AT), []);
}

#[test]
fn breakers_are_sent_when_they_open_with_why_and_when_they_close() {
    let mut s = seen(healthy(vec![]));
    let mut now = healthy(vec![]);
    now.health = BreakerSeen {
        open: true,
        reason: Some(Reason::UpstreamTimeout),
    };
    assert_eq!(
        s.changes(std::slice::from_ref(&now), AT),
        [event(
            "health-breaker",
            None,
            "closed",
            "open",
            Some("upstream-timeout")
        )]
    );
    assert_eq!(s.changes(std::slice::from_ref(&now), AT), []);
    // The auth breaker is watched on its own; the health one closing is
    // reported in the same tick, health first.
    now.health = CLOSED;
    now.auth = BreakerSeen {
        open: true,
        reason: Some(Reason::TokenExpired),
    };
    assert_eq!(
        s.changes(std::slice::from_ref(&now), AT),
        [
            event("health-breaker", None, "open", "closed", None),
            event(
                "auth-breaker",
                None,
                "closed",
                "open",
                Some("token-expired")
            ),
        ]
    );
    now.auth = CLOSED;
    assert_eq!(
        s.changes(&[now], AT),
        [event("auth-breaker", None, "open", "closed", None)]
    );
}

#[test]
fn each_token_transition_is_sent_with_the_vendors_words_only_for_a_refusal() {
    let fp = "sha256:aaaa";
    let mut s = seen(healthy(vec![token(0, fp, TokenState::Active)]));
    let with_detail = |state| TokenSeen {
        detail: Some(Arc::new("invalid_token (revoked)".to_string())),
        ..token(0, fp, state)
    };

    assert_eq!(
        s.changes(&[healthy(vec![with_detail(TokenState::Suspect)])], AT),
        [event(
            "token",
            Some((0, fp)),
            "active",
            "suspect",
            Some("invalid_token (revoked)")
        )]
    );
    assert_eq!(
        s.changes(&[healthy(vec![with_detail(TokenState::Rejected)])], AT),
        [event(
            "token",
            Some((0, fp)),
            "suspect",
            "rejected",
            Some("invalid_token (revoked)")
        )]
    );
    // Back to active: the old words are not repeated.
    assert_eq!(
        s.changes(&[healthy(vec![with_detail(TokenState::Active)])], AT),
        [event("token", Some((0, fp)), "rejected", "active", None)]
    );
    for (from, to) in [
        (TokenState::Active, TokenState::Expiring),
        (TokenState::Expiring, TokenState::Expired),
        (TokenState::Expired, TokenState::RateLimited),
        (TokenState::RateLimited, TokenState::Unavailable),
    ] {
        assert_eq!(
            s.changes(&[healthy(vec![with_detail(to)])], AT),
            [event(
                "token",
                Some((0, fp)),
                from.as_str(),
                to.as_str(),
                None
            )],
            "{from:?} -> {to:?}"
        );
    }
    assert_eq!(
        s.changes(&[healthy(vec![with_detail(TokenState::Unavailable)])], AT),
        []
    );
}

#[test]
fn a_new_token_is_sent_only_when_it_is_not_active() {
    let mut s = seen(healthy(vec![token(0, "sha256:aaaa", TokenState::Active)]));
    // A rotation to a good token: nothing to say.
    assert_eq!(
        s.changes(
            &[healthy(vec![token(0, "sha256:bbbb", TokenState::Active)])],
            AT
        ),
        []
    );
    // A rotation to an expired one, and a second token that arrives expiring.
    assert_eq!(
        s.changes(
            &[healthy(vec![
                token(0, "sha256:cccc", TokenState::Expired),
                token(1, "sha256:dddd", TokenState::Expiring),
            ])],
            AT
        ),
        [
            event("token", Some((0, "sha256:cccc")), "new", "expired", None),
            event("token", Some((1, "sha256:dddd")), "new", "expiring", None),
        ]
    );
    // A token that comes back is compared with the state it left in.
    assert_eq!(
        s.changes(
            &[healthy(vec![token(0, "sha256:aaaa", TokenState::Rejected)])],
            AT
        ),
        [event(
            "token",
            Some((0, "sha256:aaaa")),
            "active",
            "rejected",
            None
        )]
    );
}

#[test]
fn a_notice_is_sent_once_per_new_notice() {
    let fp = "sha256:aaaa";
    let notice = |hash, n: Notice| TokenSeen {
        notice: Some(Arc::new((hash, n))),
        ..token(0, fp, TokenState::Active)
    };
    let full = Notice {
        deprecated: true,
        deprecation_at: Some(1_796_083_200),
        sunset_at: Some(1_798_761_600),
        links: vec![
            ("successor-version".into(), "https://api.example/v2".into()),
            ("sunset".into(), "https://api.example/sunset".into()),
        ],
    };
    let mut s = seen(healthy(vec![token(0, fp, TokenState::Active)]));
    let sent = event(
        "notice",
        Some((0, fp)),
        "none",
        "deprecation at 2026-12-01T00:00:00Z; sunset at 2027-01-01T00:00:00Z",
        Some("successor-version: https://api.example/v2, sunset: https://api.example/sunset"),
    );
    assert_eq!(
        s.changes(&[healthy(vec![notice(7, full.clone())])], AT),
        std::slice::from_ref(&sent)
    );
    assert_eq!(s.changes(&[healthy(vec![notice(7, full.clone())])], AT), []);
    // Other headers: a new notice, sent again.
    assert_eq!(s.changes(&[healthy(vec![notice(8, full)])], AT), [sent]);

    let bare = Notice {
        deprecated: true,
        deprecation_at: None,
        sunset_at: None,
        links: vec![],
    };
    assert_eq!(
        s.changes(&[healthy(vec![notice(9, bare)])], AT),
        [event("notice", Some((0, fp)), "none", "deprecation", None)]
    );
    let withdrawn = Notice {
        deprecated: false,
        deprecation_at: None,
        sunset_at: None,
        links: vec![],
    };
    assert_eq!(
        s.changes(&[healthy(vec![notice(10, withdrawn)])], AT),
        [event(
            "notice",
            Some((0, fp)),
            "none",
            "no deprecation",
            None
        )]
    );
}

#[test]
fn a_client_certificate_is_reported_when_it_nears_its_end_and_when_rotated() {
    let with = |fp: &str, state| Observed {
        client_cert: Some((fp.to_string(), state)),
        ..healthy(vec![])
    };
    let cert = |fp: &str, from: &str, to: &str| Event {
        fingerprint: Some(fp.to_string()),
        ..event("client-cert", None, from, to, None)
    };
    // Active at first sight: nothing; expiring first seen: reported.
    let mut s = seen(with("sha256:c1", CertState::Active));
    assert_eq!(s.changes(&[with("sha256:c1", CertState::Active)], AT), []);
    assert_eq!(
        s.changes(&[with("sha256:c1", CertState::Expiring)], AT),
        [cert("sha256:c1", "active", "expiring")]
    );
    assert_eq!(s.changes(&[with("sha256:c1", CertState::Expiring)], AT), []);
    assert_eq!(
        s.changes(&[with("sha256:c1", CertState::Expired)], AT),
        [cert("sha256:c1", "expiring", "expired")]
    );
    // A rotation to a fresh certificate is no alarm; to one already near
    // its end is.
    assert_eq!(s.changes(&[with("sha256:c2", CertState::Active)], AT), []);
    assert_eq!(
        s.changes(&[with("sha256:c3", CertState::Expiring)], AT),
        [cert("sha256:c3", "new", "expiring")]
    );
    let (level, line) = log_line(&cert("sha256:c3", "new", "expiring"));
    assert_eq!(level, log::Level::Warn);
    assert_eq!(
        line,
        "upstream emoji: client certificate sha256:c3 is now expiring (was new)"
    );
    assert_eq!(
        log_line(&cert("sha256:c2", "expired", "active")).0,
        log::Level::Info
    );
}

#[test]
fn one_ticks_changes_come_in_order_upstream_breakers_tokens_notices() {
    let mut s = seen(healthy(vec![token(0, "sha256:aaaa", TokenState::Active)]));
    let mut other = healthy(vec![]);
    other.name = "weather".into();
    s.changes(std::slice::from_ref(&other), AT);

    let mut now = upstream(
        UpstreamState::Down,
        Some(Reason::TokenRejected),
        vec![TokenSeen {
            notice: Some(Arc::new((
                1,
                Notice {
                    deprecated: true,
                    deprecation_at: None,
                    sunset_at: None,
                    links: vec![],
                },
            ))),
            ..token(0, "sha256:aaaa", TokenState::Rejected)
        }],
    );
    now.auth = BreakerSeen {
        open: true,
        reason: Some(Reason::TokenRejected),
    };
    other.state = UpstreamState::Degraded;
    other.reason = Some(Reason::Upstream5xx);
    let kinds: Vec<(&str, String)> = s
        .changes(&[now, other], AT)
        .into_iter()
        .map(|e| (e.kind, e.upstream))
        .collect();
    let emoji = || "emoji".to_string();
    assert_eq!(
        kinds,
        [
            ("upstream", emoji()),
            ("auth-breaker", emoji()),
            ("token", emoji()),
            ("notice", emoji()),
            ("upstream", "weather".to_string()),
        ]
    );
}

#[test]
fn each_change_is_logged_in_its_own_words() {
    let cases = [
        (
            event("upstream", None, "healthy", "degraded", Some("token-rejected")),
            log::Level::Warn,
            "upstream emoji: state healthy -> degraded (token-rejected)",
        ),
        (
            event("upstream", None, "down", "healthy", None),
            log::Level::Warn,
            "upstream emoji: state down -> healthy",
        ),
        (
            event("upstream", None, "degraded", "degraded", Some("upstream-5xx")),
            log::Level::Warn,
            "upstream emoji: still degraded, now upstream-5xx",
        ),
        (
            event("health-breaker", None, "closed", "open", Some("upstream-timeout")),
            log::Level::Info,
            "upstream emoji: health-breaker closed -> open (upstream-timeout)",
        ),
        (
            event("auth-breaker", None, "open", "closed", None),
            log::Level::Info,
            "upstream emoji: auth-breaker open -> closed",
        ),
        (
            event("token", Some((0, "sha256:aaaa")), "active", "rejected", Some("invalid_token")),
            log::Level::Info,
            "upstream emoji: token 0 (sha256:aaaa) is now rejected (was active): invalid_token",
        ),
        (
            event("notice", Some((1, "sha256:bbbb")), "none", "deprecation", Some("sunset: https://x")),
            log::Level::Warn,
            "upstream emoji: token 1 (sha256:bbbb): the vendor announced deprecation; sunset: https://x",
        ),
    ];
    for (e, level, line) in cases {
        assert_eq!(log_line(&e), (level, line.to_string()));
    }
}

#[test]
fn observe_reads_the_state_breakers_and_tokens_of_an_upstream() {
    use crate::generation::upstream::testing;
    let rejected = testing::token(0, "tok-rejected", None);
    rejected.mark_rejected(401, crate::tokens::ledger::Evidence::VendorSaid);
    rejected
        .evidence
        .set_detail(Some("invalid_token (revoked)".into()));
    let fingerprint = rejected.fingerprint.clone();
    let up = testing::upstream(
        "webhook-tests-observe",
        Some(vec![rejected, testing::token(1, "tok-good", None)]),
    );
    up.status.health.trip(Reason::Upstream5xx);
    let o = observe(&up, SystemTime::now());
    assert_eq!(o.name, "webhook-tests-observe");
    assert_eq!((o.state, o.reason), up.state(SystemTime::now()));
    assert!(o.health.open);
    assert_eq!(o.health.reason, Some(Reason::Upstream5xx));
    assert!(!o.auth.open);
    assert_eq!(o.tokens.len(), 2);
    assert_eq!(o.tokens[0].fingerprint, fingerprint);
    assert_eq!(o.tokens[0].state, TokenState::Rejected);
    assert_eq!(
        o.tokens[0].detail.as_deref().map(String::as_str),
        Some("invalid_token (revoked)")
    );
    assert_eq!(
        (o.tokens[1].index, o.tokens[1].state),
        (1, TokenState::Active)
    );
}
