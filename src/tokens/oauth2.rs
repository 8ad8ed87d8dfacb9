//! The `oauth2` token source: the client-credentials grant (RFC 6749
//! §4.4) against a token endpoint.
//!
//! A fetched token is kept until `refresh_fraction` of its `expires_in`
//! has passed; reading the source before then returns the same token, so
//! reloads and file events do not mint new tokens. A failed fetch is
//! retried with backoff (2 s doubling to 5 min) while the previous token,
//! if still unexpired, keeps serving. The fetched token's expiry comes from
//! `expires_in`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use pingora::http::RequestHeader;

use super::source::SourceError;
use super::value::{percent_encode, Secret};
use crate::config::{ClientAuth, CredentialSource, OAuth2Spec};

#[derive(Clone)]
struct Cached {
    secret: Option<Secret>,
    expires_at: Option<SystemTime>,
    /// When the next fetch is due (refresh point, or retry after a failure).
    next_attempt: SystemTime,
    failures: u32,
}

fn cache() -> &'static Mutex<HashMap<String, Cached>> {
    static C: OnceLock<Mutex<HashMap<String, Cached>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

fn key(spec: &OAuth2Spec) -> String {
    format!(
        "{}|{:?}|{:?}|{:?}",
        spec.token_url, spec.client_id, spec.scope, spec.audience
    )
}

/// Whether a fetch is due (refresh point reached or a retry is due).
pub fn due(spec: &OAuth2Spec) -> bool {
    let c = cache().lock().unwrap_or_else(|p| p.into_inner());
    c.get(&key(spec))
        .is_none_or(|e| SystemTime::now() >= e.next_attempt)
}

/// The upstream refused `rejected`, this source's current token: the next
/// read fetches a new one at once (the control loop's refresh runs within a
/// quarter second), instead of keeping the refused token until its
/// scheduled refresh. A fetch that is backing off after failures keeps its
/// backoff. Only a freshly fetched token that is also refused stays
/// rejected.
pub fn refused(spec: &OAuth2Spec, rejected: &Secret) {
    let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get_mut(&key(spec)) {
        if c.secret.as_ref() == Some(rejected) && c.failures == 0 {
            c.next_attempt = SystemTime::now();
            log::info!(
                "oauth2 {}: token {} was refused; fetching a new one now",
                spec.token_url,
                rejected.fingerprint()
            );
        }
    }
}

/// The current token: cached while fresh, fetched when due.
pub async fn read(spec: &OAuth2Spec) -> Result<(Secret, Option<SystemTime>), SourceError> {
    let k = key(spec);
    let now = SystemTime::now();
    let cached = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&k)
        .cloned();
    if let Some(c) = &cached {
        if let Some(s) = &c.secret {
            let unexpired = c.expires_at.is_none_or(|e| e > now);
            if now < c.next_attempt && unexpired {
                return Ok((s.clone(), c.expires_at));
            }
        }
    }
    let result = fetch(spec).await;
    let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok((secret, expires_in)) => {
            let refresh_after = expires_in
                .map(|d| d.mul_f64(spec.refresh_fraction))
                .unwrap_or(Duration::from_secs(3600));
            let expires_at = expires_in.map(|d| now + d);
            map.insert(
                k,
                Cached {
                    secret: Some(secret.clone()),
                    expires_at,
                    next_attempt: now + refresh_after.max(Duration::from_secs(1)),
                    failures: 0,
                },
            );
            log::info!(
                "oauth2 {}: fetched token {} (expires in {})",
                spec.token_url,
                secret.fingerprint(),
                expires_in.map_or("unknown".into(), |d| format!("{}s", d.as_secs()))
            );
            Ok((secret, expires_at))
        }
        Err(e) => {
            let failures = cached.as_ref().map_or(0, |c| c.failures) + 1;
            let backoff =
                crate::clock::backoff(Duration::from_secs(2), failures, Duration::from_secs(300));
            let keep =
                cached.filter(|c| c.secret.is_some() && c.expires_at.is_none_or(|x| x > now));
            map.insert(
                k,
                Cached {
                    secret: keep.as_ref().and_then(|c| c.secret.clone()),
                    expires_at: keep.as_ref().and_then(|c| c.expires_at),
                    next_attempt: now + backoff,
                    failures,
                },
            );
            match keep {
                Some(c) => {
                    log::warn!(
                        "oauth2 {}: refresh failed ({e}); the current token serves until it expires; retry in {}s",
                        spec.token_url,
                        backoff.as_secs()
                    );
                    Ok((c.secret.expect("kept only with a secret"), c.expires_at))
                }
                None => Err(e),
            }
        }
    }
}

