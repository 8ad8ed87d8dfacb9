//! The second stage of loading a config: the files it names that nothing
//! else reads before they are needed (the webhook's and Redis's CA
//! bundles, and the key that seals shared OAuth2 tokens, which is parsed
//! here too: [`share_key`]). Validation ([`super::validate`]) does no I/O, so that `check
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
    if let Some(key) = config
        .cache
        .redis
        .as_ref()
        .and_then(|r| r.secret_file.as_ref())
    {
        if let Err(message) = share_key(key) {
            errors.push(ConfigError {
                path: "cache.redis.secret_file".into(),
                message,
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The most a key file may hold: 64 hex characters and some whitespace.
const KEY_FILE_LIMIT: u64 = 1024;

/// The key in `cache.redis.secret_file`: 32 bytes written as 64 hex
/// characters (`openssl rand -hex 32`), surrounding whitespace ignored.
/// An error names the file and what is wrong, never what it holds.
pub fn share_key(file: &Path) -> Result<[u8; 32], String> {
    use std::io::Read;
    let shape = || {
        format!(
            "{} must hold 32 bytes as 64 hex characters (make one with `openssl rand -hex 32`)",
            file.display()
        )
    };
    let mut text = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(KEY_FILE_LIMIT + 1).read_to_end(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if text.len() as u64 > KEY_FILE_LIMIT {
        return Err(shape());
    }
    let hex = text.trim_ascii();
    if hex.len() != 64 {
        return Err(shape());
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut key = [0u8; 32];
    for (out, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => *out = h << 4 | l,
            _ => return Err(shape()),
        }
    }
    Ok(key)
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
    fn the_share_key_is_64_hex_characters_and_an_error_never_shows_the_content() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("key");
        let hex = "00112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100";
        std::fs::write(&file, format!("  {hex}\n")).unwrap();
        let key = share_key(&file).unwrap();
        assert_eq!(key[..3], [0x00, 0x11, 0x22]);
        assert_eq!(key[31], 0x00);
        assert_eq!(key[16..18], [0xff, 0xee]);
        let secretish = "zz112233445566778899aabbccddeeffffeeddccbbaa99887766554433221100";
        for bad in [
            &hex[..62],
            &format!("{hex}00"),
            secretish,
            &format!("{} {}", &hex[..32], &hex[32..]),
            "",
            &"a".repeat(2000),
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = share_key(&file).unwrap_err();
            assert!(e.contains(&file.display().to_string()), "{e}");
            assert!(e.contains("64 hex characters"), "{e}");
            assert!(!e.contains("112233"), "the content is never shown: {e}");
        }
        let missing = tmp.path().join("missing");
        let e = share_key(&missing).unwrap_err();
        assert!(
            e.starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        // The config's stage 2 names the key's field.
        let cfg = config(
            tmp.path(),
            "cache: { redis: { url: 'redis://127.0.0.1:6379', secret_file: missing } }\n",
        );
        let errors = check(&cfg).unwrap_err().0;
        assert_eq!(errors[0].path, "cache.redis.secret_file");
        std::fs::write(&missing, hex).unwrap();
        assert!(check(&cfg).is_ok());
    }

    #[test]
    fn a_config_that_names_no_such_file_passes() {
        assert!(check(&config(Path::new("/nonexistent-base"), "")).is_ok());
    }
}
