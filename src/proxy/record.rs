//! Where an attempt's outcome is recorded: the health breaker, the token's
//! state, the upstream's degradation state and the per-upstream counters.
//! The hooks say what happened ([`Event`], or a refusal's verdict) and
//! this module writes it down; nothing else in the proxy changes that
//! state (`tests/it/architecture.rs` checks it), so "what counts as a
//! success" is decided once:
//!
//! - the health breaker: an upstream header is a success unless it is a
//!   5xx; a timeout or no connection is a failure; a stream's end, pause
//!   or cut after its header is nothing;
//! - the degradation state: a fresh answer below 400 ends it, a degraded
//!   answer starts or updates it, an upstream failure answered by
//!   Pingora's default updates it too;
//! - the last success (`/status`): a request that ended with a fresh
//!   answer below 400.

use super::*;
use crate::tokens::Token;

/// What happened to a request's attempt, as the hooks learn it.
pub(super) enum Event<'e> {
    /// The upstream's header arrived with `status`.
    Answered { status: u16 },
    /// A copy answers with nothing wrong, before any vendor call.
    Hit(crate::outcome::Hit),
    /// A fresh answer (not replaced) goes to the client.
    Fresh { status: u16 },
    /// A degraded answer was written for `reason`: the copy (`stale`) or
    /// the 503.
    Degraded { reason: Reason, stale: bool },
    /// The attempt failed with `error`, the upstream's doing for `reason`.
    Failed { reason: Reason, error: &'e Error },
    /// The request is over (`logging`); `failed`: it ended with an error.
    Done { failed: bool },
}

