//! The proxy's decisions, as pure functions over plain inputs: the hooks in
//! `mod.rs` gather the inputs (the error, the vendor's verdict, the token
//! set), call one of these, and carry out the answer. Each is unit-tested
//! for its edge cases here; the hooks are tested end to end in `tests/it/`.
//!
//! The other decisions live beside their data: which token a request uses
//! (`proxy::choose`, over `tokens::TokenSet::pick` and `trial_token`),
//! what the vendor's refusal means (`tokens::evidence::judge`), whether a
//! request may be stored (`cache::stored::storable_request`) and whether a
//! copy may be served (`cache::CachedResponse::servable`).

use http::HeaderValue;
use pingora::{ErrorSource, ErrorType};

use crate::config::StaleTriggers;
use crate::outcome::Reason;
use crate::tokens::evidence::Verdict;
use crate::tokens::set::Suspicion;

/// Whether the upstream's `stale.on` lists `reason` (with the upstream's
/// status when it sent one): the answer is then degraded, from the copy or
/// the 503, instead of passed through (response phase, error path) or
/// answered 503 without a copy (request phase).
pub(crate) fn degrades(on: &StaleTriggers, reason: Reason, status: Option<u16>) -> bool {
    match reason {
        Reason::TokenRejected => match status {
            Some(403) => on.s403,
            _ => on.s401,
        },
        Reason::TokenExpired => on.s401,
        Reason::RateLimited => on.s429,
        Reason::Upstream5xx => on.s5xx,
        Reason::UpstreamTimeout => on.timeout,
        Reason::UpstreamUnreachable => on.connect_error,
        Reason::TokenUnavailable => on.token_unavailable,
    }
}

/// Whether a fresh answer is captured for the last-good cache: a 200 to a
/// storable request (a GET without the client's own credentials), never a
/// stream (an event stream has no end to keep).
pub(crate) fn keeps(storable_request: bool, status: u16, stream: bool) -> bool {
    storable_request && status == 200 && !stream
}

/// After the upstream refused the token (401, 403 or 429): whether this
/// request is retried with the next usable token. Only a refusal listed in
/// `credentials.failover_on`, once per request, and only when another
/// token is usable; otherwise the request is answered degraded (the copy,
/// or the 503).
pub(crate) fn retry_with_next_token(
    listed: bool,
    already_failed_over: bool,
    next_token: bool,
) -> bool {
    listed && !already_failed_over && next_token
}

/// Whether a 401/403 marks the token rejected now. `invalid_token` does;
/// a refusal without an error code only makes the token suspect, unless
/// there is no probe to decide and another path was refused within the
/// window, or it is the `suspect_after`-th refusal in a row (no success
/// anywhere in between): most vendors answer a revoked key with a bare 401,
/// and without this a single-path client (an LLM API's one POST path)
/// would send every request to the dead key first.
pub(crate) fn rejection_confirmed(
    verdict: Verdict,
    suspicion: Option<Suspicion>,
    refusals_in_a_row: u32,
    suspect_after: u32,
    has_probe: bool,
) -> bool {
    match verdict {
        Verdict::Rejected => true,
        Verdict::Suspect => {
            (!has_probe && suspicion == Some(Suspicion::OtherPath))
                || refusals_in_a_row >= suspect_after
        }
        Verdict::NotAboutToken | Verdict::QuotaExhausted => false,
    }
}

/// A quota refusal: how long the token cools down (the vendor's
/// `Retry-After`, else its rate-limit reset, else 60 s; at least 1 s),
/// and the `Retry-After` graceway adds to its answer (none when the
/// upstream sent one: it is passed through).
pub(crate) fn quota_cool_down(
    stated: Option<&HeaderValue>,
    reset_in: Option<u64>,
) -> (u64, Option<HeaderValue>) {
    let stated_secs = stated.and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let secs = stated_secs.or(reset_in);
    let add = if stated.is_some() {
        None
    } else {
        secs.map(HeaderValue::from)
    };
    (secs.unwrap_or(60).max(1), add)
}

