//! Config: the YAML file ([`schema`]), the validated model ([`model`]) and
//! what a key left out means ([`defaults`]).
//!
//! Data flows one way, in two stages (as in ripgrep):
//! 1. [`read`] / [`parse`]: file text -> [`schema::FileConfig`] (serde,
//!    unknown keys refused) -> [`Config`] (every value parsed and checked,
//!    all problems reported together with their field paths). No I/O but
//!    reading the config file itself, so `check --skip-sources` judges a
//!    file on any machine.
//! 2. [`load`]: stage 1, then the files the config names ([`files`]). The
//!    token sources, DNS and upstream CA bundles follow in
//!    `generation::build`.
//!
//! Nothing outside this module sees the file schema.

pub mod defaults;
#[cfg(test)]
mod doc_defaults;
pub mod files;
#[cfg(test)]
pub(crate) mod fuzz;
pub mod model;
pub mod schema;
pub mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use defaults::SENSITIVE_QUERY;
pub use model::*;
pub use validate::parse_url;

/// One problem in a config file, tied to the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path such as `upstreams[0].credentials.inject.header`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A config file read, hashed and validated.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub path: PathBuf,
    /// `sha256:` + 12 hex of the file's bytes, shown in `/status` so an
    /// operator can tell which version of the file is in force.
    pub file_hash: String,
}

/// Both stages: reads and validates a config file, then checks the files
/// it names. What `run`, reload and a full `check` use.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let loaded = read(path)?;
    files::check(&loaded.config)?;
    Ok(loaded)
}

/// Stage 1: reads and validates a config file; touches no other file.
pub fn read(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    // Absolute from here on: a daemon changes its working directory to `/`,
    // and a reload must find the same file (and relative paths inside it
    // must keep meaning the same files).
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let config = parse(&text, &base)?;
    let digest = Sha256::digest(text.as_bytes());
    Ok(LoadedConfig {
        config,
        path: path.to_path_buf(),
        file_hash: format!("sha256:{}", &hex(&digest)[..12]),
    })
}

/// Stage 1 of config text: parses and validates it, without I/O; relative
/// paths are taken relative to `base_dir`.
pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let file: schema::FileConfig = serde_yaml::from_str(text).map_err(|e| {
        // serde_yaml puts the field path first ("upstreams[0].timeouts: unknown
        // field ..."); keep it as the error's path so output looks the same as
        // validation errors.
        let msg = e.to_string();
        let (path, message) = match msg.split_once(": ") {
            Some((p, m)) if !p.contains(' ') => (p.to_string(), m.to_string()),
            _ => (String::new(), msg),
        };
        ConfigErrors(vec![ConfigError { path, message }])
    })?;
    Config::from_file(file, base_dir)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends `bytes` as lower-case hex (no allocation of its own).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}
