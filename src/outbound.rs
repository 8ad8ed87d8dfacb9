//! Requests graceway makes on its own behalf (probes, preflight, OAuth2
//! token fetches): through Pingora's connector, so they use exactly the
//! peer settings of the data plane (resolved address, TLS verification,
//! CA file, SNI, timeouts).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

/// An answer to an outbound request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Why an outbound request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Timed out (connect or read).
    Timeout,
    /// Refused, reset, TLS failure: no usable connection.
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Unreachable(e) => write!(f, "unreachable: {e}"),
        }
    }
}

fn connector() -> &'static Connector {
    static C: OnceLock<Connector> = OnceLock::new();
    C.get_or_init(|| Connector::new(None))
}

/// Sends one request and reads the whole answer (at most `max_body`
/// bytes), within `deadline` overall.
pub async fn send(
    peer: &HttpPeer,
    req: RequestHeader,
    body: Option<Bytes>,
    deadline: Duration,
    max_body: usize,
) -> Result<Answer, Failure> {
    match tokio::time::timeout(deadline, send_inner(peer, req, body, max_body)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(r) => r,
    }
}

async fn send_inner(
    peer: &HttpPeer,
    req: RequestHeader,
    body: Option<Bytes>,
    max_body: usize,
) -> Result<Answer, Failure> {
    let map = |e: Box<pingora::Error>| match e.etype() {
        pingora::ErrorType::ConnectTimedout
        | pingora::ErrorType::ReadTimedout
        | pingora::ErrorType::WriteTimedout => Failure::Timeout,
        _ => Failure::Unreachable(e.to_string()),
    };
    let (mut session, _reused) = connector().get_http_session(peer).await.map_err(map)?;
    session.set_read_timeout(peer.options.read_timeout);
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(map)?;
    if let Some(b) = body {
        session.write_request_body(b, true).await.map_err(map)?;
    }
    session.finish_request_body().await.map_err(map)?;
    session.read_response_header().await.map_err(map)?;
    let (status, headers) = {
        let h = session
            .response_header()
            .ok_or_else(|| Failure::Unreachable("no response header".into()))?;
        (h.status.as_u16(), h.headers.clone())
    };
    let mut buf = Vec::new();
    while let Some(chunk) = session.read_response_body().await.map_err(map)? {
        if buf.len() + chunk.len() > max_body {
            return Err(Failure::Unreachable(format!(
                "answer body larger than {max_body} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    connector()
        .release_http_session(session, peer, Some(Duration::from_secs(30)))
        .await;
    Ok(Answer {
        status,
        headers,
        body: Bytes::from(buf),
    })
}