/// Why the proxy failed, when it is the upstream's doing: a timeout, no
/// connection, or a token refusal whose retry was not allowed (a body too
/// large to replay) which is answered like any other refusal, never with
/// the 401 itself. `None`: the client's doing or graceway's own.
pub(crate) fn failure_reason(
    etype: &ErrorType,
    source: &ErrorSource,
    failover_pending: bool,
) -> Option<Reason> {
    match etype {
        ErrorType::HTTPStatus(401 | 403) if failover_pending => Some(Reason::TokenRejected),
        ErrorType::HTTPStatus(429) if failover_pending => Some(Reason::RateLimited),
        _ if *source != ErrorSource::Upstream => None,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(Reason::UpstreamTimeout),
        _ => Some(Reason::UpstreamUnreachable),
    }
}

/// A failed connect: the upstream's address may have moved.
pub(crate) fn is_connect_failure(etype: &ErrorType) -> bool {
    matches!(
        etype,
        ErrorType::ConnectRefused
            | ErrorType::ConnectTimedout
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
    )
}

/// The status of an error graceway does not answer itself (Pingora's
/// default page): the refused status, 502 for the upstream, 400 for a bad
/// request, 0 (nothing to write) when the client's connection failed.
pub(crate) fn fallback_status(etype: &ErrorType, source: &ErrorSource) -> u16 {
    match (etype, source) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (_, ErrorSource::Upstream) => 502,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_degrades_only_when_its_trigger_is_listed() {
        let all = StaleTriggers::default();
        let none = StaleTriggers::NONE;
        for r in Reason::ALL {
            assert!(degrades(&all, r, None), "{r:?}");
            assert!(!degrades(&none, r, None), "{r:?}");
        }
        // A refusal is a 401 unless the upstream said 403: each has its own
        // trigger; an expired token reads as a 401.
        let only_401 = StaleTriggers {
            s401: true,
            ..StaleTriggers::NONE
        };
        assert!(degrades(&only_401, Reason::TokenRejected, Some(401)));
        assert!(degrades(&only_401, Reason::TokenRejected, None));
        assert!(!degrades(&only_401, Reason::TokenRejected, Some(403)));
        assert!(degrades(&only_401, Reason::TokenExpired, None));
        let only_403 = StaleTriggers {
            s403: true,
            ..StaleTriggers::NONE
        };
        assert!(degrades(&only_403, Reason::TokenRejected, Some(403)));
        assert!(!degrades(&only_403, Reason::TokenRejected, Some(401)));
        let pairs = [
            (
                Reason::RateLimited,
                StaleTriggers {
                    s429: true,
                    ..StaleTriggers::NONE
                },
            ),
            (
                Reason::Upstream5xx,
                StaleTriggers {
                    s5xx: true,
                    ..StaleTriggers::NONE
                },
            ),
            (
                Reason::UpstreamTimeout,
                StaleTriggers {
                    timeout: true,
                    ..StaleTriggers::NONE
                },
            ),
            (
                Reason::UpstreamUnreachable,
                StaleTriggers {
                    connect_error: true,
                    ..StaleTriggers::NONE
                },
            ),
            (
                Reason::TokenUnavailable,
                StaleTriggers {
                    token_unavailable: true,
                    ..StaleTriggers::NONE
                },
            ),
        ];
        for (reason, on) in pairs {
            for r in Reason::ALL {
                assert_eq!(degrades(&on, r, Some(500)), r == reason, "{on:?} {r:?}");
            }
        }
    }

    #[test]
    fn only_a_200_to_a_storable_request_that_is_no_stream_is_kept() {
        assert!(keeps(true, 200, false));
        assert!(!keeps(false, 200, false));
        assert!(!keeps(true, 200, true));
        for status in [201, 203, 204, 206, 301, 304, 404, 500] {
            assert!(!keeps(true, status, false), "{status}");
        }
    }

    #[test]
    fn a_refusal_retries_once_and_only_when_listed_and_another_token_exists() {
        assert!(retry_with_next_token(true, false, true));
        assert!(
            !retry_with_next_token(false, false, true),
            "not in failover_on"
        );
        assert!(
            !retry_with_next_token(true, true, true),
            "already failed over once"
        );
        assert!(
            !retry_with_next_token(true, false, false),
            "no other usable token"
        );
    }

    #[test]
    fn a_refusal_without_error_code_is_confirmed_on_another_path_or_by_its_streak() {
        let c = |v, s, n, probe| rejection_confirmed(v, s, n, 3, probe);
        assert!(c(Verdict::Rejected, None, 0, true));
        assert!(c(Verdict::Rejected, None, 0, false));
        for s in [Suspicion::First, Suspicion::SamePath] {
            assert!(!c(Verdict::Suspect, Some(s), 1, false));
            assert!(!c(Verdict::Suspect, Some(s), 2, true));
        }
        assert!(c(Verdict::Suspect, Some(Suspicion::OtherPath), 2, false));
        // With a probe, the probe decides another path...
        assert!(!c(Verdict::Suspect, Some(Suspicion::OtherPath), 2, true));
        // ...but the third refusal in a row confirms, probe or not, on one
        // path (an LLM API's one POST path).
        assert!(c(Verdict::Suspect, Some(Suspicion::SamePath), 3, false));
        assert!(c(Verdict::Suspect, Some(Suspicion::SamePath), 3, true));
        assert!(!c(Verdict::NotAboutToken, None, 9, false));
        assert!(!c(Verdict::QuotaExhausted, None, 9, false));
    }

    #[test]
    fn a_suspicion_streak_confirms_at_suspect_after_whatever_the_path() {
        // No suspicion recorded for the refusal: only the streak counts.
        assert!(!rejection_confirmed(Verdict::Suspect, None, 2, 3, false));
        assert!(rejection_confirmed(Verdict::Suspect, None, 3, 3, false));
        assert!(rejection_confirmed(Verdict::Suspect, None, 4, 3, true));
        // `suspect_after: 1`: the first bare refusal confirms.
        assert!(rejection_confirmed(
            Verdict::Suspect,
            Some(Suspicion::First),
            1,
            1,
            true
        ));
        // Another path confirms on the second refusal already, without a probe.
        assert!(rejection_confirmed(
            Verdict::Suspect,
            Some(Suspicion::OtherPath),
            1,
            5,
            false
        ));
    }

    #[test]
    fn quota_cool_down_prefers_the_vendors_retry_after_and_never_repeats_it() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(quota_cool_down(Some(&h("30")), Some(90)), (30, None));
        assert_eq!(quota_cool_down(Some(&h(" 7 ")), None), (7, None));
        assert_eq!(
            quota_cool_down(None, Some(90)),
            (90, Some(HeaderValue::from(90u64)))
        );
        assert_eq!(quota_cool_down(None, None), (60, None));
        // An unreadable Retry-After: the reset decides, the header is passed on.
        assert_eq!(quota_cool_down(Some(&h("soon")), Some(12)), (12, None));
        assert_eq!(quota_cool_down(Some(&h("soon")), None), (60, None));
        // Zero means "now": still at least a second.
        assert_eq!(quota_cool_down(Some(&h("0")), None), (1, None));
        // A value that is not text, or not whole seconds (an HTTP date, a
        // fraction, a negative): the reset decides, the header is passed on.
        let binary = HeaderValue::from_bytes(b"\xff30").unwrap();
        assert_eq!(quota_cool_down(Some(&binary), Some(12)), (12, None));
        for v in ["Wed, 21 Oct 2026 07:28:00 GMT", "1.5", "-5"] {
            assert_eq!(quota_cool_down(Some(&h(v)), Some(12)), (12, None), "{v}");
        }
    }

    #[test]
    fn failures_are_the_upstreams_only_when_it_caused_them() {
        let up = ErrorSource::Upstream;
        let down = ErrorSource::Downstream;
        assert_eq!(
            failure_reason(&ErrorType::ReadTimedout, &up, false),
            Some(Reason::UpstreamTimeout)
        );
        assert_eq!(
            failure_reason(&ErrorType::WriteTimedout, &up, false),
            Some(Reason::UpstreamTimeout)
        );
        assert_eq!(
            failure_reason(&ErrorType::ConnectRefused, &up, false),
            Some(Reason::UpstreamUnreachable)
        );
        assert_eq!(failure_reason(&ErrorType::ReadTimedout, &down, false), None);
        assert_eq!(
            failure_reason(&ErrorType::ConnectionClosed, &down, false),
            None
        );
        // A refused token whose retry could not happen is never a 401 to the client.
        assert_eq!(
            failure_reason(&ErrorType::HTTPStatus(401), &up, true),
            Some(Reason::TokenRejected)
        );
        assert_eq!(
            failure_reason(&ErrorType::HTTPStatus(403), &ErrorSource::Internal, true),
            Some(Reason::TokenRejected)
        );
        assert_eq!(
            failure_reason(&ErrorType::HTTPStatus(429), &up, true),
            Some(Reason::RateLimited)
        );
        assert_eq!(
            failure_reason(&ErrorType::HTTPStatus(401), &ErrorSource::Internal, false),
            None
        );
        assert_eq!(
            failure_reason(&ErrorType::HTTPStatus(429), &ErrorSource::Internal, false),
            None
        );
        // A connect that timed out never reached the upstream: unreachable,
        // not a timeout (that is a read or write the upstream left waiting).
        assert_eq!(
            failure_reason(&ErrorType::ConnectTimedout, &up, false),
            Some(Reason::UpstreamUnreachable)
        );
        assert_eq!(
            failure_reason(&ErrorType::ConnectionClosed, &up, false),
            Some(Reason::UpstreamUnreachable)
        );
        // A pending failover changes only what a refusal means: the
        // client's own timeout stays the client's.
        assert_eq!(failure_reason(&ErrorType::ReadTimedout, &down, true), None);
    }

    #[test]
    fn connect_failures_and_fallback_statuses() {
        for e in [
            ErrorType::ConnectRefused,
            ErrorType::ConnectTimedout,
            ErrorType::ConnectNoRoute,
            ErrorType::ConnectError,
        ] {
            assert!(is_connect_failure(&e), "{e:?}");
        }
        for e in [
            ErrorType::ReadTimedout,
            ErrorType::WriteTimedout,
            ErrorType::ConnectionClosed,
            ErrorType::HTTPStatus(502),
        ] {
            assert!(!is_connect_failure(&e), "{e:?}");
        }
        let (up, down) = (ErrorSource::Upstream, ErrorSource::Downstream);
        assert_eq!(fallback_status(&ErrorType::HTTPStatus(413), &down), 413);
        assert_eq!(fallback_status(&ErrorType::ConnectRefused, &up), 502);
        assert_eq!(fallback_status(&ErrorType::ReadError, &down), 0);
        assert_eq!(fallback_status(&ErrorType::ConnectionClosed, &down), 0);
        assert_eq!(fallback_status(&ErrorType::WriteError, &down), 0);
        // A refused status is kept whoever raised it.
        assert_eq!(fallback_status(&ErrorType::HTTPStatus(401), &up), 401);
        assert_eq!(
            fallback_status(&ErrorType::HTTPStatus(503), &ErrorSource::Internal),
            503
        );
        // The upstream's connection failing is a 502, never "nothing to write".
        assert_eq!(fallback_status(&ErrorType::ConnectionClosed, &up), 502);
        assert_eq!(
            fallback_status(&ErrorType::ReadError, &ErrorSource::Internal),
            500
        );
        assert_eq!(fallback_status(&ErrorType::InvalidHTTPHeader, &down), 400);
        assert_eq!(
            fallback_status(&ErrorType::InternalError, &ErrorSource::Internal),
            500
        );
    }
}
