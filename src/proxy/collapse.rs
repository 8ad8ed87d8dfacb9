//! Spending the vendor's calls with care, before any token is chosen:
//! fresh hits and `stale-while-revalidate` (`upstreams[].cache.fresh:
//! honor`), and collapsed forwarding (`cache.coalesce`: a request whose key
//! is in flight waits for that fetch, see [`crate::cache::flight`]).
//!
//! A request that leads a fetch holds its [`Lead`] in the context until
//! the fetch lands ([`Proxy::land`]): at the answer's header when it may
//! not be shared, at the end of its body once kept, or when it was
//! answered degraded. A lead dropped unlanded (its client went away) is
//! abandoned, and a waiter leads instead.

use super::*;
use crate::cache::fleet::fetch::Taken;
use crate::cache::flight::{Join, Landing, Lead};
use crate::cache::stored::Freshness;
use crate::cache::CachedResponse;
use crate::config::FreshPolicy;
use crate::outcome::Hit;

/// A waiter that heard `Abandoned` joins again: at most this often (each
/// time a new lead's client left too), then it goes itself.
const REJOINS: usize = 3;

impl Proxy {
    /// `upstreams[].cache.fresh: honor`: a fresh copy answers at once (a
    /// hit), one within `stale-while-revalidate` too, with one background
    /// refresh per key; a stale one is remembered, for the request to send
    /// its validators. True when answered.
    pub(super) async fn answer_fresh(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Arc<Upstream>,
    ) -> Result<bool> {
        if up.config.cache.fresh != FreshPolicy::Honor || !ctx.storable_request || ctx.stream {
            return Ok(false);
        }
        let req = session.req_header();
        let primary = self.primary(ctx, up, req);
        let Some(copy) = self.cache().lookup_primary(&up.config.name, &primary, req) else {
            return Ok(false);
        };
        let now = SystemTime::now();
        let kind = match copy.freshness(now) {
            Freshness::Fresh => Hit::Fresh,
            Freshness::Revalidate => {
                let key = self.cache().flight_key(&primary, req);
                if let Some(lead) = self.cache().flights.try_lead(key) {
                    self.refresh_in_background(ctx, up, req, copy.clone(), lead);
                }
                Hit::Revalidating
            }
            Freshness::Stale => {
                ctx.revalidate = Some(copy);
                return Ok(false);
            }
        };
        self.answer_hit(session, ctx, up, &copy, kind, false)
            .await?;
        Ok(true)
    }

