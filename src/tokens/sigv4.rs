//! AWS credential sets: read from their sources, checked, and kept as one
//! [`Secret`] so that the token machinery (states, failover, rotation,
//! fingerprints, the ledger) treats a credential set like any token.
//!
//! The secret holds `access key id:secret access key[:session token]`.
//! None of the three can hold a `:` (AWS key ids are upper-case letters and
//! digits, secrets and session tokens base64), so the split is exact; its
//! fingerprint covers the whole credential. Where they come from:
//! - `aws: { access_key_id, secret_access_key, session_token }`: each part
//!   from its own file, variable or command;
//! - `aws: { environment: true }`: `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
//! - `aws: { profile, credentials_file }`: the shared credentials file
//!   (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`; profile
//!   `AWS_PROFILE`, else `default`);
//! - a `file` or `command` token: the JSON of AWS's `credential_process`
//!   (`{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken",
//!   "Expiration"}`), whose `Expiration` is watched like a JWT's `exp`.

use std::path::Path;
use std::time::SystemTime;

use super::source::{read_raw, read_value, SourceError};
#[cfg(test)]
use super::value::aws_parts as parts;
use super::value::Secret;
use crate::config::{AwsSource, SourceSpec};

/// Reads one credential set of a `sigv4` upstream, with the expiry its
/// source states (`credential_process`'s `Expiration`).
pub async fn read(spec: &SourceSpec) -> Result<(Secret, Option<SystemTime>), SourceError> {
    match spec {
        SourceSpec::Aws(a) => read_aws(a).await.map(|s| (s, None)),
        SourceSpec::File(_) | SourceSpec::Command { .. } => {
            process_json(&read_raw(spec).await?, &spec.describe())
        }
        other => Err(SourceError::Aws(format!(
            "{}: not an AWS credential source",
            other.describe()
        ))),
    }
}

async fn read_aws(a: &AwsSource) -> Result<Secret, SourceError> {
    match a {
        AwsSource::Parts {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let id = read_value(access_key_id).await?;
            let secret = read_value(secret_access_key).await?;
            let token = match session_token {
                Some(t) => Some(read_value(t).await?),
                None => None,
            };
            compose(
                id.expose(),
                secret.expose(),
                token.as_ref().map(|t| t.expose()),
                "aws",
            )
        }
        AwsSource::Environment => {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
            else {
                return Err(SourceError::Aws(
                    "environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set"
                        .into(),
                ));
            };
            let token = var("AWS_SESSION_TOKEN");
            compose(&id, &secret, token.as_deref(), "environment")
        }
        AwsSource::Shared { profile, .. } => {
            let Some(path) = a.shared_file() else {
                return Err(SourceError::Aws(
                    "profile: neither AWS_SHARED_CREDENTIALS_FILE nor HOME is set".into(),
                ));
            };
            let profile = profile
                .clone()
                .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
                .unwrap_or_else(|| "default".into());
            let text = read_shared_file(&path)?;
            shared_profile(&text, &profile, &path)
        }
    }
}

/// The shared credentials file, at most 256 KiB.
fn read_shared_file(path: &Path) -> Result<String, SourceError> {
    use std::io::Read;
    let err = |reason: String| SourceError::File {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    file.take(256 * 1024 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() > 256 * 1024 {
        return Err(err("over 256 KiB: not a credentials file".into()));
    }
    String::from_utf8(buf).map_err(|_| err("the file is not UTF-8 text".into()))
}

/// One profile of the INI-style shared credentials file: `[name]` (or
/// `[profile name]`) and `aws_access_key_id`, `aws_secret_access_key`,
/// `aws_session_token` below it.
fn shared_profile(text: &str, profile: &str, path: &Path) -> Result<Secret, SourceError> {
    let (mut inside, mut found) = (false, false);
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside =
                name == profile || name.strip_prefix("profile ").map(str::trim) == Some(profile);
            found |= inside;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if inside {
            let value = Some(value.trim().to_string());
            match key.trim() {
                "aws_access_key_id" => id = value,
                "aws_secret_access_key" => secret = value,
                "aws_session_token" => token = value,
                _ => {}
            }
        }
    }
    let at = format!("{} [{profile}]", path.display());
    match (found, id, secret) {
        (false, _, _) => Err(SourceError::Aws(format!("{at}: no such profile"))),
        (true, Some(id), Some(secret)) => compose(&id, &secret, token.as_deref(), &at),
        _ => Err(SourceError::Aws(format!(
            "{at}: needs aws_access_key_id and aws_secret_access_key"
        ))),
    }
}

/// The JSON a `credential_process` prints (version 1).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessCredentials {
    version: u32,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    expiration: Option<String>,
}

