//! One request to the token endpoint: the form (the grant, the client's
//! proof, `extra_params`), HTTP Basic when the client proves itself so,
//! and reading the answer (RFC 6749 §5.1; the error code of §5.2, never
//! its free-text description).

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use pingora::http::RequestHeader;

use super::assertion;
use super::{expiry, Minted};
use crate::config::{ClientAuth, CredentialSource, Grant, OAuth2Spec};
use crate::tokens::source::SourceError;
use crate::tokens::value::{percent_encode, Secret};

pub(super) async fn credential(c: &CredentialSource, what: &str) -> Result<String, SourceError> {
    let spec = match c {
        CredentialSource::Literal(v) => return Ok(v.clone()),
        CredentialSource::Env(n) => crate::config::SourceSpec::Env(n.clone()),
        CredentialSource::File(p) => crate::config::SourceSpec::File(p.clone()),
    };
    crate::tokens::source::read_value(&spec)
        .await
        .map(|s| s.expose().to_string())
        .map_err(|e| SourceError::OAuth2(format!("{what}: {e}")))
}

/// A token fetched by this replica from the identity provider, with its
/// expiry ([`expiry`]) counted from the moment the request went out.
pub(super) async fn fetch_here(spec: &OAuth2Spec) -> Result<Minted, SourceError> {
    let fetched_at = SystemTime::now();
    let f = fetch(spec).await?;
    let expires_at = expiry(
        fetched_at,
        crate::tokens::value::jwt_expiry(f.secret.expose()),
        f.expires_at,
        f.expires_in,
    );
    Ok(Minted {
        secret: f.secret,
        expires_at,
        fetched_at,
        shared_by: None,
    })
}

/// What a token endpoint answered.
struct Fetched {
    secret: Secret,
    expires_in: Option<Duration>,
    /// A non-standard `expires_at` (Unix seconds) some providers add.
    expires_at: Option<SystemTime>,
}

/// The client's name at the provider: `client_id`, or a service
/// account's `client_email` (it names a shared token in the fleet).
pub(super) async fn client_name(spec: &OAuth2Spec) -> Result<String, SourceError> {
    match &spec.client_id {
        Some(c) => credential(c, "client_id").await,
        None => Ok(service_account(spec).await?.client_email),
    }
}

/// `grant: jwt_bearer`'s service account file, read now.
async fn service_account(spec: &OAuth2Spec) -> Result<assertion::ServiceAccount, SourceError> {
    let fail = |m: String| SourceError::OAuth2(format!("{}: {m}", spec.token_url));
    let Grant::JwtBearer {
        service_account: Some(path),
        ..
    } = &spec.grant
    else {
        return Err(fail("no service account file".into()));
    };
    let json = tokio::fs::read(path)
        .await
        .map_err(|e| fail(format!("service_account_file {}: {e}", path.display())))?;
    assertion::ServiceAccount::from_json(&json)
        .map_err(|e| fail(format!("service_account_file {}: {e}", path.display())))
}

/// `oauth2.private_key_file`, read now.
async fn signing_key(spec: &OAuth2Spec) -> Result<assertion::Key, SourceError> {
    let fail = |m: String| SourceError::OAuth2(format!("{}: {m}", spec.token_url));
    let k = spec
        .signing_key
        .as_ref()
        .ok_or_else(|| fail("no private_key_file".into()))?;
    let pem = tokio::fs::read(&k.file)
        .await
        .map_err(|e| fail(format!("private_key_file {}: {e}", k.file.display())))?;
    assertion::Key::from_pem(&pem, k.key_id.clone())
        .map_err(|e| fail(format!("private_key_file {} {e}", k.file.display())))
}

/// The form of a token request: the grant, how the client proves itself
/// (unless in HTTP Basic: the second value), and `extra_params`.
async fn token_form(spec: &OAuth2Spec) -> Result<(String, Option<String>), SourceError> {
    let fail = |m: String| SourceError::OAuth2(format!("{}: {m}", spec.token_url));
    let now = SystemTime::now();
    let client_id = match &spec.client_id {
        Some(c) => Some(credential(c, "client_id").await?),
        None => None,
    };
    let client_secret = match &spec.client_secret {
        Some(c) => Some(credential(c, "client_secret").await?),
        None => None,
    };
    let mut form = String::new();
    let mut field = |k: &str, v: &str| {
        if !form.is_empty() {
            form.push('&');
        }
        form.push_str(k);
        form.push('=');
        form.push_str(&percent_encode(v));
    };
    match &spec.grant {
        Grant::ClientCredentials => {
            field("grant_type", "client_credentials");
            if let Some(s) = &spec.scope {
                field("scope", s);
            }
        }
        Grant::JwtBearer {
            service_account: account,
            subject,
        } => {
            let (issuer, key) = match account {
                Some(_) => {
                    let a = service_account(spec).await?;
                    (a.client_email, a.key)
                }
                None => (
                    client_id.clone().unwrap_or_default(),
                    signing_key(spec).await?,
                ),
            };
            let jwt = assertion::grant_assertion(
                &key,
                &issuer,
                subject.as_deref(),
                spec.scope.as_deref(),
                &spec.token_url,
                now,
            )
            .map_err(fail)?;
            field("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
            field("assertion", &jwt);
        }
    }
    if let Some(a) = &spec.audience {
        field("audience", a);
    }
    let mut basic = None;
    match (spec.client_auth, client_id.as_deref()) {
        (ClientAuth::Body, Some(id)) => {
            field("client_id", id);
            field(
                "client_secret",
                client_secret.as_deref().unwrap_or_default(),
            );
        }
        (ClientAuth::PrivateKeyJwt, Some(id)) => {
            let key = signing_key(spec).await?;
            let jwt = assertion::client_assertion(&key, id, &spec.token_url, now).map_err(fail)?;
            field("client_id", id);
            field(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            );
            field("client_assertion", &jwt);
        }
        (ClientAuth::Basic, Some(id)) => {
            // RFC 6749 §2.3.1: form-encode id and secret, then Basic.
            basic = Some(format!(
                "{}:{}",
                percent_encode(id),
                percent_encode(client_secret.as_deref().unwrap_or_default())
            ));
        }
        _ => {}
    }
    for (k, v) in &spec.extra_params {
        field(k, v);
    }
    Ok((form, basic))
}

async fn fetch(spec: &OAuth2Spec) -> Result<Fetched, SourceError> {
    let fail = |m: String| SourceError::OAuth2(format!("{}: {m}", spec.token_url));
    let (form, basic) = token_form(spec).await?;

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
    if let Some(pair) = basic {
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
    let seconds = |field: &str| {
        json[field]
            .as_u64()
            .or_else(|| json[field].as_str().and_then(|s| s.parse().ok()))
            .filter(|s| *s > 0)
    };
    Ok(Fetched {
        secret,
        expires_in: seconds("expires_in").map(Duration::from_secs),
        expires_at: seconds("expires_at")
            .filter(|s| *s < 100_000_000_000)
            .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s)),
    })
}
