//! Where a request's token is chosen: for its first attempt, for the auth
//! breaker's trial, and for the retry after a refusal. Nothing else in the
//! proxy picks a token (`tests/it/architecture.rs` checks it), so the rule
//! "the first usable token not yet tried, in the configured order" is
//! written once; the ledger and token pools change it here.

use super::*;
use crate::tokens::Token;

/// Which attempt a token is wanted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// The request's first attempt: the first usable token.
    First,
    /// No token is usable and the auth breaker lets this request through
    /// as its trial: successive trials cycle through the rejected tokens,
    /// so whichever the vendor takes back is found.
    Trial,
    /// The retry after a refusal: the first usable token this request has
    /// not carried yet.
    Retry,
}

/// The token for `attempt`, without changing anything: a refusal's log
/// line names the retry's token before the retry is decided.
pub(super) fn token<'a>(
    ctx: &RequestCtx,
    up: &'a Upstream,
    attempt: Attempt,
    now: SystemTime,
) -> Option<&'a Token> {
    match attempt {
        Attempt::First => up.tokens.pick(0, now),
        Attempt::Retry => up.tokens.pick(ctx.tried, now),
        Attempt::Trial => {
            let n = up
                .auth_trials
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            up.tokens.trial_token(n, now)
        }
    }
}

/// Chooses the token for `attempt` and makes it the one the next attempt
/// carries (`upstream_request_filter` injects it). `false`: none.
pub(super) fn carry(ctx: &mut RequestCtx, up: &Upstream, attempt: Attempt) -> bool {
    match token(ctx, up, attempt, SystemTime::now()) {
        Some(t) => {
            set(ctx, t, attempt);
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
            set(ctx, t, Attempt::Trial);
            true
        }
        None => false,
    }
}

/// The token a background refresh of a copy carries (`refresh`): the one
/// a request's first attempt would.
pub(super) fn for_refresh(up: &Upstream) -> Option<&Token> {
    up.tokens.pick(0, SystemTime::now())
}

/// Makes `t` (chosen by [`token`]) the token the next attempt carries.
pub(super) fn set(ctx: &mut RequestCtx, t: &Token, attempt: Attempt) {
    ctx.token = Some(t.index);
    match attempt {
        Attempt::First => {}
        Attempt::Trial => ctx.auth_trial = true,
        Attempt::Retry => ctx.failover_pending = true,
    }
}
