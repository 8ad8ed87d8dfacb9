//! How a request that failed with an error ends, besides the degraded
//! answer: the client's own doing (408/413/400, never charged to the
//! upstream), a stream that ended after its header (never charged), a
//! request cut at the drain deadline (503). An upstream failure is
//! recorded by `record` and answered by `degrade`.

use super::*;

/// Whether a failed request is the client's doing: it went away, its body
/// stalled or passed the limit, or its framing was bad. An upstream
/// timeout while the client had not finished sending its body is the
/// client's stall, not the upstream's (so a slow client cannot open the
/// health breaker for everyone).
pub(super) fn client_fault(session: &mut Session, e: &Error) -> Option<ClientReason> {
    match (e.esource(), e.etype()) {
        (ErrorSource::Downstream, ErrorType::HTTPStatus(413)) => Some(ClientReason::BodyTooLarge),
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => Some(ClientReason::BodyTimeout),
        (
            ErrorSource::Downstream,
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError,
        ) => Some(ClientReason::ClientClosed),
        (ErrorSource::Downstream, _) => Some(ClientReason::InvalidRequest),
        (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout)
            if !session.as_downstream_mut().is_body_done() =>
        {
            Some(ClientReason::BodyTimeout)
        }
        _ => None,
    }
}

/// A connect failed (refused, timed out, TLS): its address is held (see
/// [`crate::generation::addresses`]) and, while an address this request
/// has not tried remains, the request moves there: the failure is not the
/// request's, nor the health breaker's. After the last address the error
/// ends the request as any failure does.
pub(super) fn connect_failed(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    let Some(gen) = ctx.gen.clone() else {
        return e;
    };
    let up = &gen.upstreams[ctx.upstream];
    let addresses = up.addresses.load();
    if addresses.all().len() < 2 {
        return e;
    }
    let i = ctx.address;
    if addresses.connect_failed(i) {
        log::warn!(
            "upstream {}: connecting to {} failed ({}); skipping that address for {}s",
            up.config.name,
            addresses.all()[i],
            e.etype().as_str(),
            crate::generation::addresses::HOLD.as_secs()
        );
    }
    if i < 64 {
        ctx.addresses_tried |= 1 << i;
    }
    if addresses.untried(ctx.addresses_tried) {
        up.status.metrics.address_failovers.inc();
        e.set_retry(true);
    }
    e
}

impl Proxy {
    /// Ends a request that failed for the client's doing: 408, 413 or 400
    /// when nothing was sent yet (a client that went away gets nothing),
    /// always closing the connection. Nothing is charged to the upstream.
    pub(super) async fn client_failed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reason: ClientReason,
    ) -> FailToProxy {
        crate::metrics::client_rejected(reason);
        ctx.outcome = Outcome::Client(reason);
        session.set_keepalive(None);
        let (status, message) = match reason {
            ClientReason::BodyTooLarge => {
                (413, "the request body is larger than this proxy accepts")
            }
            ClientReason::BodyTimeout => (408, "the request body did not arrive in time"),
            ClientReason::InvalidRequest => (400, "the request could not be read"),
            _ => (0, ""),
        };
        if status > 0 && session.response_written().is_none() {
            if let Ok(mut answer) =
                respond::json_error(status, message, None, reason.as_str(), None)
            {
                let _ = answer
                    .header
                    .insert_header(http::header::CONNECTION, "close");
                if let Err(e) = respond::write(session, answer).await {
                    log::debug!("writing the {status} answer failed: {e}");
                }
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// A stream whose header had arrived ended with an error: it paused
    /// past `timeouts.stream_idle` (or `timeouts.read` when nothing
    /// announced it), or either side cut it. That is how streams end, not
    /// an upstream failure: nothing is charged to the health breaker, the
    /// token or the degradation state.
    /// A WebSocket tunnel that idled out is closed cleanly: the client
    /// gets a close frame (1001, going away) before the connection ends.
    pub(super) async fn stream_ended(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: &Error,
    ) -> FailToProxy {
        log::debug!("stream ended after its header: {e}");
        // Counted as the fresh answer it was (`logging`).
        ctx.outcome = Outcome::Fresh;
        session.set_keepalive(None);
        let idled = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        if ctx.upgrade && ctx.upstream_status == 101 && idled {
            // RFC 6455 §5.5.1: FIN + close opcode, unmasked (server to
            // client), a 2-byte payload: status 1001.
            const CLOSE_GOING_AWAY: &[u8] = &[0x88, 0x02, 0x03, 0xE9];
            if let Err(e) = session
                .write_response_body(Some(Bytes::from_static(CLOSE_GOING_AWAY)), true)
                .await
            {
                log::debug!("writing the WebSocket close frame failed: {e}");
            }
        }
        FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }

    /// A request still in flight at the drain deadline: 503, `Retry-After:
    /// 1`, `Connection: close` (the client retries elsewhere), nothing
    /// charged to the upstream.
    pub(super) async fn cut_at_shutdown(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        crate::metrics::client_rejected(ClientReason::ShuttingDown);
        ctx.outcome = Outcome::Client(ClientReason::ShuttingDown);
        session.set_keepalive(None);
        if session.response_written().is_none() {
            if let Ok(mut answer) = respond::json_error(
                503,
                "graceway is shutting down: retry the request",
                None,
                ClientReason::ShuttingDown.as_str(),
                None,
            ) {
                let _ = answer
                    .header
                    .insert_header(http::header::CONNECTION, "close");
                let _ = answer.header.insert_header(http::header::RETRY_AFTER, "1");
                if let Err(e) = respond::write(session, answer).await {
                    log::debug!("writing the shutdown answer failed: {e}");
                }
            }
        }
        FailToProxy {
            error_code: 503,
            can_reuse_downstream: false,
        }
    }
}