pub(super) fn record(ctx: &mut RequestCtx, up: &Upstream, event: Event<'_>) {
    let status = &up.status;
    match event {
        Event::Answered { status: code } => {
            status.metrics.upstream_response(code);
            if let Some(t0) = ctx.sent_at {
                let took = t0.elapsed();
                ctx.upstream_time = Some(took);
                status.metrics.duration.observe(took.as_secs_f64());
            }
            if code >= 500 {
                status.health_failure(Reason::Upstream5xx);
            } else {
                status.health_success();
            }
        }
        Event::Hit(kind) => {
            ctx.outcome = Outcome::Hit(kind);
            status.metrics.hits[kind as usize].inc();
        }
        Event::Fresh { status: code } => {
            ctx.outcome = Outcome::Fresh;
            if code < 400 {
                status.mark_healthy();
            }
        }
        Event::Degraded { reason, stale } => {
            ctx.outcome = if stale {
                status.metrics.stale_served(reason);
                Outcome::Stale(reason)
            } else {
                Outcome::Error(Some(reason))
            };
            status.mark_degraded(reason);
        }
        Event::Failed { reason, error } => {
            // A failed connect re-resolves the host at the next control
            // tick; a timeout or no connection feeds the health breaker.
            if decide::is_connect_failure(error.etype()) {
                up.resolve_now
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if matches!(
                reason,
                Reason::UpstreamTimeout | Reason::UpstreamUnreachable
            ) {
                status.health_failure(reason);
            }
        }
        Event::Done { failed } => {
            let m = &status.metrics;
            match ctx.outcome {
                Outcome::Fresh if !failed || ctx.stream => {
                    m.ok.inc();
                    if ctx.upstream_status < 400 {
                        status.record_success(unix_now());
                    }
                }
                Outcome::Stale(_) => m.stale.inc(),
                Outcome::Hit(_) => m.hit.inc(),
                Outcome::Client(_) => m.client.inc(),
                _ => m.error.inc(),
            }
        }
    }
}

/// The upstream failed the attempt and graceway does not answer it: the
/// degradation state says so all the same.
pub(super) fn unanswered_failure(ctx: &mut RequestCtx, up: &Upstream, reason: Reason) {
    up.status.mark_degraded(reason);
    ctx.outcome = Outcome::Error(Some(reason));
}

/// Token `t` got an answer other than 401/403/429: a suspicion ends with
/// any answer below 400, and an auth-breaker trial that was not refused
/// clears the rejection (the vendor took the token back).
pub(super) fn token_answered(ctx: &RequestCtx, up: &Upstream, t: &Token, status: u16) {
    if status < 400 && t.evidence.clear_suspect() {
        log::info!(
            "upstream {}: token {} ({}) answered {status}: no longer suspect",
            up.config.name,
            t.index,
            t.fingerprint
        );
    }
    if ctx.auth_trial {
        if t.recovered(crate::tokens::ledger::Evidence::Trial) {
            log::info!(
                "upstream {}: token {} ({}) accepted again (answered {status}); auth breaker closed",
                up.config.name,
                t.index,
                t.fingerprint
            );
        }
        up.auth.success();
    }
}

/// A 401/403 that may be about token `t` on `path`: one more suspicion.
/// A new suspicion wakes the probe to decide it at once
/// (`app::probe::run`, which looks for a newer `suspect_since`); the
/// refusals after it change nothing the probe reads, and waking it on
/// each cost a cross-thread wake-up per request (an eventfd write and a
/// context switch: 63 against 39 us of CPU per request in
/// `benches/compare.sh` row 7a).
pub(super) fn token_suspected(up: &Upstream, t: &Token, path: &str) -> Suspicion {
    let s = t.evidence.suspect(refusal::path_hash(path), unix_now());
    if s == Suspicion::First {
        up.status.wake.notify_one();
    }
    s
}

/// No token is usable (`reason`): the auth breaker opens, logged once per
/// opening, and the background trials are woken.
pub(super) fn auth_tripped(up: &Upstream, reason: Reason, probed: bool) {
    if up.auth.trip(reason) {
        log::warn!(
            "upstream {}: auth breaker open: no usable token ({}); answering from the last-good cache until {}",
            up.config.name,
            up.no_token_cause().as_str(),
            if probed { "a probe succeeds or the tokens change" } else { "a trial request succeeds or the tokens change" }
        );
        up.status.wake.notify_one();
    }
}

/// Token `t` is rejected (confirmed by `evidence`), logged once per
/// rejection; `said` is the vendor's redacted detail, `next` what this
/// request does instead.
pub(super) fn token_rejected(
    up: &Upstream,
    t: &Token,
    status: u16,
    evidence: crate::tokens::ledger::Evidence,
    said: &str,
    next: &str,
) {
    if t.mark_rejected(status, evidence) {
        log::warn!(
            "upstream {}: token {} ({}) rejected with {status}: {said}; {next}",
            up.config.name,
            t.index,
            t.fingerprint
        );
    }
}

/// Token `t`'s quota is spent for `secs` from `now` (Unix seconds); logged
/// once per cool-down when a refusal with `status` said so (a quota header
/// alone is not logged).
pub(super) fn token_cooled(up: &Upstream, t: &Token, now: u64, secs: u64, status: Option<u16>) {
    // `now` is whole seconds, cut down: a reset `secs` from this instant
    // may fall up to a second after `now + secs`. One more second, so a
    // token is never sent into the last moment of a spent window (found by
    // benches/vendor_calls.py: one 429 per window without it).
    if t.cool_down(now + secs + 1) {
        if let Some(status) = status {
            log::warn!(
                "upstream {}: token {} ({}) is out of quota ({status}); skipped for {secs} s",
                up.config.name,
                t.index,
                t.fingerprint,
            );
        }
    }
}

/// What a background refresh (`refresh`) learned of the upstream: no
/// answer (`Err`), or the status it answered with. It feeds the health
/// breaker as a request's answer would.
pub(super) fn refresh_answered(up: &Upstream, answer: std::result::Result<u16, Reason>) {
    match answer {
        Err(reason) => up.status.health_failure(reason),
        Ok(status) if status >= 500 => up.status.health_failure(Reason::Upstream5xx),
        Ok(_) => up.status.health_success(),
    }
}

/// A background refresh renewed or replaced a copy: the upstream answers
/// with content again.
pub(super) fn refresh_kept(up: &Upstream) {
    up.status.mark_healthy();
}
