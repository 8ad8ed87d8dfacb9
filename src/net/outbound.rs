//! Every request graceway makes on its own behalf goes through here, on
//! Pingora's connector: probes and preflight, OAuth2 token fetches, the
//! alert webhook, and the CLI's and demo's calls to a running graceway. So
//! each gets the data plane's peer handling (resolved address, TLS with
//! verification, a CA file, SNI, timeouts) and a bounded body, and there is
//! one HTTP client in the crate, not two.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

/// An answer to an outbound request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Read by the demo (and kept whole for any caller that needs one).
    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Read by the demo's walkthrough.
#[cfg(feature = "demo")]
impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a peer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("`{host}` resolved to no address")]
    NoAddress { host: String },
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl PeerError {
    /// The config field the error concerns (`url`, `tls.ca_file`).
    pub fn field(&self) -> &'static str {
        match self {
            PeerError::Resolve { .. } | PeerError::NoAddress { .. } => "url",
            PeerError::Ca(_) => "tls.ca_file",
        }
    }
}

/// Why a CA bundle could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: bad PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: bad certificate: {source}", path.display())]
    Certificate {
        path: PathBuf,
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("{}: no PEM certificate found", path.display())]
    Empty { path: PathBuf },
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

/// A peer for any URL graceway talks to (upstreams, OAuth2 token
/// endpoints). The error names the config field it concerns.
pub async fn peer_for(
    url: &crate::config::UpstreamUrl,
    verify: bool,
    ca_file: Option<&std::path::Path>,
    connect: Duration,
    read: Duration,
) -> Result<HttpPeer, PeerError> {
    let addr = resolve(url).await?[0];
    peer_at(addr, url, verify, ca_file, connect, read)
}

/// Every address of the URL's host, in the resolver's order: at least one.
pub async fn resolve(url: &crate::config::UpstreamUrl) -> Result<Vec<SocketAddr>, PeerError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|source| PeerError::Resolve {
            host: url.host.clone(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(PeerError::NoAddress {
            host: url.host.clone(),
        });
    }
    Ok(addrs)
}

/// [`peer_for`] at an address already looked up.
pub fn peer_at(
    addr: SocketAddr,
    url: &crate::config::UpstreamUrl,
    verify: bool,
    ca_file: Option<&std::path::Path>,
    connect: Duration,
    read: Duration,
) -> Result<HttpPeer, PeerError> {
    let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(connect);
    o.total_connection_timeout = Some(connect * 2);
    o.read_timeout = Some(read);
    o.write_timeout = Some(read);
    o.idle_timeout = Some(Duration::from_secs(55));
    o.verify_cert = verify;
    o.verify_hostname = verify;
    if let Some(ca) = ca_file {
        o.ca = Some(Arc::from(load_ca(ca)?.into_boxed_slice()));
    }
    Ok(peer)
}

/// Reads a PEM CA bundle; every certificate is parsed before Pingora sees it
/// (its own parser panics on bad DER).
fn load_ca(path: &Path) -> Result<Vec<pingora::utils::tls::WrappedX509>, CaError> {
    let path_buf = || path.to_path_buf();
    let text = std::fs::read(path).map_err(|source| CaError::Read {
        path: path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for item in rustls_pemfile::certs(&mut text.as_slice()) {
        let der = item.map_err(|source| CaError::Pem {
            path: path_buf(),
            source,
        })?;
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|source| {
            CaError::Certificate {
                path: path_buf(),
                source,
            }
        })?;
        out.push(pingora::utils::tls::WrappedX509::new(
            der.as_ref().to_vec(),
            pingora::utils::tls::parse_x509,
        ));
    }
    if out.is_empty() {
        return Err(CaError::Empty { path: path_buf() });
    }
    Ok(out)
}

/// TLS for a URL graceway calls on its own (ignored for `http://`).
#[derive(Debug, Clone, Copy)]
pub struct Tls<'a> {
    pub verify: bool,
    pub ca_file: Option<&'a Path>,
}

impl Default for Tls<'_> {
    fn default() -> Self {
        Tls {
            verify: true,
            ca_file: None,
        }
    }
}

/// The most of an answer's body these requests read.
const MAX_BODY: usize = 4 << 20;

/// One request to an `http://` or `https://` URL, with a body read to the
/// end (at most 4 MiB) within `timeout` overall.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
    tls: Tls<'_>,
) -> Result<Answer, Failure> {
    let bad = |m: String| Failure::Unreachable(m);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(format!("`{url}` is not a URL ({e})")))?;
    let base = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or(""),
        uri.authority().map_or("", |a| a.as_str())
    );
    let target = crate::config::parse_url(&base).map_err(bad)?;
    let peer = peer_for(&target, tls.verify, tls.ca_file, timeout, timeout)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(method, path.as_bytes(), Some(headers.len() + 3))
        .map_err(|e| bad(e.to_string()))?;
    let mut set = |k: &str, v: &str| {
        req.append_header(k.to_string(), v)
            .map(|_| ())
            .map_err(|e| bad(e.to_string()))
    };
    set("Host", &target.host_header)?;
    set(
        "User-Agent",
        concat!("graceway/", env!("CARGO_PKG_VERSION")),
    )?;
    for (k, v) in headers {
        set(k, v)?;
    }
    let has_body = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if has_body {
        set("Content-Length", &body.len().to_string())?;
    }
    let body = has_body.then(|| Bytes::copy_from_slice(body));
    send(&peer, req, body, timeout, MAX_BODY).await
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
