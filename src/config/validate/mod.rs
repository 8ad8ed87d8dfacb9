//! Validation: [`Config::from_file`] turns a [`FileConfig`] into the model
//! and collects every problem it finds, each with the field path it belongs
//! to, so that `graceway check` shows them all at once like `nginx -t` does.
//!
//! Pure: no file, socket or clock is touched here, so the same file gives
//! the same answer on any machine (the files it names are checked by
//! [`super::files`]). A key left out takes its value from
//! [`super::defaults`]; the default passed to each helper below is also
//! what a bad value is replaced with while the other keys are checked.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defaults::{self, upgrade_sock_beside};
use super::model::*;
use super::schema::*;
use super::units::{parse_duration, parse_size};
use super::{ConfigError, ConfigErrors};

mod cache;
mod credentials;
mod oauth2;
mod upstream;

#[cfg(test)]
mod tests;

use credentials::credentials;
use upstream::upstream;

/// Collects validation problems with their field paths.
struct Check {
    errors: Vec<ConfigError>,
    base_dir: PathBuf,
}

impl Check {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, v: &Option<Human>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(h) => parse_duration(&h.0).unwrap_or_else(|e| {
                self.err(path, e);
                default
            }),
        }
    }

    fn positive_duration(&mut self, path: &str, v: &Option<Human>, default: Duration) -> Duration {
        let d = self.duration(path, v, default);
        if d.is_zero() {
            self.err(path, "must be greater than zero");
            return default;
        }
        d
    }

    /// A duration > 0 that has no default (`None` when not set).
    fn optional_positive_duration(&mut self, path: &str, v: &Option<Human>) -> Option<Duration> {
        let h = v.as_ref()?;
        match parse_duration(&h.0) {
            Err(e) => self.err(path, e),
            Ok(d) if d.is_zero() => self.err(path, "must be greater than zero"),
            Ok(d) => return Some(d),
        }
        None
    }

    fn size(&mut self, path: &str, v: &Option<Human>, default: u64) -> u64 {
        self.optional_size(path, v).unwrap_or(default)
    }

    /// A size that has no default (`None` when not set or bad).
    fn optional_size(&mut self, path: &str, v: &Option<Human>) -> Option<u64> {
        let h = v.as_ref()?;
        parse_size(&h.0).map_err(|e| self.err(path, e)).ok()
    }

    /// An integer ≥ 1.
    fn at_least_one<T: Copy + PartialEq + From<u8>>(
        &mut self,
        path: &str,
        v: Option<T>,
        default: T,
    ) -> T {
        match v {
            None => default,
            Some(n) if n == T::from(0) => {
                self.err(path, "must be at least 1");
                default
            }
            Some(n) => n,
        }
    }

    fn addr(&mut self, path: &str, v: &Option<String>, default: SocketAddr) -> SocketAddr {
        let Some(text) = v else { return default };
        text.parse().unwrap_or_else(|_| {
            self.err(
                path,
                format!("`{text}` is not an address; write ip:port, e.g. `127.0.0.1:8080`"),
            );
            default
        })
    }

    /// Relative paths in the config are relative to the config file.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

impl Config {
    /// Validates a parsed file. `base_dir` anchors relative paths (the
    /// config file's folder).
    pub fn from_file(file: FileConfig, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let mut c = Check {
            errors: Vec::new(),
            base_dir: base_dir.to_path_buf(),
        };

        let listen = c.addr("listen", &file.listen, defaults::LISTEN);
        let admin = admin(&mut c, file.admin.unwrap_or_default());
        if admin.listen == listen {
            c.err("admin.listen", "must differ from `listen`");
        }
        let pid_file = c.path(file.pid_file.as_deref().unwrap_or(defaults::PID_FILE));
        let server = server(&mut c, file.server.unwrap_or_default(), &pid_file);

        if file.upstreams.is_empty() {
            c.err("upstreams", "at least one upstream is required");
        }
        let mut upstreams = Vec::new();
        let mut names = HashSet::new();
        let mut routes = HashSet::new();
        for (i, u) in file.upstreams.iter().enumerate() {
            let up = upstream(&mut c, &format!("upstreams[{i}]"), u);
            if !names.insert(up.name.clone()) {
                c.err(
                    format!("upstreams[{i}].name"),
                    format!("`{}` is used by an earlier upstream", up.name),
                );
            }
            if !routes.insert(up.route.clone()) {
                c.err(
                    format!("upstreams[{i}].match"),
                    "an earlier upstream has the same host and path_prefix; this one would never be used",
                );
            }
            upstreams.push(up);
        }

        let cache = cache::cache(&mut c, file.cache.unwrap_or_default());
        shared_tokens(&mut c, &upstreams, &cache);
        let mf = file.memory.unwrap_or_default();
        let memory = MemoryConfig {
            soft_limit: c
                .optional_size("memory.soft_limit", &mf.soft_limit)
                .or(MemoryConfig::default().soft_limit),
        };
        let alerts = alerts(&mut c, file.alerts.unwrap_or_default());
        let log = log_config(&mut c, file.log.unwrap_or_default());

        if c.errors.is_empty() {
            Ok(Config {
                listen,
                admin,
                pid_file,
                server,
                upstreams,
                cache,
                memory,
                alerts,
                log,
            })
        } else {
            Err(ConfigErrors(c.errors))
        }
    }
}

