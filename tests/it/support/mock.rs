//! A programmable HTTP/1.1 upstream on an ephemeral loopback port.
//!
//! Written on raw sockets so that tests control exactly what goes on the
//! wire: a `Content-Length: 0` answer, a reset before the header, a body cut
//! short, a hang. Every request is recorded; connections are counted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request line and header fields exactly as received.
    pub head: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// A normal answer with `Content-Length`.
    Normal,
    /// A chunked answer.
    Chunked,
    /// Close the connection without answering.
    Close,
    /// Never answer (until the test ends).
    Hang,
    /// Send the header with the full `Content-Length`, then half the body,
    /// then close.
    Truncate,
}

#[derive(Debug, Clone)]
pub struct MockReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    pub wire: Wire,
    /// Answer only once this is set (checked every 10 ms, at most 30 s):
    /// a test holds an answer while it watches what graceway does.
    pub hold: Option<Arc<AtomicBool>>,
}

impl MockReply {
    pub fn ok(body: &str) -> MockReply {
        MockReply::status(200, body)
    }

    pub fn status(status: u16, body: &str) -> MockReply {
        MockReply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            wire: Wire::Normal,
            hold: None,
        }
    }

    /// How a vendor turns away a revoked token (RFC 6750):
    /// `status` with `WWW-Authenticate: Bearer error="invalid_token"`.
    pub fn revoked(status: u16, body: &str) -> MockReply {
        MockReply::status(status, body).header(
            "WWW-Authenticate",
            r#"Bearer realm="api", error="invalid_token", error_description="The access token was revoked""#,
        )
    }

    pub fn header(mut self, k: &str, v: &str) -> MockReply {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn hold(mut self, until: &Arc<AtomicBool>) -> MockReply {
        self.hold = Some(until.clone());
        self
    }

    pub fn wire(mut self, w: Wire) -> MockReply {
        self.wire = w;
        self
    }
}

type Handler = Box<dyn Fn(&Recorded) -> MockReply + Send + Sync>;

struct Shared {
    handler: Mutex<Handler>,
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
}

pub struct MockUpstream {
    pub port: u16,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl MockUpstream {
    /// Plain HTTP.
    pub fn start(handler: impl Fn(&Recorded) -> MockReply + Send + Sync + 'static) -> MockUpstream {
        MockUpstream::start_inner(Box::new(handler), None)
    }

    /// A vendor that answers with `ok` until the returned flag is set, then
    /// refuses every request with `401` (`invalid_token`).
    pub fn revocable(
        ok: impl Fn(&Recorded) -> MockReply + Send + Sync + 'static,
    ) -> (MockUpstream, Arc<AtomicBool>) {
        let revoked = Arc::new(AtomicBool::new(false));
        let r = revoked.clone();
        let up = MockUpstream::start(move |req| {
            if r.load(Ordering::Relaxed) {
                MockReply::revoked(401, "{}")
            } else {
                ok(req)
            }
        });
        (up, revoked)
    }

    /// HTTPS with the given server config.
    pub fn start_tls(
        handler: impl Fn(&Recorded) -> MockReply + Send + Sync + 'static,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> MockUpstream {
        MockUpstream::start_inner(Box::new(handler), Some(tls))
    }

    fn start_inner(
        handler: Handler,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> MockUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Bound with std so that this works from inside a test's runtime too.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = {
            let _enter = rt.enter();
            TcpListener::from_std(std_listener).unwrap()
        };
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            handler: Mutex::new(handler),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                sh.connections.fetch_add(1, Ordering::SeqCst);
                let sh = sh.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(sock, sh).await,
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(s) = acceptor.accept(sock).await {
                                serve(s, sh).await
                            }
                        }
                    }
                });
            }
        });
        MockUpstream {
            port,
            shared,
            rt: Some(rt),
        }
    }

    pub fn set_handler(&self, handler: impl Fn(&Recorded) -> MockReply + Send + Sync + 'static) {
        *self.shared.handler.lock().unwrap() = Box::new(handler);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, sh: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut chunk = [0u8; 8192];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let head_for_record = head.clone();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body = if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < len {
                let mut chunk = [0u8; 8192];
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..len).collect()
        } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    let mut chunk = [0u8; 8192];
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    let mut chunk = [0u8; 8192];
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            Vec::new()
        };
        let rec = Recorded {
            method: method.clone(),
            target,
            headers,
            body,
            head: head_for_record,
        };
        let reply = (sh.handler.lock().unwrap())(&rec);
        sh.requests.lock().unwrap().push(rec);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        if let Some(flag) = &reply.hold {
            for _ in 0..3000 {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        match reply.wire {
            Wire::Close => return,
            Wire::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            _ => {}
        }
        let mut out = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        let head_only = method == "HEAD";
        match reply.wire {
            Wire::Chunked => out.push_str("Transfer-Encoding: chunked\r\n\r\n"),
            _ => out.push_str(&format!("Content-Length: {}\r\n\r\n", reply.body.len())),
        }
        let mut bytes = out.into_bytes();
        if !head_only {
            match reply.wire {
                Wire::Chunked => {
                    if !reply.body.is_empty() {
                        bytes.extend_from_slice(format!("{:x}\r\n", reply.body.len()).as_bytes());
                        bytes.extend_from_slice(&reply.body);
                        bytes.extend_from_slice(b"\r\n");
                    }
                    bytes.extend_from_slice(b"0\r\n\r\n");
                }
                Wire::Truncate => bytes.extend_from_slice(&reply.body[..reply.body.len() / 2]),
                _ => bytes.extend_from_slice(&reply.body),
            }
        }
        if sock.write_all(&bytes).await.is_err() {
            return;
        }
        let _ = sock.flush().await;
        if reply.wire == Wire::Truncate {
            return;
        }
    }
}

/// A CA and a server certificate for 127.0.0.1, made fresh for a test.
pub struct TlsFixture {
    pub ca_pem: String,
    /// The server certificate (for 127.0.0.1 and localhost) and its key, as
    /// PEM, for servers the tests start (redis-server).
    pub cert_pem: String,
    pub key_pem: String,
    pub server: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl TlsFixture {
    pub fn new() -> TlsFixture {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "graceway test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        TlsFixture {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            server: Arc::new(server),
        }
    }
}
