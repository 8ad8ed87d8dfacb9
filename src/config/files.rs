//! The second stage of loading a config: the files it names that nothing
//! else reads before they are needed (the webhook's and Redis's CA
//! bundles). Validation ([`super::validate`]) does no I/O, so that `check
//! --skip-sources` can judge a file away from the machine it will run on;
//! `run`, reload and a full `check` come here through [`super::load`].
//!
//! The rest of the sources are read while a generation is built
//! (`generation::build`): token sources, upstream CA bundles (every
//! certificate parsed), DNS. The admin bearer file is read at each `POST
//! /reload`, so that rotating it needs no reload.

use std::path::Path;

use super::model::Config;
use super::{ConfigError, ConfigErrors};

/// Every file problem at once, each with its field path.
pub fn check(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let mut readable = |path: &str, file: &Path| {
        // Read, not just stat: a file the process may not read fails here
        // rather than at the first alert or the first Redis connection.
        if let Err(e) = std::fs::read(file) {
            errors.push(ConfigError {
                path: path.into(),
                message: format!("cannot read {}: {e}", file.display()),
            });
        }
    };
    if let Some(ca) = &config.alerts.webhook_ca_file {
        readable("alerts.webhook_ca_file", ca);
    }
    if let Some(ca) = config.cache.redis.as_ref().and_then(|r| r.ca_file.as_ref()) {
        readable("cache.redis.ca_file", ca);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, extra: &str) -> Config {
        let yaml = format!(
            "upstreams: [{{ name: a, url: 'http://127.0.0.1:1', credentials: none }}]\n{extra}"
        );
        crate::config::parse(&yaml, dir).expect("valid config")
    }

    #[test]
    fn names_each_unreadable_ca_file_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let cfg = config(
            dir,
            "alerts: { webhook: 'https://hooks.example', webhook_ca_file: missing-a.pem }\n\
             cache: { redis: { url: 'rediss://127.0.0.1:6379', ca_file: missing-b.pem } }\n",
        );
        let errors = check(&cfg).unwrap_err().0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["alerts.webhook_ca_file", "cache.redis.ca_file"]);
        for (e, name) in errors.iter().zip(["missing-a.pem", "missing-b.pem"]) {
            let shown = dir.join(name).display().to_string();
            assert!(
                e.message.starts_with(&format!("cannot read {shown}: ")),
                "{e}"
            );
        }

        std::fs::write(dir.join("missing-a.pem"), "x").unwrap();
        std::fs::write(dir.join("missing-b.pem"), "x").unwrap();
        assert!(check(&cfg).is_ok());
    }

    #[test]
    fn a_config_that_names_no_such_file_passes() {
        assert!(check(&config(Path::new("/nonexistent-base"), "")).is_ok());
    }
}
