//! The first attempt's token, with pacing instead of 429
//! (`credentials.queue`): when every token that could be sent is in its
//! quota cool-down (the vendor said its quota is spent, and when it
//! resets), a request whose reset is within `max_wait` waits for it in a
//! bounded queue and then chooses again, instead of going to a certain
//! refusal. Past `max_wait`, or with the queue full, it is answered from
//! the copy (`rate-limited`) or with a 503 and `Retry-After`, never sent.
//!
//! The queue is a count, not a list: the upstream's
//! `graceway_token_queue_waiting` gauge is the one atomic that bounds it
//! (incremented on entry, backed out when that passes `max_queued`,
//! decremented when the waiter leaves, whichever way), and each waiter
//! sleeps on its own tokio timer until the reset. Nothing is locked.

use std::time::Duration;

use super::*;
use crate::metrics::pool::QueueOutcome;

/// How long to wait for a reset at `reset` seen at `now`, when it comes
/// within `left`; `None`: no reset known, or too far (answer now).
pub(super) fn wait_for(
    reset: Option<SystemTime>,
    now: SystemTime,
    left: Duration,
) -> Option<Duration> {
    let wait = reset?.duration_since(now).unwrap_or(Duration::ZERO);
    (wait <= left).then_some(wait.max(Duration::from_millis(1)))
}

/// The earliest end of a quota cool-down among the tokens that would be
/// usable but for it (a rejected or expired token's reset does not help).
fn earliest_reset(up: &Upstream, now: SystemTime) -> Option<SystemTime> {
    up.tokens
        .tokens
        .iter()
        .filter(|t| t.state(now) == crate::tokens::TokenState::RateLimited)
        .filter_map(|t| t.evidence.cool_until(now))
        .min()
}

/// A place in the queue, given back on drop (the request may end while it
/// waits: a drain, a client gone).
struct Place<'a>(&'a prometheus::IntGauge);

impl<'a> Place<'a> {
    fn take(waiting: &'a prometheus::IntGauge, max: u32) -> Option<Place<'a>> {
        waiting.inc();
        if waiting.get() > i64::from(max) {
            waiting.dec();
            return None;
        }
        Some(Place(waiting))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Proxy {
    /// Chooses the first attempt's token (the sticky header noted first).
    /// `Some(false)`: a token is carried, send; `Some(true)`: answered
    /// here (the queue gave up); `None`: no token is usable and the queue
    /// does not apply, [`Proxy::without_usable_token`] answers.
    pub(super) async fn first_token(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
    ) -> Result<Option<bool>> {
        choose::note_sticky(ctx, up, session.req_header());
        if choose::carry(ctx, up, choose::Attempt::First) {
            return Ok(Some(false));
        }
        let Some(queue) = up
            .config
            .credentials
            .as_ref()
            .map(|c| c.queue)
            .filter(|q| q.on())
        else {
            return Ok(None);
        };
        let now = SystemTime::now();
        let Some(mut wait) = wait_for(earliest_reset(up, now), now, queue.max_wait) else {
            return Ok(None);
        };
        let series = &up.tokens.pool.series;
        let Some(place) = Place::take(&series.waiting, queue.max_queued) else {
            return self.give_up(session, ctx, up).await.map(Some);
        };
        let started = Instant::now();
        let deadline = started + queue.max_wait;
        loop {
            tokio::time::sleep(wait).await;
            ctx.pool.queued_ms = Some(started.elapsed().as_millis() as u64);
            if choose::carry(ctx, up, choose::Attempt::First) {
                series.waited(QueueOutcome::Sent);
                return Ok(Some(false));
            }
            let now = SystemTime::now();
            let reset = earliest_reset(up, now);
            if reset.is_none() {
                // Nothing cools any more, yet nothing is usable (rejected
                // meanwhile): the auth breaker's path answers.
                return Ok(None);
            }
            match wait_for(
                reset,
                now,
                deadline.saturating_duration_since(Instant::now()),
            ) {
                Some(w) => wait = w,
                None => break,
            }
        }
        drop(place);
        self.give_up(session, ctx, up).await.map(Some)
    }

    /// The queue gave up (full, or the reset moved past `max_wait`): the
    /// copy with `rate-limited`, or the 503, with `Retry-After` the
    /// seconds to the first reset. Always answered: `true`.
    async fn give_up(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
    ) -> Result<bool> {
        let retry = up.cooldown_retry_after();
        let (r, phase) = (Reason::RateLimited, degrade::Phase::Request);
        self.degrade(session, ctx, up, r, Some(429), retry.as_ref(), phase)
            .await?;
        let outcome = match ctx.outcome {
            Outcome::Stale(_) => QueueOutcome::Copy,
            _ => QueueOutcome::Refused,
        };
        up.tokens.pool.series.waited(outcome);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_within_the_wait_is_waited_for_one_past_it_is_not() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let s = Duration::from_secs;
        assert_eq!(wait_for(Some(now + s(2)), now, s(3)), Some(s(2)));
        assert_eq!(wait_for(Some(now + s(3)), now, s(3)), Some(s(3)));
        assert_eq!(wait_for(Some(now + s(4)), now, s(3)), None);
        assert_eq!(wait_for(None, now, s(3)), None);
        // A reset just passed: choose again at once (1 ms, never 0).
        let ms = Duration::from_millis(1);
        assert_eq!(wait_for(Some(now - s(1)), now, s(3)), Some(ms));
        // No time left: only a reset already passed is waited for.
        assert_eq!(wait_for(Some(now + s(1)), now, Duration::ZERO), None);
    }

    #[test]
    fn the_queue_never_holds_more_than_its_bound_and_gives_places_back() {
        let g = prometheus::IntGauge::new("queue_test", "-").unwrap();
        let a = Place::take(&g, 2).expect("room");
        let b = Place::take(&g, 2).expect("room");
        assert!(Place::take(&g, 2).is_none(), "full");
        assert_eq!(g.get(), 2);
        drop(a);
        let c = Place::take(&g, 2).expect("a place was given back");
        drop((b, c));
        assert_eq!(g.get(), 0);
    }
}
