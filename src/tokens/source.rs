//! Reading a token from its source: a file, an environment variable, or a
//! command's standard output.
//!
//! Errors name the source, never its output: a command that fails may have
//! printed half a token, so neither stdout nor stderr is ever echoed.

use std::process::Stdio;
use std::time::Duration;

use super::value::{Secret, ValueError};
use crate::config::{SourceSpec, MAX_TOKEN_BYTES};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("command `{program}` could not start: {reason}")]
    CommandStart { program: String, reason: String },
    #[error("command `{program}` exited with {status} ({stderr_bytes} bytes on stderr, not shown: run it by hand to see them)")]
    CommandFailed {
        program: String,
        status: String,
        stderr_bytes: usize,
    },
    #[error("command `{program}` did not finish within {timeout:?}")]
    CommandTimeout { program: String, timeout: Duration },
    #[error("oauth2 {0}")]
    OAuth2(String),
    /// An AWS credential set that is incomplete or malformed (never with
    /// any part of its value).
    #[error("aws credentials {0}")]
    Aws(String),
    #[error("{source_name}: {error}")]
    Value {
        source_name: String,
        error: ValueError,
    },
}

/// Reads a file, variable or command (not `oauth2`) and checks the value.
pub async fn read_value(spec: &SourceSpec) -> Result<Secret, SourceError> {
    let raw = read_raw(spec).await?;
    Secret::parse(&raw).map_err(|error| SourceError::Value {
        source_name: spec.describe(),
        error,
    })
}

/// Reads a structured token: a JSON object from a file, variable or
/// command, or `fields` each from its own source.
pub async fn read_structured(spec: &SourceSpec) -> Result<Secret, SourceError> {
    let value = |error| SourceError::Value {
        source_name: spec.describe(),
        error,
    };
    match spec {
        SourceSpec::Fields(parts) => {
            let mut fields = std::collections::BTreeMap::new();
            for (name, part) in parts {
                let v = read_value(part).await.map_err(|e| match e {
                    SourceError::Value { error, .. } => value(ValueError::Field {
                        field: name.clone(),
                        error: Box::new(error),
                    }),
                    other => other,
                })?;
                fields.insert(name.clone(), v.expose().to_string());
            }
            super::injected::compose(&fields).map_err(value)
        }
        other => super::injected::parse(&read_raw(other).await?).map_err(value),
    }
}

/// What a file, variable or command holds, unchecked (an AWS credential
/// set's JSON is parsed by [`super::sigv4`]).
pub async fn read_raw(spec: &SourceSpec) -> Result<String, SourceError> {
    Ok(match spec {
        SourceSpec::OAuth2(o) => {
            return Err(SourceError::OAuth2(format!(
                "{}: not a plain value source",
                o.token_url
            )))
        }
        SourceSpec::Aws(_) => {
            return Err(SourceError::Aws(format!(
                "{}: not a plain value source",
                spec.describe()
            )))
        }
        SourceSpec::Fields(_) => {
            return Err(SourceError::Value {
                source_name: spec.describe(),
                error: ValueError::NotStructured("several fields, not one value".into()),
            })
        }
        SourceSpec::File(path) => read_file(path)?,
        SourceSpec::Env(name) => match std::env::var(name) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                return Err(SourceError::EnvMissing(name.clone()))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(SourceError::EnvNotUnicode(name.clone()))
            }
        },
        SourceSpec::Command { argv, timeout, .. } => run_command(argv, *timeout).await?,
    })
}

/// Reads a token file with plain blocking reads: a token file is a few
/// bytes on a local or in-memory filesystem (a Kubernetes Secret volume is
/// tmpfs), so this takes microseconds on the control thread, where
/// `tokio::fs` would hand each open, stat and read to the blocking pool
/// and wake a thread for every one of them (measured: it made a reload
/// storm cost the proxy several percent of its throughput).
pub(super) fn read_file(path: &std::path::Path) -> Result<String, SourceError> {
    use std::io::Read;
    let err = |reason: String| SourceError::File {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    // Read at most one byte past the limit: a huge file is refused without
    // loading it.
    let size = file.metadata().map(|m| m.len()).ok();
    let mut buf = Vec::new();
    file.take(MAX_TOKEN_BYTES as u64 + 64)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 >= MAX_TOKEN_BYTES as u64 + 64 {
        // Say how big the file really is, not how much of it was read.
        return Err(SourceError::Value {
            source_name: format!("file:{}", path.display()),
            error: ValueError::TooLong(size.unwrap_or(buf.len() as u64) as usize),
        });
    }
    String::from_utf8(buf).map_err(|_| err("the file is not UTF-8 text".into()))
}

async fn run_command(argv: &[String], timeout: Duration) -> Result<String, SourceError> {
    let program = argv[0].clone();
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SourceError::CommandStart {
            program: program.clone(),
            reason: e.to_string(),
        })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => return Err(SourceError::CommandTimeout { program, timeout }),
        Ok(Err(e)) => {
            return Err(SourceError::CommandStart {
                program,
                reason: e.to_string(),
            })
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        return Err(SourceError::CommandFailed {
            program,
            status: out.status.to_string(),
            stderr_bytes: out.stderr.len(),
        });
    }
    if out.stdout.len() > MAX_TOKEN_BYTES + 64 {
        return Err(SourceError::Value {
            source_name: format!("command:{program}"),
            error: ValueError::TooLong(out.stdout.len()),
        });
    }
    String::from_utf8(out.stdout).map_err(|_| SourceError::CommandFailed {
        program,
        status: "output that is not UTF-8 text".into(),
        stderr_bytes: 0,
    })
}
