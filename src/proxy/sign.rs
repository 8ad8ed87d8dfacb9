//! A SigV4 request's body, read whole before its header is sent: the
//! signature covers its SHA-256 (`credentials.sigv4.payload: signed`).
//!
//! The body is read here, in `request_filter`, into Pingora's replay
//! buffer (the one a failover retry replays from), which then sends it
//! upstream after the signed header. That buffer holds 64 KiB, so a signed
//! body is at most that: a larger one is refused with 413 before anything
//! goes upstream (`payload: unsigned` streams bodies of any size, sent as
//! `UNSIGNED-PAYLOAD`).

use sha2::{Digest, Sha256};

use super::*;

/// Pingora's replay buffer (`BODY_BUF_LIMIT` in pingora-core).
pub(super) const SIGNED_BODY_MAX: u64 = 64 * 1024;

static TOO_LARGE: admission::Refusal = admission::Refusal {
    status: 413,
    message: "the request body is over 64 KiB, the most a signed SigV4 body can be here (the upstream's `credentials.sigv4.payload: unsigned` streams any size)",
    reason: ClientReason::BodyTooLarge,
};

impl Proxy {
    /// Reads and hashes the body of a request to an upstream that signs
    /// its payload; true when the request was refused (413, answered).
    pub(super) async fn hash_signed_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        up: &Upstream,
    ) -> Result<bool> {
        let signs_body = up
            .inject
            .as_ref()
            .and_then(|t| t.signing())
            .is_some_and(|s| s.hashes_body());
        if !signs_body || session.as_mut().is_body_empty() {
            return Ok(false);
        }
        let max_body = ctx
            .gen
            .as_ref()
            .map_or(0, |g| g.loaded.config.server.max_request_body_bytes);
        let limit = SIGNED_BODY_MAX.min(max_body);
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            self.refuse(session, ctx, &TOO_LARGE, None).await?;
            return Ok(true);
        }
        session.as_mut().enable_retry_buffering();
        let mut hash = Sha256::new();
        let mut read = 0u64;
        while let Some(chunk) = session.as_mut().read_request_body().await? {
            read += chunk.len() as u64;
            if read > limit {
                self.refuse(session, ctx, &TOO_LARGE, None).await?;
                return Ok(true);
            }
            hash.update(&chunk);
        }
        ctx.body_sha256 = Some(crate::config::hex(&hash.finalize()).into());
        Ok(false)
    }
}
