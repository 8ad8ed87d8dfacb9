//! `credentials.sigv4` and the AWS credential sets of its tokens, as
//! validated.

use std::path::PathBuf;

use super::SourceSpec;

/// `credentials.sigv4`: what a signature is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Spec {
    pub region: String,
    pub service: String,
    pub payload: Payload,
}

/// `credentials.sigv4.payload`: whether the body is part of the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Payload {
    /// The body's SHA-256 is signed (read whole before the request is
    /// sent; at most 64 KiB).
    #[default]
    Signed,
    /// `UNSIGNED-PAYLOAD`: the body streams and is not signed.
    Unsigned,
}

/// `tokens[].aws`: where one AWS credential set comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum AwsSource {
    /// Each part from its own file, variable or command.
    Parts {
        access_key_id: SourceSpec,
        secret_access_key: SourceSpec,
        session_token: Option<SourceSpec>,
    },
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    Environment,
    /// A profile of the shared credentials file. `None`: resolved when the
    /// token is read (`AWS_SHARED_CREDENTIALS_FILE`, else
    /// `~/.aws/credentials`; `AWS_PROFILE`, else `default`).
    Shared {
        file: Option<PathBuf>,
        profile: Option<String>,
    },
}

impl AwsSource {
    /// The shared credentials file this source reads, resolved now.
    pub fn shared_file(&self) -> Option<PathBuf> {
        let AwsSource::Shared { file, .. } = self else {
            return None;
        };
        file.clone().or_else(|| {
            std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials"))
                })
        })
    }

    /// Every file it reads, for the file watcher.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            AwsSource::Parts {
                access_key_id,
                secret_access_key,
                session_token,
            } => [
                Some(access_key_id),
                Some(secret_access_key),
                session_token.as_ref(),
            ]
            .into_iter()
            .flatten()
            .filter_map(|s| match s {
                SourceSpec::File(p) => Some(p.clone()),
                _ => None,
            })
            .collect(),
            AwsSource::Environment => Vec::new(),
            AwsSource::Shared { .. } => self.shared_file().into_iter().collect(),
        }
    }
}