async fn credential(c: &CredentialSource, what: &str) -> Result<String, SourceError> {
    let spec = match c {
        CredentialSource::Literal(v) => return Ok(v.clone()),
        CredentialSource::Env(n) => crate::config::SourceSpec::Env(n.clone()),
        CredentialSource::File(p) => crate::config::SourceSpec::File(p.clone()),
    };
    super::source::read_value(&spec)
        .await
        .map(|s| s.expose().to_string())
        .map_err(|e| SourceError::OAuth2(format!("{what}: {e}")))
}

async fn fetch(spec: &OAuth2Spec) -> Result<(Secret, Option<Duration>), SourceError> {
    let fail = |m: String| SourceError::OAuth2(format!("{}: {m}", spec.token_url));
    let client_id = credential(&spec.client_id, "client_id").await?;
    let client_secret = credential(&spec.client_secret, "client_secret").await?;

    let mut form = String::from("grant_type=client_credentials");
    if let Some(s) = &spec.scope {
        form.push_str("&scope=");
        form.push_str(&percent_encode(s));
    }
    if let Some(a) = &spec.audience {
        form.push_str("&audience=");
        form.push_str(&percent_encode(a));
    }
    if spec.client_auth == ClientAuth::Body {
        form.push_str("&client_id=");
        form.push_str(&percent_encode(&client_id));
        form.push_str("&client_secret=");
        form.push_str(&percent_encode(&client_secret));
    }

    let peer = crate::net::outbound::peer_for(
        &spec.endpoint,
        spec.verify,
        spec.ca_file.as_deref(),
        spec.timeout,
        spec.timeout,
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let mut req = RequestHeader::build("POST", spec.path_and_query.as_bytes(), Some(6))
        .map_err(|e| fail(e.to_string()))?;
    let h = |e: Box<pingora::Error>| fail(e.to_string());
    req.insert_header(http::header::HOST, spec.endpoint.host_header.as_str())
        .map_err(h)?;
    req.insert_header(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded",
    )
    .map_err(h)?;
    req.insert_header(http::header::ACCEPT, "application/json")
        .map_err(h)?;
    req.insert_header(http::header::CONTENT_LENGTH, form.len())
        .map_err(h)?;
    if spec.client_auth == ClientAuth::Basic {
        // RFC 6749 §2.3.1: form-encode id and secret, then Basic.
        let pair = format!(
            "{}:{}",
            percent_encode(&client_id),
            percent_encode(&client_secret)
        );
        let mut v = http::HeaderValue::try_from(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
        .map_err(|_| fail("client credentials are not header-safe".into()))?;
        v.set_sensitive(true);
        req.insert_header(http::header::AUTHORIZATION, v)
            .map_err(h)?;
    }
    let answer =
        crate::net::outbound::send(&peer, req, Some(Bytes::from(form)), spec.timeout, 64 << 10)
            .await
            .map_err(|e| fail(e.to_string()))?;
    let json: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    if answer.status != 200 {
        // The `error` code (RFC 6749 §5.2) is safe to show; the description
        // is not shown, it is free text from the server.
        let code = json
            .as_ref()
            .and_then(|j| j["error"].as_str())
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        return Err(fail(format!(
            "token endpoint answered {}{code}",
            answer.status
        )));
    }
    let json = json.ok_or_else(|| fail("the answer is not JSON".into()))?;
    let token = json["access_token"]
        .as_str()
        .ok_or_else(|| fail("the answer has no access_token".into()))?;
    let secret = Secret::parse(token).map_err(|e| fail(e.to_string()))?;
    let expires_in = json["expires_in"]
        .as_u64()
        .or_else(|| json["expires_in"].as_str().and_then(|s| s.parse().ok()))
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    Ok((secret, expires_in))
}
