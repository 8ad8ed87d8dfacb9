//! Each state an upstream can be in and why, each transition of its
//! status, and the breaker's log limiter.

use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use super::testing::{token, upstream};
use super::*;

const HOUR: Duration = Duration::from_secs(3600);

/// Whether `wake` holds a notification (without waiting for one).
fn woken(s: &UpstreamStatus) -> bool {
    let mut n = std::pin::pin!(s.wake.notified());
    n.as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

#[test]
fn without_a_usable_token_a_rejection_wins_then_an_expiry_then_a_cool_down() {
    let now = SystemTime::now();
    let until = crate::clock::unix(now) + 3600;
    let expired = token(1, "tok-expired", Some(now - HOUR));
    let cooling = token(2, "tok-cooling", None);
    cooling.evidence.cool_down(until);
    let rejected = token(0, "tok-rejected", None);
    rejected.mark_rejected(403, crate::tokens::ledger::Evidence::VendorSaid);

    // The rejection wins wherever it stands in the list, with its status.
    let up = upstream("a", Some(vec![expired, cooling, rejected]));
    assert_eq!(
        up.no_token_at(now),
        (Some(Reason::TokenRejected), Some(403))
    );
    assert_eq!(up.no_token_cause_at(now), Reason::TokenRejected);

    let expired = token(0, "tok-expired", Some(now - HOUR));
    let cooling = token(1, "tok-cooling", None);
    cooling.evidence.cool_down(until);
    let up = upstream("b", Some(vec![cooling, expired]));
    assert_eq!(up.no_token_at(now), (Some(Reason::TokenExpired), None));
    assert_eq!(up.no_token_cause_at(now), Reason::TokenExpired);

    let cooling = token(0, "tok-cooling", None);
    cooling.evidence.cool_down(until);
    let up = upstream("c", Some(vec![cooling]));
    assert_eq!(up.no_token_at(now), (Some(Reason::RateLimited), Some(429)));
    assert_eq!(up.no_token_cause_at(now), Reason::RateLimited);

    // Every source failed: no reason the upstream gave.
    let up = upstream("d", Some(vec![testing::unavailable(0)]));
    assert_eq!(up.no_token_at(now), (None, None));
    assert_eq!(up.no_token_cause_at(now), Reason::TokenUnavailable);

    // A suspect token is still sent: nothing to report.
    let suspect = token(0, "tok-suspect", None);
    suspect.evidence.suspect(7, crate::clock::unix(now));
    let up = upstream("e", Some(vec![suspect]));
    assert_eq!(up.no_token_at(now), (None, None));
}

#[test]
fn retry_after_is_the_first_cool_down_to_end_and_at_least_a_second() {
    let now = crate::clock::from_unix(1_000_000) + Duration::from_millis(250);
    let soon = token(0, "tok-soon", None);
    let late = token(1, "tok-late", None);
    let up = upstream("a", Some(vec![soon, late]));
    assert_eq!(up.cooldown_retry_after_at(now), None, "nothing cooling");
    up.tokens.tokens[1].evidence.cool_down(1_000_090);
    up.tokens.tokens[0].evidence.cool_down(1_000_030);
    // 29.75 s to go: whole seconds, the earlier of the two.
    assert_eq!(
        up.cooldown_retry_after_at(now),
        Some(HeaderValue::from(29u64))
    );
    // 0.75 s to go: never `Retry-After: 0`.
    up.tokens.tokens[0].evidence.cool_down(1_000_001);
    assert_eq!(
        up.cooldown_retry_after_at(now),
        Some(HeaderValue::from(1u64))
    );
    // A cool-down that has ended does not count.
    up.tokens.tokens[0].evidence.cool_down(1_000_000);
    assert_eq!(
        up.cooldown_retry_after_at(now),
        Some(HeaderValue::from(89u64))
    );
}

#[test]
fn a_token_problem_makes_an_upstream_down_or_degraded_by_its_copies() {
    let now = SystemTime::now();
    let rejected = token(0, "tok-rejected", None);
    rejected.mark_rejected(401, crate::tokens::ledger::Evidence::VendorSaid);
    let up = upstream("a", Some(vec![rejected]));
    assert_eq!(
        up.state(now),
        (UpstreamState::Down, Some(Reason::TokenRejected))
    );
    up.status.stored_entries.store(1, Ordering::Relaxed);
    assert_eq!(
        up.state(now),
        (UpstreamState::Degraded, Some(Reason::TokenRejected))
    );

    let up = upstream("b", Some(vec![token(0, "tok-old", Some(now - HOUR))]));
    up.status.stored_entries.store(3, Ordering::Relaxed);
    assert_eq!(
        up.state(now),
        (UpstreamState::Degraded, Some(Reason::TokenExpired))
    );

    // Every source failed: copies are served only when `stale.on`
    // lists `token_unavailable`.
    let mut up = upstream("c", Some(vec![testing::unavailable(0)]));
    up.status.stored_entries.store(1, Ordering::Relaxed);
    up.config.stale.on.token_unavailable = true;
    assert_eq!(
        up.state(now),
        (UpstreamState::Degraded, Some(Reason::TokenUnavailable))
    );
    up.config.stale.on.token_unavailable = false;
    assert_eq!(
        up.state(now),
        (UpstreamState::Down, Some(Reason::TokenUnavailable))
    );
}

#[test]
fn the_health_breaker_then_the_last_degraded_answer_say_why() {
    let now = SystemTime::now();
    let up = upstream("a", Some(vec![token(0, "tok-good", None)]));
    assert_eq!(up.state(now), (UpstreamState::Healthy, None));

    // A degraded answer with usable tokens and a closed breaker: degraded
    // (some 503s), copies or not.
    up.status.mark_degraded(Reason::RateLimited);
    assert_eq!(
        up.state(now),
        (UpstreamState::Degraded, Some(Reason::RateLimited))
    );

    // An open health breaker says more than the last answer did.
    up.status.health.trip(Reason::UpstreamTimeout);
    assert_eq!(
        up.state(now),
        (UpstreamState::Down, Some(Reason::UpstreamTimeout))
    );
    up.status.stored_entries.store(1, Ordering::Relaxed);
    assert_eq!(
        up.state(now),
        (UpstreamState::Degraded, Some(Reason::UpstreamTimeout))
    );

    up.status.health.success();
    up.status.mark_healthy();
    assert_eq!(up.state(now), (UpstreamState::Healthy, None));
}

#[test]
fn tokens_say_why_before_the_health_breaker_and_only_when_injected() {
    let now = SystemTime::now();
    let rejected = token(0, "tok-rejected", None);
    rejected.mark_rejected(401, crate::tokens::ledger::Evidence::VendorSaid);
    let up = upstream("a", Some(vec![rejected]));
    up.status.health.trip(Reason::Upstream5xx);
    assert_eq!(
        up.state(now),
        (UpstreamState::Down, Some(Reason::TokenRejected))
    );

    // No credentials: no token to lack; the breaker decides.
    let up = upstream("b", None);
    assert_eq!(up.state(now), (UpstreamState::Healthy, None));
    up.status.health.trip(Reason::Upstream5xx);
    assert_eq!(
        up.state(now),
        (UpstreamState::Down, Some(Reason::Upstream5xx))
    );
}

#[test]
fn a_degradation_keeps_its_start_while_its_reason_changes_and_ends_on_a_fresh_answer() {
    let s = UpstreamStatus::new("upstream-tests-degradation");
    assert_eq!(s.degradation(), None);
    assert_eq!(s.last_failure(), None);
    s.mark_healthy();
    assert_eq!(s.degradation(), None, "healthy stays healthy");

    s.mark_degraded(Reason::Upstream5xx);
    let (reason, since) = s.degradation().expect("degraded");
    assert_eq!(reason, Reason::Upstream5xx);
    assert!(since <= SystemTime::now() && since > SystemTime::now() - HOUR);
    assert_eq!(s.metrics.degraded.get(), 1);
    assert_eq!(
        s.last_failure().map(|f| f.1),
        Some(Some(Reason::Upstream5xx))
    );

    // Pin the start to tell it apart from the clock.
    s.degraded_since.store(1_000, Ordering::Relaxed);
    s.mark_degraded(Reason::TokenRejected);
    assert_eq!(
        s.degradation(),
        Some((Reason::TokenRejected, crate::clock::from_unix(1_000))),
        "another reason, the same degradation"
    );
    assert_eq!(
        s.last_failure().map(|f| f.1),
        Some(Some(Reason::TokenRejected))
    );
    s.mark_degraded(Reason::TokenRejected);
    assert_eq!(
        s.degradation().map(|d| d.1),
        Some(crate::clock::from_unix(1_000))
    );

    s.mark_healthy();
    assert_eq!(s.degradation(), None);
    assert_eq!(s.metrics.degraded.get(), 0);
    assert_eq!(s.degraded_since.load(Ordering::Relaxed), 0);
    // The last failure stays as history.
    assert_eq!(
        s.last_failure().map(|f| f.1),
        Some(Some(Reason::TokenRejected))
    );

    // A new degradation starts a new clock.
    s.mark_degraded(Reason::UpstreamTimeout);
    assert_ne!(
        s.degradation().map(|d| d.1),
        Some(crate::clock::from_unix(1_000))
    );
}

#[test]
fn successes_and_failures_are_kept_with_their_time_and_reason() {
    let s = UpstreamStatus::new("upstream-tests-history");
    assert_eq!(s.last_success(), None);
    s.record_success(1_700_000_000);
    assert_eq!(
        s.last_success(),
        Some(crate::clock::from_unix(1_700_000_000))
    );
    s.record_failure(1_700_000_005, Reason::UpstreamUnreachable);
    assert_eq!(
        s.last_failure(),
        Some((
            crate::clock::from_unix(1_700_000_005),
            Some(Reason::UpstreamUnreachable)
        ))
    );
    assert_eq!(s.last_good_path(), None);
    s.set_last_good_path("/v1/emojis/smile".into());
    assert_eq!(
        s.last_good_path().as_deref().map(String::as_str),
        Some("/v1/emojis/smile")
    );
}

#[test]
fn the_health_breaker_opens_after_its_streak_wakes_the_task_and_closes_on_success() {
    let s = UpstreamStatus::new("upstream-tests-breaker");
    s.health
        .configure(3, Duration::from_secs(1), Duration::from_secs(8));
    s.health_failure(Reason::Upstream5xx);
    s.health_failure(Reason::Upstream5xx);
    assert!(!s.health.is_open());
    assert_eq!(s.metrics.breaker_open.get(), 0);
    assert!(!woken(&s), "no wake before the breaker opens");

    s.health_failure(Reason::UpstreamTimeout);
    assert!(s.health.is_open());
    assert_eq!(s.health.reason(), Some(Reason::UpstreamTimeout));
    assert_eq!(s.metrics.breaker_open.get(), 1);
    assert!(woken(&s), "the opening wakes the probe or trial task");
    s.health_failure(Reason::UpstreamTimeout);
    assert!(!woken(&s), "an open breaker is not opened again");

    s.health_success();
    assert!(!s.health.is_open());
    assert_eq!(s.metrics.breaker_open.get(), 0);
    // A success resets the streak: two more failures do not open it.
    s.health_failure(Reason::Upstream5xx);
    s.health_success();
    s.health_failure(Reason::Upstream5xx);
    s.health_failure(Reason::Upstream5xx);
    assert!(!s.health.is_open());
}

#[test]
fn breaker_changes_are_logged_once_a_second_with_the_count_left_out() {
    let s = UpstreamStatus::new("upstream-tests-log");
    let t = 1_700_000_000_000;
    assert_eq!(s.breaker_log_due_at(t), Some(0));
    assert_eq!(s.breaker_log_due_at(t + 1), None);
    assert_eq!(s.breaker_log_due_at(t + BREAKER_LOG_EVERY_MS - 1), None);
    assert_eq!(s.breaker_log_due_at(t + BREAKER_LOG_EVERY_MS), Some(2));
    assert_eq!(s.breaker_log_due_at(t + BREAKER_LOG_EVERY_MS), None);
    assert_eq!(s.breaker_log_due_at(t + 5 * BREAKER_LOG_EVERY_MS), Some(1));
    assert_eq!(s.breaker_log_due_at(t + 7 * BREAKER_LOG_EVERY_MS), Some(0));

    assert_eq!(flapped(0), "");
    let tail = flapped(3);
    assert!(tail.contains("3 more opens and closes"), "{tail}");
    assert!(tail.contains("flapping"), "{tail}");
}