/// Parses `credential_process` JSON; serde's message is not shown (it may
/// quote a part of the value).
pub fn process_json(
    raw: &str,
    source_name: &str,
) -> Result<(Secret, Option<SystemTime>), SourceError> {
    let p: ProcessCredentials = serde_json::from_str(raw).map_err(|_| {
        SourceError::Aws(format!(
            "{source_name}: not the credential_process JSON ({{\"Version\": 1, \"AccessKeyId\": ..., \"SecretAccessKey\": ...}})"
        ))
    })?;
    if p.version != 1 {
        return Err(SourceError::Aws(format!(
            "{source_name}: Version {} (only 1 is known)",
            p.version
        )));
    }
    let expires = match p.expiration.as_deref() {
        None => None,
        Some(e) => Some(humantime::parse_rfc3339_weak(e).map_err(|_| {
            SourceError::Aws(format!("{source_name}: Expiration `{e}` is not RFC 3339"))
        })?),
    };
    let secret = compose(
        &p.access_key_id,
        &p.secret_access_key,
        p.session_token.as_deref().filter(|t| !t.is_empty()),
        source_name,
    )?;
    Ok((secret, expires))
}

/// Checks the parts and joins them into one secret.
fn compose(
    id: &str,
    secret: &str,
    token: Option<&str>,
    source_name: &str,
) -> Result<Secret, SourceError> {
    let bad = |what: &str| {
        SourceError::Aws(format!(
            "{source_name}: the {what} is empty or holds a character AWS never uses (space, `:`, a control character)"
        ))
    };
    let ok = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    let (id, secret) = (id.trim(), secret.trim());
    if !ok(id) {
        return Err(bad("access key id"));
    }
    if !ok(secret) {
        return Err(bad("secret access key"));
    }
    let mut joined = format!("{id}:{secret}");
    if let Some(t) = token.map(str::trim) {
        if !ok(t) {
            return Err(bad("session token"));
        }
        joined.push(':');
        joined.push_str(t);
    }
    Secret::parse(&joined).map_err(|error| SourceError::Value {
        source_name: source_name.to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_credential_process_json() {
        let (s, exp) = process_json(
            r#"{"Version":1,"AccessKeyId":"AKIDX","SecretAccessKey":"s/e+c","SessionToken":"tok=","Expiration":"2030-01-01T00:00:00Z"}"#,
            "command:x",
        )
        .unwrap();
        let p = parts(&s).unwrap();
        assert_eq!(
            (p.access_key_id, p.secret_access_key, p.session_token),
            ("AKIDX", "s/e+c", Some("tok="))
        );
        assert_eq!(exp, humantime::parse_rfc3339("2030-01-01T00:00:00Z").ok());
        let e = process_json(r#"{"Version":1,"AccessKeyId":"A"}"#, "file:/x").unwrap_err();
        assert!(e.to_string().contains("file:/x"), "{e}");
        let e = process_json(
            r#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"sec ret"}"#,
            "file:/x",
        )
        .unwrap_err();
        assert!(!e.to_string().contains("sec ret"), "{e}");
    }

    #[test]
    fn reads_a_profile_of_the_shared_file() {
        let text = "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n\n# c\n[profile standby]\naws_access_key_id=A2\naws_secret_access_key=S2\naws_session_token = T2\n";
        let p = Path::new("/c");
        let s = shared_profile(text, "default", p).unwrap();
        assert_eq!(s.expose(), "A1:S1");
        let s = shared_profile(text, "standby", p).unwrap();
        assert_eq!(s.expose(), "A2:S2:T2");
        let e = shared_profile(text, "nope", p).unwrap_err();
        assert!(e.to_string().contains("no such profile"), "{e}");
    }
}
