//! gRPC answers (`application/grpc`): what counts as a refusal of the
//! token, and what graceway leaves alone.
//!
//! A gRPC server refuses a call with a status in `grpc-status`: in the
//! header of a trailers-only answer (HTTP 200, no body: what a server's
//! auth check sends before any message), or in the trailers after the
//! body. `16 UNAUTHENTICATED` counts as a 401 and `7 PERMISSION_DENIED`
//! as a 403, judged by the same path as theirs (`refusal.rs`): in the
//! header the call is retried with the next token like any refusal; in
//! the trailers the answer is already on its way, so the refusal is
//! recorded against the token (the next call takes the next one) and the
//! client gets the vendor's status.
//!
//! gRPC answers are never kept nor replaced: a gRPC client cannot read a
//! copy of another call or graceway's JSON 503, so an unretried refusal
//! passes through as the vendor sent it.

use super::*;
use crate::tokens::evidence::Judgement;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether an answer is gRPC (`application/grpc`, `application/grpc+proto` ...).
pub(super) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The HTTP status a gRPC refusal in `headers` (a trailers-only header or
/// the trailers) counts as: 401 for `16 UNAUTHENTICATED`, 403 for
/// `7 PERMISSION_DENIED`; `None` for any other status, or none.
pub(super) fn refusal_status(headers: &http::HeaderMap) -> Option<u16> {
    match headers.get(&GRPC_STATUS)?.as_bytes() {
        b"16" => Some(401),
        b"7" => Some(403),
        _ => None,
    }
}

/// What a gRPC refusal (`status` from [`refusal_status`]) says about the
/// token. `UNAUTHENTICATED` is gRPC's word for credentials that are not
/// valid: the token is rejected, as with a bearer `invalid_token`.
/// `PERMISSION_DENIED` is judged like a bare 403: suspect, confirmed as
/// any suspicion is. The detail names the code only: `grpc-message` is
/// free text and is not repeated.
pub(super) fn judge(status: u16, headers: &http::HeaderMap) -> Judgement {
    if status == 401 {
        return Judgement {
            verdict: Verdict::Rejected,
            detail: Some("grpc-status 16 UNAUTHENTICATED".into()),
        };
    }
    Judgement {
        verdict: evidence::judge(status, headers).verdict,
        detail: Some("grpc-status 7 PERMISSION_DENIED".into()),
    }
}

/// Whether a refusal may ask for a retry: always for HTTP (a request that
/// cannot be replayed ends in `fail_to_proxy`, answered degraded); for
/// gRPC only when the request can be replayed (the same rule as
/// `error_while_proxy`), else the vendor's status passes through.
pub(super) fn may_retry(session: &Session, ctx: &RequestCtx) -> bool {
    !ctx.grpc
        || session.req_header().method.is_idempotent()
        || !session.as_ref().retry_buffer_truncated()
}

impl Proxy {
    /// The trailers of an answer: a gRPC refusal there is recorded against
    /// the token the call carried (too late to retry it: the body has
    /// gone to the client).
    pub(super) fn grpc_trailers(
        &self,
        session: &Session,
        trailers: &http::HeaderMap,
        ctx: &mut RequestCtx,
    ) {
        let Some(status) = refusal_status(trailers).filter(|_| ctx.grpc) else {
            return;
        };
        let Some(gen) = ctx.gen.clone() else {
            return;
        };
        // The answer was a refusal after all: not a success of the upstream's.
        ctx.upstream_status = status;
        let up = &gen.upstreams[ctx.upstream];
        if let Err(e) = self.weigh_refusal(session, ctx, up, status, trailers, false) {
            log::debug!("a refusal in the trailers asked for a retry: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn unauthenticated_and_permission_denied_are_refusals_nothing_else() {
        assert_eq!(
            refusal_status(&headers(&[("grpc-status", "16")])),
            Some(401)
        );
        assert_eq!(refusal_status(&headers(&[("grpc-status", "7")])), Some(403));
        for other in ["0", "8", "14", "2", "160", ""] {
            let h: http::HeaderMap = [(GRPC_STATUS.clone(), HeaderValue::from_str(other).unwrap())]
                .into_iter()
                .collect();
            assert_eq!(refusal_status(&h), None, "grpc-status {other:?}");
        }
        assert_eq!(refusal_status(&headers(&[])), None);
    }

    #[test]
    fn unauthenticated_rejects_permission_denied_is_a_bare_403() {
        let h = headers(&[("grpc-status", "16"), ("grpc-message", "key revoked")]);
        let j = judge(401, &h);
        assert_eq!(j.verdict, Verdict::Rejected);
        assert_eq!(j.detail.as_deref(), Some("grpc-status 16 UNAUTHENTICATED"));
        let j = judge(403, &headers(&[("grpc-status", "7")]));
        assert_eq!(j.verdict, Verdict::Suspect);
        assert_eq!(j.detail.as_deref(), Some("grpc-status 7 PERMISSION_DENIED"));
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/json")])));
        assert!(!is_grpc(&headers(&[])));
    }
}
