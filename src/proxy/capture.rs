//! Keeping a fresh answer as the last-good copy: the capture of a
//! storable 200 (admission first), its body collected by reference, and
//! the copy handed to the cache (memory, persist, fleet). A body holding a
//! token value the upstream echoed is never kept; `stale.scrub_bodies`
//! masks it on the way out.

use super::*;

/// A path's copy is refreshed at most this often.
pub(super) const STORE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// A body being captured for the last-good cache.
pub(super) struct Capture {
    /// Where the copy goes in every tier.
    pub(super) key: cache::Key,
    /// Path and query, for the background trial (`last_good_path`).
    pub(super) path: String,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) cc: CacheControl,
    /// How long the copy is fresh by the origin's word (see
    /// `stored::fresh_for`).
    pub(super) fresh_for: std::time::Duration,
    /// The upstream's chunks, kept by reference (no copy per chunk).
    pub(super) parts: Vec<Bytes>,
    pub(super) size: usize,
}

impl Proxy {
    /// A 200 to a storable GET: starts capturing its body for the cache.
    /// Under load a hot path would be re-stored on every answer; a copy
    /// younger than STORE_REFRESH is kept instead (a lookup costs ~0.15 us,
    /// a capture and insert several).
    pub(super) fn start_capture(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        up: &Upstream,
        resp: &ResponseHeader,
    ) {
        // Requests wait on this answer: keep it whatever the store
        // refresh or admission would say. With fresh hits on, a request
        // reached the vendor because its copy was stale (or absent): the
        // new answer replaces it, however young.
        let waited_for = Self::must_keep(ctx);
        let renew = waited_for || up.config.cache.fresh == crate::config::FreshPolicy::Honor;
        let primary = self.primary(ctx, up, req);
        if !renew && self.cache().kept_within(&primary, STORE_REFRESH) {
            return;
        }
        let held = self.cache().lookup_primary(&up.config.name, &primary, req);
        if held.is_none() && !waited_for && !self.cache().admit(&primary) {
            return;
        }
        let recently_stored =
            !renew && held.is_some_and(|c| c.recorded.age(SystemTime::now()) < STORE_REFRESH);
        let meta = (!recently_stored)
            .then(|| stored::storable_meta(resp, self.cache().max_object))
            .flatten();
        let Some((cc, headers)) = meta else {
            return;
        };
        let key = self
            .cache()
            .capture_key(&up.config.name, &primary, &headers, req);
        let capture = Capture {
            key,
            path: req
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers,
            cc,
            fresh_for: stored::fresh_for(resp, SystemTime::now()),
            parts: Vec::new(),
            size: 0,
        };
        let empty = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        if empty {
            // Pingora calls no body filter for an empty body: the copy is
            // complete now.
            let kept = self.keep(up, capture);
            ctx.stored_empty = kept.is_some();
            self.land(ctx, kept.map_or(Landing::Alone, Landing::Stored));
        } else {
            ctx.capture = Some(Box::new(capture));
        }
    }

    /// Masks token values in a body chunk (`stale.scrub_bodies`); one
    /// found means the answer is not kept.
    pub(super) fn scrub_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) {
        let (Some(gen), Some(sc)) = (ctx.gen.clone(), ctx.scrub.as_mut()) else {
            return;
        };
        let up = &gen.upstreams[ctx.upstream];
        let (mut out, mut found) = match body.as_ref() {
            Some(b) => sc.push(&up.reflections, b),
            None => (Vec::new(), None),
        };
        if end_of_stream {
            let (rest, f) = sc.finish(&up.reflections);
            out.extend_from_slice(&rest);
            found = found.or(f);
        }
        // An empty chunk could read as the end of a chunked body: none.
        *body = (!out.is_empty()).then(|| Bytes::from(out));
        if let Some(f) = found {
            ctx.capture = None;
            note_reflection(up, f.token, "body");
        }
    }

    /// Turns a finished capture into a stored copy, unless its body holds
    /// a token value (the upstream echoed it): that copy is never kept,
    /// persisted or sent to the fleet tier. The copy kept, if one was.
    pub(super) fn keep(&self, up: &Upstream, cap: Capture) -> Option<Arc<cache::CachedResponse>> {
        let mut body = BytesMut::with_capacity(cap.size);
        for p in &cap.parts {
            body.extend_from_slice(p);
        }
        if let Some(f) = up.reflections.find(&body) {
            note_reflection(up, f.token, "body");
            return None;
        }
        let recorded = Recorded::of_answer(
            cap.headers,
            body.freeze(),
            &cap.cc,
            cap.fresh_for,
            SystemTime::now(),
        );
        let copy = self.cache().keep(
            cap.key,
            recorded,
            up.status.clone(),
            up.config.stale.max_stale,
        );
        up.status.set_last_good_path(cap.path);
        Some(copy)
    }
}