/// `admin`: the admin listener.
fn admin(c: &mut Check, f: FileAdmin) -> AdminConfig {
    let d = AdminConfig::default();
    AdminConfig {
        listen: c.addr("admin.listen", &f.listen, d.listen),
        token_file: f.token_file.as_deref().map(|p| c.path(p)).or(d.token_file),
        allowed_hosts: match f.allowed_hosts {
            None => d.allowed_hosts,
            Some(list) => list
                .into_iter()
                .filter_map(|h| {
                    let h = h.trim().to_ascii_lowercase();
                    if h.is_empty() || h.contains(['/', ' ', '@']) {
                        c.err(
                            "admin.allowed_hosts",
                            format!(
                                "`{h}` is not a host name (write it without scheme, path or port)"
                            ),
                        );
                        None
                    } else {
                        Some(h)
                    }
                })
                .collect(),
        },
        max_connections: c.at_least_one(
            "admin.max_connections",
            f.max_connections,
            d.max_connections,
        ),
    }
}

/// `server`: listener limits, timeouts and shutdown.
fn server(c: &mut Check, s: FileServer, pid_file: &Path) -> ServerSettings {
    let d = ServerSettings::default();
    ServerSettings {
        threads: match s.threads {
            Some(0) => {
                c.err("server.threads", "must be at least 1");
                d.threads
            }
            n => n.or(d.threads),
        },
        grace_period: c.duration("server.grace_period", &s.grace_period, d.grace_period),
        graceful_shutdown_timeout: c.duration(
            "server.graceful_shutdown_timeout",
            &s.graceful_shutdown_timeout,
            d.graceful_shutdown_timeout,
        ),
        client_keepalive_timeout: c.positive_duration(
            "server.client_keepalive_timeout",
            &s.client_keepalive_timeout,
            d.client_keepalive_timeout,
        ),
        max_request_header_bytes: c.size(
            "server.max_request_header_bytes",
            &s.max_request_header_bytes,
            d.max_request_header_bytes as u64,
        ) as usize,
        max_request_body_bytes: c.size(
            "server.max_request_body_bytes",
            &s.max_request_body_bytes,
            d.max_request_body_bytes,
        ),
        request_header_timeout: c.positive_duration(
            "server.request_header_timeout",
            &s.request_header_timeout,
            d.request_header_timeout,
        ),
        client_body_timeout: c.positive_duration(
            "server.client_body_timeout",
            &s.client_body_timeout,
            d.client_body_timeout,
        ),
        max_connections: match s.max_connections {
            Some(0) => {
                c.err("server.max_connections", "must be at least 1");
                d.max_connections
            }
            n => n.or(d.max_connections),
        },
        upgrade_sock: match &s.upgrade_sock {
            Some(p) => c.path(p),
            None => upgrade_sock_beside(pid_file),
        },
        h2c: s.h2c.unwrap_or(d.h2c),
    }
}

/// `alerts`: the webhook. Its CA file is read in [`super::files`].
fn alerts(c: &mut Check, af: FileAlerts) -> AlertsConfig {
    let d = AlertsConfig::default();
    let alerts = AlertsConfig {
        webhook: af.webhook.or(d.webhook),
        webhook_ca_file: af
            .webhook_ca_file
            .as_deref()
            .map(|p| c.path(p))
            .or(d.webhook_ca_file),
    };
    if let Some(w) = &alerts.webhook {
        let base = w
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)));
        if let Err(e) = base
            .ok_or_else(|| format!("`{w}` is not a URL"))
            .and_then(|b| parse_url(&b))
        {
            c.err("alerts.webhook", e);
        }
    }
    if alerts.webhook_ca_file.is_some() && alerts.webhook.is_none() {
        c.err(
            "alerts.webhook_ca_file",
            "is set but `alerts.webhook` is not",
        );
    }
    alerts
}

