//! The admin listener (default `127.0.0.1:9180`).
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /` | the status page ([`page`]): HTML rendered from `/status`, redrawn by `/status.js` every 3 s; styles in `/status.css`; a strict Content-Security-Policy |
//! | `GET /healthz` | 200 while the process serves (liveness) |
//! | `GET /readyz` | 200 when every upstream can answer (a usable token or a stale path), else 503; JSON per upstream |
//! | `GET /status` | JSON inventory ([`status`]) |
//! | `GET /metrics` | Prometheus text |
//! | `POST /reload` | same as SIGHUP; answers with the result; needs the admin bearer when `admin.token_file` is set; cross-site requests get 403; concurrent calls share one reload |
//!
//! `HEAD` is answered wherever `GET` is. Nothing here ever shows a token
//! value: tokens appear as `sha256:` fingerprints. No answer carries a
//! CORS header, so another site's page cannot read one, and every answer
//! says `Cross-Origin-Resource-Policy: same-origin` and `nosniff`.

pub mod page;
pub mod status;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::Encoder;
use sha2::{Digest, Sha256};

use crate::app::{App, Trigger};

pub struct AdminApp {
    pub app: Arc<App>,
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    text(status, "application/json", body)
}

fn text(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, "no-store")
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header("cross-origin-resource-policy", "same-origin")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts")
}

/// The status page or one of its files, under [`page::CSP`], never framed.
fn page_part(content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = text(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(page::CSP),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    json(status, &serde_json::json!({ "error": message }))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        crate::net::listener::header_complete(session.stream());
        session.set_pipelining_enabled(true);
        let req = session.req_header();
        if let Some(refused) = self.misdirected(req) {
            crate::net::listener::request_done(session.stream());
            return refused;
        }
        let cross_site = cross_site(req);
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let bearer = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| Sha256::digest(v.trim().as_bytes()));
        let get = method == Method::GET || method == Method::HEAD;
        let mut resp = match (path.as_str(), get, method == Method::POST) {
            ("/", true, _) => {
                let bearer = self
                    .app
                    .live
                    .load()
                    .loaded
                    .config
                    .admin
                    .token_file
                    .is_some();
                let html = page::html(&status::status(&self.app), bearer);
                page_part("text/html; charset=utf-8", html.into_bytes())
            }
            ("/status.js", true, _) => page_part(
                "text/javascript; charset=utf-8",
                page::SCRIPT.as_bytes().to_vec(),
            ),
            ("/status.css", true, _) => {
                page_part("text/css; charset=utf-8", page::STYLE.as_bytes().to_vec())
            }
            ("/healthz", true, _) => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            ("/readyz", true, _) => {
                let (ready, body) = status::readiness(&self.app);
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(code, &body)
            }
            ("/status", true, _) => json(
                StatusCode::OK,
                &serde_json::to_value(status::status(&self.app)).unwrap_or_default(),
            ),
            ("/metrics", true, _) => {
                let enc = prometheus::TextEncoder::new();
                crate::app::refresh_token_state_metrics(&self.app.live.load());
                crate::net::listener::refresh_metrics(&self.app.listeners);
                let mut buf = Vec::new();
                match enc.encode(&prometheus::gather(), &mut buf) {
                    Ok(()) => text(StatusCode::OK, enc.format_type(), buf),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            ("/reload", _, true) if cross_site => error(
                StatusCode::FORBIDDEN,
                "cross-site requests may not reload graceway",
            ),
            ("/reload", _, true) => match self.authorize(bearer).await {
                Err(resp) => resp,
                Ok(()) => {
                    let r = self.app.reload(Trigger::Admin).await;
                    let code = if r.ok {
                        StatusCode::OK
                    } else {
                        StatusCode::UNPROCESSABLE_ENTITY
                    };
                    json(code, &serde_json::to_value(&r).unwrap_or_default())
                }
            },
            (
                "/" | "/status.js" | "/status.css" | "/healthz" | "/readyz" | "/status"
                | "/metrics" | "/reload",
                _,
                _,
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        };
        if method == Method::HEAD {
            resp.body_mut().clear();
        }
        crate::net::listener::request_done(session.stream());
        resp
    }
}

/// Whether a request comes from another site, as a browser on this host
/// would send it for a page elsewhere (CSRF): `Sec-Fetch-Site` other than
/// `same-origin` or `none`, or an `Origin` that is not this listener's own
/// (`http://` + the request's `Host`). Tools such as curl send neither.
fn cross_site(req: &pingora::http::RequestHeader) -> bool {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    match header("origin") {
        None => false,
        Some(origin) => {
            let own = header("host").map(|h| format!("http://{h}"));
            own.as_deref() != Some(origin)
        }
    }
}

