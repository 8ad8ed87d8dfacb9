//! A request's state between Pingora's hooks ([`RequestCtx`]): what the
//! proxy's steps read and write as the request goes; one per request,
//! dropped after `logging`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::capture::Capture;
use super::choose;
use crate::cache;
use crate::generation::{Generation, Upstream};
use crate::outcome::Outcome;

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    /// The generation this request started with; kept for retries so a
    /// request never mixes two token sets.
    pub(super) gen: Option<Arc<Generation>>,
    pub(super) upstream: usize,
    /// Index of the token sent on the current attempt.
    pub(super) token: Option<usize>,
    /// Tokens already tried (bit per index).
    pub(super) tried: u64,
    /// How the token was chosen (sticky key, pick, quota wait).
    pub(super) pool: choose::Chosen,
    /// The upstream's status on the last attempt, once known.
    pub(super) upstream_status: u16,
    /// A GET without the client's own credentials (see
    /// `stored::storable_request`).
    pub(super) storable_request: bool,
    /// Boxed: most requests capture nothing, and the context is moved with
    /// the request's future (a smaller context is a smaller copy).
    pub(super) capture: Option<Box<Capture>>,
    /// A `Content-Length: 0` answer was kept at once (no body to capture).
    pub(super) stored_empty: bool,
    /// Drop the upstream's body chunks (its answer was replaced).
    pub(super) drop_upstream_body: bool,
    /// Emit this body at end of stream (the replaced answer's body).
    pub(super) replace_body: Option<Bytes>,
    /// Masks token values in the body on its way out
    /// (`stale.scrub_bodies`); boxed, as it is rarely on.
    pub(super) scrub: Option<Box<crate::tokens::reflect::BodyScrubber>>,
    pub(super) outcome: Outcome,
    pub(super) sent_at: Option<Instant>,
    /// This request is the auth breaker's half-open trial (it carries a
    /// rejected token to see whether the upstream accepts it again).
    pub(super) auth_trial: bool,
    /// A 401/403 was answered by retrying with the next token.
    pub(super) failover_pending: bool,
    /// When the request arrived (for the access log).
    pub(super) started_at: Option<Instant>,
    /// Upstream time to the response header.
    pub(super) upstream_time: Option<std::time::Duration>,
    /// The client asked for an upgrade the upstream allows (`upgrade`): a
    /// 101 becomes a tunnel with `timeouts.stream_idle`.
    pub(super) upgrade: bool,
    /// A stream: announced by the request (`Accept: text/event-stream`, an
    /// allowed upgrade, an upstream with `stream: true`; its reads wait
    /// `timeouts.stream_idle`) or found in the answer
    /// (`text/event-stream`). Never stored; once its header has arrived,
    /// its end, pause or cut is never charged to the upstream.
    pub(super) stream: bool,
    /// Request body bytes received so far (for `max_request_body_bytes`).
    pub(super) body_bytes: u64,
    /// The hex SHA-256 of the body, read whole before a SigV4 signature
    /// over it (see `sign`); `None`: no body, or not signed.
    pub(super) body_sha256: Option<Box<str>>,
    /// This request leads the fetch of its key: requests for the same key
    /// wait for it (`collapse`). Boxed: few requests lead one.
    pub(super) lead: Option<Box<crate::cache::flight::Lead>>,
    /// The upstream address (index) of the attempt under way, and those
    /// that refused a connect (a bit each): see `failure::connect_failed`.
    pub(super) address: usize,
    pub(super) addresses_tried: u64,
    /// A stale copy of this request's answer whose validators it carries
    /// (`upstreams[].cache.fresh: honor`; see `refresh`).
    pub(super) revalidate: Option<Arc<cache::CachedResponse>>,
    /// The memory key of this request's copy without `Vary`, hashed once
    /// (see `Proxy::primary`).
    pub(super) primary: Option<cache::MemKey>,
    /// The validators were graceway's (the client sent none): the
    /// vendor's 304 renews the copy and the copy answers.
    pub(super) revalidating: bool,
    /// Counts this request as in flight until the context is dropped (a
    /// drain waits for none to be left, see `lifecycle`).
    pub(super) _in_flight: Option<crate::app::lifecycle::InFlight>,
    /// On an h2c connection: this request is one of its streams in flight
    /// until the context is dropped (see `net::listener`).
    pub(super) _h2_stream: Option<crate::net::listener::H2Stream>,
    /// The upstream's answer is gRPC (`application/grpc`): never kept nor
    /// replaced, its refusals read from `grpc-status` (see `grpc`).
    pub(super) grpc: bool,
}

impl RequestCtx {
    pub(super) fn upstream(&self) -> Option<&Upstream> {
        self.gen
            .as_ref()
            .map(|g| g.upstreams[self.upstream].as_ref())
    }
}
