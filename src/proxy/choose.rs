//! Where a request's token is chosen: for its first attempt, for the auth
//! breaker's trial, and for the retry after a refusal. Nothing else in the
//! proxy picks a token (`tests/it/architecture.rs` checks it). Which rule
//! applies is decided here ([`rule`]): the sticky header's rendezvous
//! when the request carries it, else `credentials.select`; the rules
//! themselves are `tokens::pool`'s, applied by `tokens::choice`.

use super::*;
use crate::config::Select;
use crate::tokens::pool::{Pick, Rule};
use crate::tokens::Token;

/// How this request's token was chosen, and what it waited for one: for
/// the access log (`pick=`, `queued_ms=`) and the retry (the same sticky
/// key). Never the sticky header's value: only its hash.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Chosen {
    pub pick: Pick,
    /// The rendezvous key of the request's sticky header, when it has one.
    pub sticky: Option<u64>,
    /// Milliseconds waited in the quota queue, when it waited.
    pub queued_ms: Option<u64>,
}

/// The rule for `attempt` (first or retry) and the pick it is logged as.
/// A round-robin first attempt takes its turn here (one relaxed
/// `fetch_add`); nothing else changes.
fn rule(ctx: &RequestCtx, up: &Upstream, attempt: Attempt) -> (Rule, Pick) {
    let select = up
        .config
        .credentials
        .as_ref()
        .map_or(Select::Failover, |c| c.select);
    let first = attempt == Attempt::First;
    let pick = |p| if first { p } else { Pick::Retry };
    if let Some(key) = ctx.pool.sticky {
        return (Rule::Rendezvous(key), pick(Pick::Sticky));
    }
    match select {
        Select::Failover => (Rule::Ordered, pick(Pick::Failover)),
        Select::MostRemaining => (Rule::MostRemaining, pick(Pick::MostRemaining)),
        Select::RoundRobin if first => {
            let n = up
                .tokens
                .pool
                .rotation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (Rule::Rotate(n), Pick::RoundRobin)
        }
        Select::RoundRobin => (Rule::After(ctx.token.unwrap_or(0)), Pick::Retry),
    }
}

/// Notes the request's sticky key (`credentials.sticky_header`, name
/// parsed at load): a hash of the header's first value, no copy of it.
pub(super) fn note_sticky(ctx: &mut RequestCtx, up: &Upstream, req: &RequestHeader) {
    let name = up
        .config
        .credentials
        .as_ref()
        .and_then(|c| c.sticky_header.as_ref());
    ctx.pool.sticky = name
        .and_then(|n| req.headers.get(n))
        .map(|v| crate::tokens::pool::sticky_key(v.as_bytes()));
}

/// Which attempt a token is wanted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// The request's first attempt: the usable token its rule chooses.
    First,
    /// No token is usable and the auth breaker lets this request through
    /// as its trial: successive trials cycle through the rejected tokens,
    /// so whichever the vendor takes back is found.
    Trial,
    /// The retry after a refusal: a usable token this request has not
    /// carried yet, by the same rule.
    Retry,
}

/// The token for `attempt`, without changing anything but a round-robin
/// turn: a refusal's log line names the retry's token before the retry is
/// decided.
pub(super) fn token<'a>(
    ctx: &RequestCtx,
    up: &'a Upstream,
    attempt: Attempt,
    now: SystemTime,
) -> Option<&'a Token> {
    chosen(ctx, up, attempt, now).map(|(t, _)| t)
}

/// [`token`] with the pick it is logged as.
fn chosen<'a>(
    ctx: &RequestCtx,
    up: &'a Upstream,
    attempt: Attempt,
    now: SystemTime,
) -> Option<(&'a Token, Pick)> {
    match attempt {
        Attempt::First | Attempt::Retry => {
            let (rule, pick) = rule(ctx, up, attempt);
            let tried = if attempt == Attempt::Retry {
                ctx.tried
            } else {
                0
            };
            up.tokens.choose_by(rule, tried, now).map(|t| (t, pick))
        }
        Attempt::Trial => {
            let n = up
                .auth_trials
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            up.tokens.trial_token(n, now).map(|t| (t, Pick::Trial))
        }
    }
}

/// Chooses the token for `attempt` and makes it the one the next attempt
/// carries (`upstream_request_filter` injects it). `false`: none.
pub(super) fn carry(ctx: &mut RequestCtx, up: &Upstream, attempt: Attempt) -> bool {
    match chosen(ctx, up, attempt, SystemTime::now()) {
        Some((t, pick)) => {
            set(ctx, up, t, pick);
            true
        }
        None => false,
    }
}

/// Lets this request through as the auth breaker's trial when it may be:
/// without the fleet ledger, when the breaker grants this window's trial;
/// with it, when this replica won the fleet's trial lock for a token and
/// left the trial to a request (`Upstream::trial_grant`), so the fleet
/// sends one trial per token per window. True when the request carries it.
pub(super) fn trial(ctx: &mut RequestCtx, up: &Upstream) -> bool {
    if !up.tokens.in_fleet() {
        return up.auth.try_trial() && carry(ctx, up, Attempt::Trial);
    }
    let granted = up.trial_grant.swap(0, std::sync::atomic::Ordering::Relaxed);
    let now = SystemTime::now();
    match granted
        .checked_sub(1)
        .and_then(|i| up.tokens.tokens.get(i))
        .filter(|t| t.state(now) == crate::tokens::TokenState::Rejected)
    {
        Some(t) => {
            set(ctx, up, t, Pick::Trial);
            true
        }
        None => false,
    }
}

/// The token a background refresh of a copy carries (`refresh`): the one
/// a request's first attempt without a sticky header would.
pub(super) fn for_refresh(up: &Upstream) -> Option<&Token> {
    let (rule, pick) = rule(&RequestCtx::default(), up, Attempt::First);
    let t = up.tokens.choose_by(rule, 0, SystemTime::now())?;
    up.tokens.pool.picked(t.index, pick);
    Some(t)
}

/// Makes `t` (chosen by [`token`]) the token the next attempt carries,
/// and counts the pick: a trial or a retry is marked as such.
pub(super) fn set(ctx: &mut RequestCtx, up: &Upstream, t: &Token, pick: Pick) {
    ctx.token = Some(t.index);
    match pick {
        Pick::Trial => ctx.auth_trial = true,
        Pick::Retry => ctx.failover_pending = true,
        _ => {}
    }
    ctx.pool.pick = pick;
    up.tokens.pool.picked(t.index, pick);
}