/// Whether `Host` names this listener: absent (HTTP/1.0), an IP literal
/// (no DNS name can be rebound to it), `localhost`, or one of
/// `admin.allowed_hosts`; the port is not compared. Any other name is what
/// a DNS-rebinding page sends (`evil.example` made to resolve to 127.0.0.1).
fn host_allowed(host: Option<&[u8]>, allowed: &[String]) -> bool {
    let Some(host) = host else { return true };
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = crate::proxy::target::strip_port(host.trim());
    if name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok())
    {
        return true;
    }
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

impl AdminApp {
    /// Refuses a request that names another host (421, DNS rebinding), has
    /// more than one `Host`, or more than one `Origin` (403: which one a
    /// check reads would decide it).
    fn misdirected(&self, req: &pingora::http::RequestHeader) -> Option<Response<Vec<u8>>> {
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Some(error(StatusCode::BAD_REQUEST, "more than one Host header"));
        }
        if req.headers.get_all(http::header::ORIGIN).iter().count() > 1 {
            return Some(error(StatusCode::FORBIDDEN, "more than one Origin header"));
        }
        let gen = self.app.live.load();
        if !host_allowed(
            host.map(|h| h.as_bytes()),
            &gen.loaded.config.admin.allowed_hosts,
        ) {
            return Some(error(
                StatusCode::MISDIRECTED_REQUEST,
                "this Host is not the admin listener's (add it to admin.allowed_hosts if a proxy or DNS name in front of it sends it)",
            ));
        }
        None
    }

    /// Checks the admin bearer when `admin.token_file` is configured. The
    /// file is read on each call (reloads are rare), so rotating it needs no
    /// restart. Compares SHA-256 digests so that timing reveals nothing
    /// useful about the value.
    async fn authorize(
        &self,
        presented: Option<sha2::digest::Output<Sha256>>,
    ) -> Result<(), Response<Vec<u8>>> {
        let gen = self.app.live.load_full();
        let Some(path) = &gen.loaded.config.admin.token_file else {
            return Ok(());
        };
        let secret =
            crate::tokens::source::read_value(&crate::config::SourceSpec::File(path.clone()))
                .await
                .map_err(|e| {
                    log::error!("admin token file: {e}");
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the admin token file cannot be read; see the log",
                    )
                })?;
        let expected = Sha256::digest(secret.expose().as_bytes());
        match presented {
            Some(p) if p == expected => Ok(()),
            _ => {
                let mut r = error(StatusCode::UNAUTHORIZED, "admin bearer token required");
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"graceway-admin\""),
                );
                Err(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn rebinding_hosts_are_refused() {
        let allowed = vec!["graceway-admin.internal".to_string()];
        for ok in [
            None,
            Some("127.0.0.1:9180"),
            Some("localhost:9180"),
            Some("LOCALHOST"),
            Some("10.0.0.7:9180"),
            Some("[::1]:9180"),
            Some("graceway-admin.internal:9180"),
        ] {
            assert!(host_allowed(ok.map(str::as_bytes), &allowed), "{ok:?}");
        }
        for bad in [
            "evil.example:19180",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!host_allowed(Some(bad.as_bytes()), &allowed), "{bad}");
        }
    }
}
