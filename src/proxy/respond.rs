//! Answers graceway writes itself, from the request phase.

use std::time::SystemTime;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::generation::Upstream;
use crate::tokens::TokenState;

/// Writes a JSON error `{"error","upstream","reason"}` with `status`.
/// A 503 carries `Retry-After`.
pub async fn error(
    session: &mut Session,
    status: u16,
    message: &str,
    upstream: Option<&str>,
    reason: &str,
) -> Result<()> {
    let body = crate::json::error_body(message, upstream, reason);
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if status == 503 {
        resp.insert_header(http::header::RETRY_AFTER, "5")?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// Why an upstream has no usable token, for the error body and logs.
pub fn no_token_reason(up: &Upstream) -> &'static str {
    let now = SystemTime::now();
    let states: Vec<TokenState> = up.tokens.tokens.iter().map(|t| t.state(now)).collect();
    if states.contains(&TokenState::Rejected) {
        "token-rejected"
    } else if states.contains(&TokenState::Expired) {
        "token-expired"
    } else {
        "token-unavailable"
    }
}