    /// Collapsed forwarding: leads the fetch of this request's key, or
    /// waits for the one in flight and is answered as it lands. True when
    /// answered.
    pub(super) async fn join_flight(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Arc<Upstream>,
    ) -> Result<bool> {
        let Some(gen) = ctx.gen.clone() else {
            return Ok(false);
        };
        let wait = gen.loaded.config.cache.coalesce.wait;
        if wait.is_zero() || !ctx.storable_request || ctx.stream {
            return Ok(false);
        }
        let req = session.req_header();
        let primary = self.primary(ctx, up, req);
        let key = self.cache().flight_key(&primary, req);
        let m = &up.status.metrics;
        for _ in 0..REJOINS {
            let w = match self.cache().flights.join(key) {
                Join::Lead(lead) => {
                    let lead = if gen.loaded.config.cache.coalesce.fleet {
                        match self.wait_for_fleet(session, ctx, up, lead, wait).await? {
                            Some(lead) => lead,
                            None => return Ok(true),
                        }
                    } else {
                        lead
                    };
                    ctx.lead = Some(Box::new(lead));
                    return Ok(false);
                }
                Join::Wait(w) => w,
            };
            let landing = {
                let _waiting = Waiting::new(&m.coalesce_waiting);
                w.landing(wait).await
            };
            match landing {
                Some(Landing::Stored(copy)) => {
                    // Its own request must pick that very copy (a `Vary`'d
                    // header of the lead's may differ from this one's).
                    let mine = self.cache().lookup(&up.config.name, session.req_header());
                    if !mine.is_some_and(|c| Arc::ptr_eq(&c, &copy)) {
                        m.coalesce_wait("alone");
                        return Ok(false);
                    }
                    m.coalesce_wait("answered");
                    self.answer_hit(session, ctx, up, &copy, Hit::Coalesced, false)
                        .await?;
                    return Ok(true);
                }
                Some(Landing::Degraded(reason)) => {
                    m.coalesce_wait("degraded");
                    self.degrade(session, ctx, up, reason, None, None, Phase::Request)
                        .await?;
                    return Ok(true);
                }
                Some(Landing::Abandoned) => {
                    m.coalesce_wait("abandoned");
                    continue;
                }
                Some(Landing::Alone | Landing::Pending) => {
                    m.coalesce_wait("alone");
                    return Ok(false);
                }
                None => {
                    m.coalesce_wait("timed-out");
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    /// `cache.coalesce.fleet`: this replica leads the key's fetch; it takes
    /// the fleet's fetch lock, or waits for the replica holding it and is
    /// answered from the copy that one stored, as this replica's own
    /// waiters then are (see [`crate::cache::fleet::fetch`]). The lead
    /// back when this request fetches; `None` when answered.
    async fn wait_for_fleet(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Arc<Upstream>,
        mut lead: Lead,
        wait: std::time::Duration,
    ) -> Result<Option<Lead>> {
        let Some(fleet) = self.cache().fleet().cloned() else {
            return Ok(Some(lead));
        };
        let req = session.req_header();
        let theirs = match fleet.take_fetch(&up.config.name, req, wait).await {
            None => return Ok(Some(lead)),
            Some(Taken::Mine(hold)) => {
                lead.hold_fleet(hold, up.config.stale.max_stale);
                return Ok(Some(lead));
            }
            Some(Taken::Theirs(t)) => t,
        };
        let m = &up.status.metrics;
        let since = {
            let _waiting = Waiting::new(&m.coalesce_waiting);
            fleet.await_fetch(theirs, wait).await
        };
        let req = session.req_header();
        let filled = self
            .cache()
            .fill_stored_since(&up.config.name, req, up.status.clone(), Some(since))
            .await;
        let copy = filled
            .then(|| self.cache().lookup(&up.config.name, req))
            .flatten();
        let Some(copy) = copy else {
            m.coalesce_wait("alone");
            return Ok(Some(lead));
        };
        m.coalesce_wait("fleet");
        lead.land(Landing::Stored(copy.clone()));
        self.answer_hit(session, ctx, up, &copy, Hit::Coalesced, true)
            .await?;
        Ok(None)
    }

    /// Writes `copy` as a hit of `kind` (a 304 when the client's own
    /// validators match it); `from_fleet`: another replica fetched it.
    async fn answer_hit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
        copy: &CachedResponse,
        kind: Hit,
        from_fleet: bool,
    ) -> Result<()> {
        let mut answer = respond::hit(copy, session.req_header(), kind)?;
        if from_fleet {
            answer = answer.fleet_member();
        }
        record(ctx, up, Event::Hit(kind));
        if self.app.drain.draining() {
            session.set_keepalive(None);
        }
        respond::write(session, answer).await
    }

    /// Says what this request's fetch came to, when it leads one.
    pub(super) fn land(&self, ctx: &mut RequestCtx, landing: Landing) {
        if let Some(lead) = ctx.lead.take() {
            lead.land(landing);
        }
    }

    /// At the request's end, a lead still in flight: when its client left
    /// (the fetch ended with it) a waiter leads instead; anything else was
    /// not shared.
    pub(super) fn end_flight(&self, ctx: &mut RequestCtx) {
        if let Outcome::Client(_) = ctx.outcome {
            drop(ctx.lead.take());
        } else {
            self.land(ctx, Landing::Alone);
        }
    }

    /// Whether this request's capture must keep its answer even where the
    /// store refresh or admission would skip it: requests wait on it.
    pub(super) fn must_keep(ctx: &RequestCtx) -> bool {
        ctx.lead.as_ref().is_some_and(|l| l.waiters() > 0)
    }

    /// While a breaker is open, with `fresh: honor`: the copy this request
    /// is answered from is refreshed in the background, once per breaker
    /// window per key, so copies are renewed as soon as the vendor answers.
    pub(super) fn refresh_while_open(
        &self,
        ctx: &mut RequestCtx,
        up: &Arc<Upstream>,
        req: &RequestHeader,
    ) {
        if up.config.cache.fresh != FreshPolicy::Honor || !ctx.storable_request || ctx.stream {
            return;
        }
        let primary = self.primary(ctx, up, req);
        let Some(copy) = self.cache().lookup_primary(&up.config.name, &primary, req) else {
            return;
        };
        let window = if up.status.health.is_open() {
            up.status.health.window()
        } else {
            up.auth.window()
        };
        let now = crate::clock::unix_ms();
        let after = copy
            .refresh_after
            .load(std::sync::atomic::Ordering::Relaxed);
        if now < after
            || copy
                .refresh_after
                .compare_exchange(
                    after,
                    now + window.as_millis() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let key = self.cache().flight_key(&primary, req);
        if let Some(lead) = self.cache().flights.try_lead(key) {
            self.refresh_in_background(ctx, up, req, copy, lead);
        }
    }

    /// This request's memory key (its copy without `Vary`): hashed at the
    /// first step that needs it, then read from the context.
    pub(super) fn primary(
        &self,
        ctx: &mut RequestCtx,
        up: &Upstream,
        req: &RequestHeader,
    ) -> crate::cache::MemKey {
        *ctx.primary
            .get_or_insert_with(|| self.cache().primary_key(&up.config.name, req))
    }
}

/// Counts a waiter in `graceway_coalesce_waiting` for as long as it lives
/// (a wait cut short by its request's end included).
struct Waiting<'g>(&'g prometheus::IntGauge);

impl<'g> Waiting<'g> {
    fn new(g: &'g prometheus::IntGauge) -> Waiting<'g> {
        g.inc();
        Waiting(g)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
