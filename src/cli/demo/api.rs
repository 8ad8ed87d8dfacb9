//! The demo emoji API: a stand-in for the external vendor whose token dies.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/ping` | `{"ok":true}` (the probe path) |
//! | `GET /v1/emojis` | the catalogue |
//! | `GET /v1/emojis/{name}` | one emoji, or 404 |
//! | `POST /demo/deprecate` | the vendor announces, in-band, that this API is deprecated: answers carry `Deprecation`, `Sunset` (30 days on) and `Link` headers |
//! | `POST /demo/revoke[?fingerprint=sha256:…]` | the vendor deprecates one token, or every current one: `401` with `WWW-Authenticate: Bearer error="invalid_token"` |
//! | `POST /demo/rotate` | the vendor issues a new token, written to `<dir>/token.next` |
//! | `POST /demo/fail?status=503` | answer every API call with that status |
//! | `POST /demo/hang` | hold every API call without answering (30 s) |
//! | `POST /demo/recover` | back to normal answers |
//! | `GET /demo/stats` | requests seen and the fingerprint of the last token presented |
//!
//! API calls need `Authorization: Bearer <token>`; the demo-only control
//! endpoints do not. Tokens are only ever written to files or compared.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::tokens::fingerprint;

const EMOJIS: [(&str, &str); 6] = [
    ("smile", "😄"),
    ("heart", "❤️"),
    ("rocket", "🚀"),
    ("tada", "🎉"),
    ("fire", "🔥"),
    ("crab", "🦀"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Fail(u16),
    Hang,
}

#[derive(Debug)]
struct State {
    accepted: HashSet<String>,
    mode: Mode,
    api_requests: u64,
    last_fingerprint: Option<String>,
    minted: u64,
    /// Unix seconds of the announced deprecation, once announced.
    deprecated_at: Option<u64>,
}

pub struct DemoApi {
    state: Mutex<State>,
    /// Where `rotate` writes the new token.
    next_token_file: PathBuf,
}

/// A fresh token value: not guessable from outside, not secret from the
/// demo's own user (it is their demo).
pub fn mint_token(salt: u64) -> String {
    use sha2::{Digest, Sha256};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = format!("{}-{}-{salt}", now.as_nanos(), std::process::id());
    let d = Sha256::digest(seed.as_bytes());
    format!("emj_live_{}", &crate::config::hex(&d)[..32])
}

impl DemoApi {
    pub fn new(tokens: &[&str], next_token_file: PathBuf) -> DemoApi {
        DemoApi {
            state: Mutex::new(State {
                accepted: tokens.iter().map(|t| t.to_string()).collect(),
                mode: Mode::Normal,
                api_requests: 0,
                last_fingerprint: None,
                minted: 0,
                deprecated_at: None,
            }),
            next_token_file,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn json(status: u16, body: serde_json::Value, cache: Option<&str>) -> Response<Vec<u8>> {
    let body = format!("{body}\n").into_bytes();
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json; charset=utf-8")
        .header("content-length", body.len());
    if let Some(c) = cache {
        b = b.header("cache-control", c);
    }
    b.body(body).expect("static response parts")
}

#[async_trait]
impl ServeHttp for DemoApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        let bearer = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);

        match (method.as_str(), path.as_str()) {
            ("POST", "/demo/revoke") => {
                // `?fingerprint=sha256:...` revokes one token, else all.
                let only = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("fingerprint="))
                    .map(|f| f.replace("%3A", ":"));
                let mut st = self.lock();
                let before = st.accepted.len();
                match &only {
                    Some(fp) => st.accepted.retain(|t| &fingerprint(t) != fp),
                    None => st.accepted.clear(),
                }
                let n = before - st.accepted.len();
                return json(200, serde_json::json!({"revoked": n}), None);
            }
            ("POST", "/demo/rotate") => {
                let token = {
                    let mut st = self.lock();
                    st.minted += 1;
                    let t = mint_token(st.minted);
                    st.accepted.insert(t.clone());
                    t
                };
                let tmp = self.next_token_file.with_extension("tmp");
                let written = std::fs::write(&tmp, format!("{token}\n"))
                    .and_then(|_| std::fs::rename(&tmp, &self.next_token_file));
                return match written {
                    Ok(()) => json(
                        200,
                        serde_json::json!({
                            "written_to": self.next_token_file.display().to_string(),
                            "fingerprint": fingerprint(&token),
                        }),
                        None,
                    ),
                    Err(e) => json(500, serde_json::json!({"error": e.to_string()}), None),
                };
            }
            ("POST", "/demo/deprecate") => {
                let at = crate::clock::unix_now();
                self.lock().deprecated_at = Some(at);
                return json(200, serde_json::json!({"deprecated_at": at}), None);
            }
            ("POST", "/demo/fail") => {
                let status = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("status="))
                    .and_then(|s| s.parse::<u16>().ok())
                    .filter(|s| (400..600).contains(s))
                    .unwrap_or(503);
                self.lock().mode = Mode::Fail(status);
                return json(
                    200,
                    serde_json::json!({"mode": "fail", "status": status}),
                    None,
                );
            }
            ("POST", "/demo/hang") => {
                self.lock().mode = Mode::Hang;
                return json(200, serde_json::json!({"mode": "hang"}), None);
            }
            ("POST", "/demo/recover") => {
                self.lock().mode = Mode::Normal;
                return json(200, serde_json::json!({"mode": "normal"}), None);
            }
            ("GET", "/demo/stats") => {
                let st = self.lock();
                return json(
                    200,
                    serde_json::json!({
                        "api_requests": st.api_requests,
                        "last_token": st.last_fingerprint,
                        "accepted_tokens": st.accepted.len(),
                    }),
                    Some("no-store"),
                );
            }
            _ => {}
        }

        let (mode, authorized, deprecated_at) = {
            let mut st = self.lock();
            st.api_requests += 1;
            st.last_fingerprint = bearer.as_deref().map(fingerprint);
            let ok = bearer.as_ref().is_some_and(|b| st.accepted.contains(b));
            (st.mode, ok, st.deprecated_at)
        };
        let mut resp = self.api_answer(mode, authorized, &method, &path).await;
        if let Some(at) = deprecated_at {
            let sunset = crate::clock::from_unix(at + 30 * 86400);
            let h = resp.headers_mut();
            for (name, value) in [
                ("deprecation", format!("@{at}")),
                ("sunset", httpdate::fmt_http_date(sunset)),
                (
                    "link",
                    r#"<https://emoji.example/changelog#v1>; rel="deprecation", <https://emoji.example/v2>; rel="successor-version""#.to_string(),
                ),
            ] {
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
            }
        }
        resp
    }
}

