//! Validation: [`Config::from_file`] turns a [`FileConfig`] into the model
//! and collects every problem it finds, each with the field path it belongs
//! to, so that `graceway check` shows them all at once like `nginx -t` does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::*;
use super::schema::*;
use super::units::{parse_duration, parse_size};
use super::{ConfigError, ConfigErrors};

mod credentials;
mod upstream;

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

    fn size(&mut self, path: &str, v: &Option<Human>, default: u64) -> u64 {
        match v {
            None => default,
            Some(h) => parse_size(&h.0).unwrap_or_else(|e| {
                self.err(path, e);
                default
            }),
        }
    }

    fn addr(&mut self, path: &str, v: &Option<String>, default: &str) -> SocketAddr {
        let text = v.as_deref().unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.err(
                path,
                format!("`{text}` is not an address; write ip:port, e.g. `127.0.0.1:8080`"),
            );
            default.parse().expect("default address parses")
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

        let listen = c.addr("listen", &file.listen, "0.0.0.0:8080");
        let admin_file = file.admin.unwrap_or_default();
        let admin = AdminConfig {
            listen: c.addr("admin.listen", &admin_file.listen, "127.0.0.1:9180"),
            token_file: admin_file.token_file.as_deref().map(|p| c.path(p)),
            allowed_hosts: admin_file
                .allowed_hosts
                .unwrap_or_default()
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
            max_connections: match admin_file.max_connections {
                Some(0) => {
                    c.err("admin.max_connections", "must be at least 1");
                    64
                }
                Some(n) => n,
                None => 64,
            },
        };
        if admin.listen == listen {
            c.err("admin.listen", "must differ from `listen`");
        }
        let pid_file = c.path(file.pid_file.as_deref().unwrap_or("/run/graceway.pid"));

        let s = file.server.unwrap_or_default();
        let threads = match s.threads {
            Some(0) => {
                c.err("server.threads", "must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let server = ServerSettings {
            threads,
            grace_period: c.duration("server.grace_period", &s.grace_period, Duration::ZERO),
            graceful_shutdown_timeout: c.duration(
                "server.graceful_shutdown_timeout",
                &s.graceful_shutdown_timeout,
                Duration::from_secs(25),
            ),
            client_keepalive_timeout: c.positive_duration(
                "server.client_keepalive_timeout",
                &s.client_keepalive_timeout,
                Duration::from_secs(60),
            ),
            max_request_header_bytes: c.size(
                "server.max_request_header_bytes",
                &s.max_request_header_bytes,
                64 << 10,
            ) as usize,
            max_request_body_bytes: c.size(
                "server.max_request_body_bytes",
                &s.max_request_body_bytes,
                10 << 20,
            ),
            request_header_timeout: c.positive_duration(
                "server.request_header_timeout",
                &s.request_header_timeout,
                Duration::from_secs(10),
            ),
            client_body_timeout: c.positive_duration(
                "server.client_body_timeout",
                &s.client_body_timeout,
                Duration::from_secs(10),
            ),
            max_connections: match s.max_connections {
                Some(0) => {
                    c.err("server.max_connections", "must be at least 1");
                    None
                }
                n => n,
            },
            upgrade_sock: match &s.upgrade_sock {
                Some(p) => c.path(p),
                None => pid_file.with_extension("upgrade.sock"),
            },
        };

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

        let cf = file.cache.unwrap_or_default();
        let cache = CacheConfig {
            memory_bytes: c.size("cache.memory_bytes", &cf.memory_bytes, 64 << 20),
            max_object_bytes: c.size("cache.max_object_bytes", &cf.max_object_bytes, 1 << 20),
            persist_path: match cf.persist {
                None => None,
                Some(FilePersist { path: Some(p) }) => Some(c.path(&p)),
                Some(FilePersist { path: None }) => {
                    c.err("cache.persist.path", "is required when `persist` is set");
                    None
                }
            },
            redis: cf.redis.map(|r| redis_config(&mut c, r)),
            sensitive_query: match cf.sensitive_query {
                None => SENSITIVE_QUERY.iter().map(|s| s.to_string()).collect(),
                Some(list) => list
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, n)| {
                        let n = n.trim().to_ascii_lowercase();
                        if n.is_empty() || n.contains(['&', '=', '?', '#']) {
                            c.err(
                                format!("cache.sensitive_query[{i}]"),
                                "must be a query parameter name",
                            );
                            None
                        } else {
                            Some(n)
                        }
                    })
                    .collect(),
            },
        };
        if cache.max_object_bytes > cache.memory_bytes {
            c.err(
                "cache.max_object_bytes",
                "must not exceed cache.memory_bytes",
            );
        }
        if cache.max_object_bytes > u32::MAX as u64 / 2 {
            c.err("cache.max_object_bytes", "must be below 2GiB");
        }

        let mf = file.memory.unwrap_or_default();
        let memory = MemoryConfig {
            soft_limit: mf
                .soft_limit
                .as_ref()
                .map(|_| c.size("memory.soft_limit", &mf.soft_limit, 0)),
        };
        let af = file.alerts.unwrap_or_default();
        let alerts = AlertsConfig {
            webhook: af.webhook,
            webhook_ca_file: af.webhook_ca_file.as_deref().map(|p| c.path(p)),
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
        if let Some(ca) = &alerts.webhook_ca_file {
            if alerts.webhook.is_none() {
                c.err(
                    "alerts.webhook_ca_file",
                    "is set but `alerts.webhook` is not",
                );
            } else if let Err(e) = std::fs::metadata(ca) {
                c.err(
                    "alerts.webhook_ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                );
            }
        }
        let lf = file.log.unwrap_or_default();
        let log = LogConfig {
            level: match lf.level.as_deref().unwrap_or("info").parse() {
                Ok(l) => l,
                Err(_) => {
                    c.err(
                        "log.level",
                        "must be one of off, error, warn, info, debug, trace",
                    );
                    log::LevelFilter::Info
                }
            },
            access: lf.access.unwrap_or(false),
            format: match lf.format.as_deref().unwrap_or("plain") {
                "plain" => LogFormat::Plain,
                "json" => LogFormat::Json,
                other => {
                    c.err(
                        "log.format",
                        format!("`{other}`: must be `plain` or `json`"),
                    );
                    LogFormat::Plain
                }
            },
        };

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

/// `methods:`: HTTP method tokens; TRACE (it echoes the injected token
/// back) and CONNECT (a tunnel, not a request) are never forwarded.
fn methods(c: &mut Check, at: &str, list: Option<&[String]>) -> Vec<http::Method> {
    let Some(list) = list else {
        return DEFAULT_METHODS
            .iter()
            .map(|m| http::Method::from_bytes(m.as_bytes()).expect("standard method"))
            .collect();
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

/// `cache.redis`: exactly one of `url` and `cluster`, every URL parsed by
/// the Redis client itself (scheme, user, password, database number).
fn redis_config(c: &mut Check, r: FileRedis) -> RedisConfig {
    let check_url = |c: &mut Check, path: String, u: &str| {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            c.err(
                path,
                format!(
                    "`{}` must start with redis:// or rediss://",
                    RedisTarget::Single(u.into()).redacted()
                ),
            );
        } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(u) {
            c.err(
                path,
                format!("`{}`: {e}", RedisTarget::Single(u.into()).redacted()),
            );
        }
    };
    let target = match (r.url, r.cluster) {
        (Some(u), None) => {
            check_url(c, "cache.redis.url".into(), &u);
            RedisTarget::Single(u)
        }
        (None, Some(nodes)) => {
            if nodes.is_empty() {
                c.err("cache.redis.cluster", "must list at least one node");
            }
            for (i, u) in nodes.iter().enumerate() {
                check_url(c, format!("cache.redis.cluster[{i}]"), u);
            }
            RedisTarget::Cluster(nodes)
        }
        (Some(_), Some(_)) => {
            c.err("cache.redis", "set either `url` or `cluster`, not both");
            RedisTarget::Single(String::new())
        }
        (None, None) => {
            c.err(
                "cache.redis",
                "`url` (one server) or `cluster` (seed nodes) is required",
            );
            RedisTarget::Single(String::new())
        }
    };
    let key_prefix = r.key_prefix.unwrap_or_else(|| "graceway:".into());
    if key_prefix.len() > 64
        || key_prefix
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ')
    {
        c.err(
            "cache.redis.key_prefix",
            "at most 64 characters, no spaces or control characters",
        );
    }
    let ca_file = r.ca_file.as_deref().map(|p| c.path(p));
    if let Some(ca) = &ca_file {
        if let Err(e) = std::fs::read(ca) {
            c.err(
                "cache.redis.ca_file",
                format!("cannot read {}: {e}", ca.display()),
            );
        }
    }
    RedisConfig {
        target,
        timeout: c.positive_duration("cache.redis.timeout", &r.timeout, Duration::from_millis(50)),
        key_prefix,
        ca_file,
        queue: match r.queue {
            Some(0) => {
                c.err("cache.redis.queue", "must be at least 1");
                1024
            }
            Some(n) => n,
            None => 1024,
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://api.emoji.example").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("api.emoji.example", 443));
        assert_eq!(u.host_header, "api.emoji.example");
        let u = parse_url("http://127.0.0.1:8081/").unwrap();
        assert_eq!(u.host_header, "127.0.0.1:8081");
        let u = parse_url("http://[::1]:9000").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.host_header, "[::1]:9000");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://x/v1").is_err());
        assert!(parse_url("http://user:pw@x").is_err());
        assert!(parse_url("api.example").is_err());
    }
}