/// `log`: level, access log and its format.
fn log_config(c: &mut Check, lf: FileLog) -> LogConfig {
    let d = LogConfig::default();
    LogConfig {
        level: match lf.level.as_deref().map(str::parse) {
            None => d.level,
            Some(Ok(l)) => l,
            Some(Err(_)) => {
                c.err(
                    "log.level",
                    "must be one of off, error, warn, info, debug, trace",
                );
                d.level
            }
        },
        access: lf.access.unwrap_or(d.access),
        format: match lf.format.as_deref() {
            None => d.format,
            Some("plain") => LogFormat::Plain,
            Some("json") => LogFormat::Json,
            Some(other) => {
                c.err(
                    "log.format",
                    format!("`{other}`: must be `plain` or `json`"),
                );
                d.format
            }
        },
    }
}

/// `tls` of an upstream or of an OAuth2 token endpoint.
fn tls_settings(c: &Check, t: Option<&FileTls>) -> TlsSettings {
    let d = TlsSettings::default();
    TlsSettings {
        ca_file: t
            .and_then(|t| t.ca_file.as_deref())
            .map(|p| c.path(p))
            .or(d.ca_file),
        verify: t.and_then(|t| t.verify).unwrap_or(d.verify),
    }
}

/// `methods:`: HTTP method tokens; TRACE (it echoes the injected token
/// back) and CONNECT (a tunnel, not a request) are never forwarded.
fn methods(c: &mut Check, at: &str, list: Option<&[String]>) -> Vec<http::Method> {
    let Some(list) = list else {
        return defaults::METHODS.to_vec();
    };
    if list.is_empty() {
        c.err(at, "must name at least one method");
    }
    let mut out: Vec<http::Method> = Vec::new();
    for (j, m) in list.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if upper == "TRACE" || upper == "CONNECT" {
            c.err(
                format!("{at}[{j}]"),
                format!("`{m}` is never forwarded: TRACE would echo the injected token, CONNECT opens a tunnel"),
            );
            continue;
        }
        match http::Method::from_bytes(m.as_bytes()) {
            Ok(method)
                if m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                if !out.contains(&method) {
                    out.push(method);
                }
            }
            _ => c.err(
                format!("{at}[{j}]"),
                format!("`{m}` is not an HTTP method name"),
            ),
        }
    }
    out
}

/// `oauth2.share` needs the fleet tier and the key that seals the token
/// there: without `cache.redis.secret_file` the token would sit in Redis
/// in clear, so the config is refused instead.
fn shared_tokens(c: &mut Check, upstreams: &[UpstreamConfig], cache: &CacheConfig) {
    let sealed = cache
        .redis
        .as_ref()
        .is_some_and(|r| r.secret_file.is_some());
    if sealed {
        return;
    }
    for (i, u) in upstreams.iter().enumerate() {
        let tokens = u.credentials.iter().flat_map(|cr| cr.tokens.iter());
        for (j, t) in tokens.enumerate() {
            if matches!(&t.source, SourceSpec::OAuth2(o) if o.share) {
                c.err(
                    format!("upstreams[{i}].credentials.tokens[{j}].oauth2.share"),
                    if cache.redis.is_none() {
                        "needs `cache.redis` (the fleet tier the token is shared through) and `cache.redis.secret_file` (the key that seals it there)"
                    } else {
                        "needs `cache.redis.secret_file`: a shared token is stored sealed, never in clear"
                    },
                );
            }
        }
    }
}

/// `scheme://host[:port][/]`. A path, query, or user info is refused: the
/// request path is forwarded unchanged and credentials come from `tokens`.
pub fn parse_url(s: &str) -> Result<UpstreamUrl, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL ({e})"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{s}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{s}` must not carry user info; put credentials in `credentials.tokens`"
        ));
    }
    let raw_host = authority.host();
    if raw_host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    let path = uri.path();
    if (path != "/" && !path.is_empty()) || uri.query().is_some() {
        return Err(format!(
            "`{s}` must not have a path or query; graceway forwards the request path unchanged"
        ));
    }
    let host = raw_host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let default_port = if tls { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let host_header = if port == default_port {
        raw_host.to_string()
    } else {
        format!("{raw_host}:{port}")
    };
    Ok(UpstreamUrl {
        tls,
        host,
        port,
        host_header,
        original: s.to_string(),
    })
}