impl DemoApi {
    /// The API's own answer to an API call.
    async fn api_answer(
        &self,
        mode: Mode,
        authorized: bool,
        method: &str,
        path: &str,
    ) -> Response<Vec<u8>> {
        match mode {
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return json(504, serde_json::json!({"error": "hung"}), None);
            }
            Mode::Fail(status) => {
                return json(
                    status,
                    serde_json::json!({"error": "the emoji service is having a bad day"}),
                    None,
                )
            }
            Mode::Normal => {}
        }
        if !authorized {
            let mut r = json(
                401,
                serde_json::json!({
                    "error": "invalid_token",
                    "error_description": "this access token has been deprecated",
                }),
                None,
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(
                    r#"Bearer realm="emoji", error="invalid_token", error_description="this access token has been deprecated""#,
                ),
            );
            return r;
        }
        if method != "GET" && method != "HEAD" {
            return json(
                405,
                serde_json::json!({"error": "method not allowed"}),
                None,
            );
        }
        match path {
            "/v1/ping" => json(200, serde_json::json!({"ok": true}), Some("no-store")),
            "/v1/emojis" => {
                let list: Vec<_> = EMOJIS
                    .iter()
                    .map(|(n, e)| serde_json::json!({"name": n, "emoji": e}))
                    .collect();
                json(200, serde_json::json!({"emojis": list}), Some("max-age=60"))
            }
            p => match p
                .strip_prefix("/v1/emojis/")
                .and_then(|n| EMOJIS.iter().find(|(k, _)| *k == n))
            {
                Some((n, e)) => json(
                    200,
                    serde_json::json!({"name": n, "emoji": e}),
                    Some("max-age=60"),
                ),
                None => json(404, serde_json::json!({"error": "no such emoji"}), None),
            },
        }
    }
}
