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

fn upstream(c: &mut Check, at: &str, u: &FileUpstream) -> UpstreamConfig {
    let name = match &u.name {
        None => {
            c.err(format!("{at}.name"), "is required");
            String::new()
        }
        Some(n) => {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                c.err(
                    format!("{at}.name"),
                    format!("`{n}`: use 1-64 characters from a-z, A-Z, 0-9, `-`, `_`, `.`"),
                );
            }
            n.clone()
        }
    };

    let url = match &u.url {
        None => {
            c.err(format!("{at}.url"), "is required");
            None
        }
        Some(s) => match parse_url(s) {
            Ok(url) => Some(url),
            Err(e) => {
                c.err(format!("{at}.url"), e);
                None
            }
        },
    }
    .unwrap_or(UpstreamUrl {
        tls: false,
        host: String::new(),
        port: 0,
        host_header: String::new(),
        original: String::new(),
    });

    let m = u.route.as_ref();
    let path_prefix = m
        .and_then(|m| m.path_prefix.clone())
        .unwrap_or_else(|| "/".into());
    if !path_prefix.starts_with('/') {
        c.err(
            format!("{at}.match.path_prefix"),
            format!("`{path_prefix}` must start with `/`"),
        );
    }
    let host = m
        .and_then(|m| m.host.as_ref())
        .map(|h| h.to_ascii_lowercase());
    if let Some(h) = &host {
        if h.is_empty() || h.contains(['/', ' ', ':']) {
            c.err(
                format!("{at}.match.host"),
                format!("`{h}` must be a bare host name, without scheme, port or path"),
            );
        }
    }
    let route = RouteMatch { host, path_prefix };

    let t = u.timeouts.as_ref();
    let timeouts = Timeouts {
        connect: c.positive_duration(
            &format!("{at}.timeouts.connect"),
            &t.and_then(|t| t.connect.clone()),
            Duration::from_secs(2),
        ),
        read: c.positive_duration(
            &format!("{at}.timeouts.read"),
            &t.and_then(|t| t.read.clone()),
            Duration::from_secs(10),
        ),
        write: c.positive_duration(
            &format!("{at}.timeouts.write"),
            &t.and_then(|t| t.write.clone()),
            Duration::from_secs(10),
        ),
        stream_idle: c.positive_duration(
            &format!("{at}.timeouts.stream_idle"),
            &t.and_then(|t| t.stream_idle.clone()),
            Duration::from_secs(300),
        ),
    };

    let tls_file = u.tls.as_ref();
    let tls = TlsSettings {
        ca_file: tls_file
            .and_then(|t| t.ca_file.as_deref())
            .map(|p| c.path(p)),
        verify: tls_file.and_then(|t| t.verify).unwrap_or(true),
    };
    if (tls.ca_file.is_some() || !tls.verify) && !url.tls && !url.original.is_empty() {
        c.err(
            format!("{at}.tls"),
            "is set but the url is http://; use https:// or remove `tls`",
        );
    }
    if let Some(ca) = &tls.ca_file {
        if let Err(e) = std::fs::metadata(ca) {
            c.err(
                format!("{at}.tls.ca_file"),
                format!("cannot read {}: {e}", ca.display()),
            );
        }
    }

    let credentials = match &u.credentials {
        None => {
            c.err(
                format!("{at}.credentials"),
                "is required: list the tokens, or write `credentials: none` for an upstream that needs no token",
            );
            None
        }
        Some(FileCredentialsField::None) => None,
        Some(FileCredentialsField::Tokens(cr)) => {
            Some(credentials(c, &format!("{at}.credentials"), cr))
        }
    };

    let h = u.health.as_ref();
    let health = HealthPolicy {
        open_after: match h.and_then(|h| h.open_after) {
            Some(0) => {
                c.err(format!("{at}.health.open_after"), "must be at least 1");
                5
            }
            Some(n) => n,
            None => 5,
        },
        retry_after: c.positive_duration(
            &format!("{at}.health.retry_after"),
            &h.and_then(|h| h.retry_after.clone()),
            Duration::from_secs(1),
        ),
        max_retry_after: c.positive_duration(
            &format!("{at}.health.max_retry_after"),
            &h.and_then(|h| h.max_retry_after.clone()),
            Duration::from_secs(30),
        ),
    };
    if health.max_retry_after < health.retry_after {
        c.err(
            format!("{at}.health.max_retry_after"),
            "must not be shorter than retry_after",
        );
    }

    let st = u.stale.as_ref();
    let on = match st.and_then(|s| s.on.as_ref()) {
        None => StaleTriggers {
            s401: true,
            s403: true,
            s429: true,
            s5xx: true,
            timeout: true,
            connect_error: true,
            token_unavailable: true,
        },
        Some(list) => {
            let mut on = StaleTriggers::default();
            for (j, item) in list.iter().enumerate() {
                match item.as_str() {
                    "401" => on.s401 = true,
                    "403" => on.s403 = true,
                    "429" => on.s429 = true,
                    "5xx" => on.s5xx = true,
                    "timeout" => on.timeout = true,
                    "connect_error" => on.connect_error = true,
                    "token_unavailable" => on.token_unavailable = true,
                    other => c.err(
                        format!("{at}.stale.on[{j}]"),
                        format!(
                            "`{other}`: must be one of 401, 403, 429, 5xx, timeout, connect_error, token_unavailable"
                        ),
                    ),
                }
            }
            on
        }
    };
    let stale = StalePolicy {
        on,
        max_stale: c.positive_duration(
            &format!("{at}.stale.max_stale"),
            &st.and_then(|s| s.max_stale.clone()),
            Duration::from_secs(24 * 3600),
        ),
        warning_header: st.and_then(|s| s.warning_header).unwrap_or(false),
        honor_origin_directives: match st.and_then(|s| s.origin_directives.as_deref()) {
            None | Some("honor") => true,
            Some("ignore") => false,
            Some(other) => {
                c.err(
                    format!("{at}.stale.origin_directives"),
                    format!("`{other}`: must be `honor` or `ignore`"),
                );
                true
            }
        },
        scrub_bodies: st.and_then(|s| s.scrub_bodies).unwrap_or(false),
    };

    let methods = methods(c, &format!("{at}.methods"), u.methods.as_deref());

    let dns_refresh = c.duration(
        &format!("{at}.dns_refresh"),
        &u.dns_refresh,
        Duration::from_secs(30),
    );

    let upgrade = u
        .upgrade
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| {
            let p = p.trim().to_ascii_lowercase();
            let token = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
            if token {
                Some(p)
            } else {
                c.err(
                    format!("{at}.upgrade[{i}]"),
                    "must be a protocol name such as `websocket`",
                );
                None
            }
        })
        .collect();

    UpstreamConfig {
        dns_refresh,
        methods,
        upgrade,
        stream: u.stream.unwrap_or(false),
        name,
        url,
        route,
        timeouts,
        tls,
        credentials,
        health,
        stale,
    }
}

fn credentials(c: &mut Check, at: &str, cr: &FileCredentials) -> Credentials {
    let inj = cr.inject.as_ref();
    let inject = match inj {
        Some(FileInject {
            query: Some(q),
            header: None,
            prefix: None,
        }) => {
            if q.is_empty()
                || !q
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
            {
                c.err(
                    format!("{at}.inject.query"),
                    format!("`{q}` is not a plain query parameter name"),
                );
            }
            Injection::Query { param: q.clone() }
        }
        Some(FileInject { query: Some(_), .. }) => {
            c.err(
                format!("{at}.inject"),
                "set either `header` (with optional `prefix`) or `query`, not both",
            );
            Injection::Query {
                param: String::new(),
            }
        }
        other => {
            let name = other
                .and_then(|i| i.header.clone())
                .unwrap_or_else(|| "Authorization".into());
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                c.err(
                    format!("{at}.inject.header"),
                    format!("`{name}` is not a valid header name"),
                );
            } else if is_reserved_header(&name) {
                c.err(
                    format!("{at}.inject.header"),
                    format!("`{name}` is a hop-by-hop or framing header and cannot carry a token"),
                );
            }
            let prefix = other.and_then(|i| i.prefix.clone()).unwrap_or_else(|| {
                if name.eq_ignore_ascii_case("authorization") {
                    "Bearer ".into()
                } else {
                    String::new()
                }
            });
            if prefix.bytes().any(|b| b.is_ascii_control()) {
                c.err(
                    format!("{at}.inject.prefix"),
                    "must not contain control characters",
                );
            }
            Injection::Header { name, prefix }
        }
    };

    if cr.tokens.is_empty() {
        c.err(
            format!("{at}.tokens"),
            "at least one token source is required",
        );
    }
    let mut tokens = Vec::new();
    for (i, t) in cr.tokens.iter().enumerate() {
        let tat = format!("{at}.tokens[{i}]");
        let set = [
            t.file.is_some(),
            t.env.is_some(),
            t.command.is_some(),
            t.oauth2.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            c.err(
                &tat,
                "set exactly one of `file`, `env`, `command` or `oauth2`",
            );
            continue;
        }
        if t.command.is_none() && (t.refresh.is_some() || t.timeout.is_some()) {
            c.err(
                &tat,
                "`refresh` and `timeout` apply to `command` sources only",
            );
        }
        let source = if let Some(f) = &t.file {
            if f.is_empty() {
                c.err(format!("{tat}.file"), "must not be empty");
            }
            SourceSpec::File(c.path(f))
        } else if let Some(o) = &t.oauth2 {
            match oauth2(c, &format!("{tat}.oauth2"), o) {
                Some(spec) => SourceSpec::OAuth2(Box::new(spec)),
                None => continue,
            }
        } else if let Some(e) = &t.env {
            if e.is_empty() || e.contains('=') || e.contains('\0') {
                c.err(format!("{tat}.env"), "is not a valid variable name");
            }
            SourceSpec::Env(e.clone())
        } else {
            let argv = t.command.clone().unwrap_or_default();
            if argv.is_empty() || argv[0].is_empty() {
                c.err(
                    format!("{tat}.command"),
                    "must name a program: [\"program\", \"arg\", ...]",
                );
            }
            let refresh = t.refresh.as_ref().map(|_| {
                c.positive_duration(
                    &format!("{tat}.refresh"),
                    &t.refresh,
                    Duration::from_secs(900),
                )
            });
            if let Some(r) = refresh {
                if r < Duration::from_secs(1) {
                    c.err(format!("{tat}.refresh"), "must be at least 1s");
                }
            }
            SourceSpec::Command {
                argv: if argv.is_empty() {
                    vec![String::new()]
                } else {
                    argv
                },
                refresh,
                timeout: c.positive_duration(
                    &format!("{tat}.timeout"),
                    &t.timeout,
                    Duration::from_secs(10),
                ),
            }
        };
        let expires_at =
            t.expires_at
                .as_ref()
                .and_then(|s| match humantime::parse_rfc3339_weak(s) {
                    Ok(ts) => Some(ts),
                    Err(_) => {
                        c.err(
                            format!("{tat}.expires_at"),
                            format!("`{s}` is not a timestamp; write e.g. `2026-12-31T23:59:59Z`"),
                        );
                        None
                    }
                });
        tokens.push(TokenSpec { source, expires_at });
    }

    let probe = cr.probe.as_ref().map(|p| {
        let path = p.path.clone().unwrap_or_default();
        if !path.starts_with('/') {
            c.err(
                format!("{at}.probe.path"),
                "is required and must start with `/`",
            );
        }
        ProbeSpec {
            path,
            interval: c.positive_duration(
                &format!("{at}.probe.interval"),
                &p.interval,
                Duration::from_secs(60),
            ),
        }
    });
    let preflight = cr.preflight.unwrap_or(false);
    if preflight && probe.is_none() {
        c.err(
            format!("{at}.preflight"),
            "needs `probe`: the new token is tried with the probe request before it is swapped in",
        );
    }

    let failover_on = match &cr.failover_on {
        None => FailoverOn::default(),
        Some(list) => {
            let mut on = FailoverOn {
                s401: false,
                s403: false,
                s429: false,
            };
            for (j, v) in list.iter().enumerate() {
                match v.0.trim() {
                    "401" => on.s401 = true,
                    "403" => on.s403 = true,
                    "429" => on.s429 = true,
                    other => c.err(
                        format!("{at}.failover_on[{j}]"),
                        format!("`{other}`: must be one of 401, 403, 429"),
                    ),
                }
            }
            on
        }
    };
    if tokens.len() > MAX_TOKENS {
        c.err(
            format!("{at}.tokens"),
            format!("{} tokens: at most {MAX_TOKENS} per upstream", tokens.len()),
        );
    }

    let suspect_after = match cr.suspect_after {
        None => 3,
        Some(0) => {
            c.err(format!("{at}.suspect_after"), "must be at least 1");
            3
        }
        Some(n) => n,
    };
    Credentials {
        failover_on,
        suspect_after,
        inject,
        tokens,
        expires_warning: c.duration(
            &format!("{at}.expires_warning"),
            &cr.expires_warning,
            Duration::from_secs(72 * 3600),
        ),
        probe,
        preflight,
    }
}

/// Headers a token may not be injected into: hop-by-hop and framing.
fn is_reserved_header(name: &str) -> bool {
    is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length")
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

fn credential(
    c: &mut Check,
    at: &str,
    what: &str,
    literal: Option<&String>,
    env: Option<&String>,
    file: Option<&String>,
) -> Option<CredentialSource> {
    let n =
        usize::from(literal.is_some()) + usize::from(env.is_some()) + usize::from(file.is_some());
    if n != 1 {
        let options = if what == "client_id" {
            format!("`{what}`, `{what}_env` or `{what}_file`")
        } else {
            format!("`{what}_env` or `{what}_file`")
        };
        c.err(at, format!("set exactly one of {options}"));
        return None;
    }
    match (literal, env, file) {
        (Some(l), _, _) => Some(CredentialSource::Literal(l.clone())),
        (_, Some(e), _) => Some(CredentialSource::Env(e.clone())),
        (_, _, Some(f)) => Some(CredentialSource::File(c.path(f))),
        _ => None,
    }
}

fn oauth2(c: &mut Check, at: &str, o: &FileOAuth2) -> Option<OAuth2Spec> {
    let errors_before = c.errors.len();
    let url = o.token_url.clone().unwrap_or_default();
    let parsed = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    let Some(uri) = parsed else {
        c.err(
            format!("{at}.token_url"),
            "is required: the https:// URL of the token endpoint",
        );
        return None;
    };
    let base = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map_or("", |a| a.as_str())
    );
    let endpoint = match parse_url(&base) {
        Ok(e) => e,
        Err(e) => {
            c.err(format!("{at}.token_url"), e);
            return None;
        }
    };
    let path_and_query = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let client_id = credential(
        c,
        &format!("{at}.client_id"),
        "client_id",
        o.client_id.as_ref(),
        o.client_id_env.as_ref(),
        o.client_id_file.as_ref(),
    );
    let client_secret = credential(
        c,
        &format!("{at}.client_secret"),
        "client_secret",
        None,
        o.client_secret_env.as_ref(),
        o.client_secret_file.as_ref(),
    );
    let client_auth = match o.client_auth.as_deref() {
        None | Some("basic") => ClientAuth::Basic,
        Some("body") => ClientAuth::Body,
        Some(other) => {
            c.err(
                format!("{at}.client_auth"),
                format!("`{other}`: must be `basic` or `body`"),
            );
            ClientAuth::Basic
        }
    };
    let refresh_fraction = o.refresh_fraction.unwrap_or(0.8);
    if !(0.1..=0.95).contains(&refresh_fraction) {
        c.err(
            format!("{at}.refresh_fraction"),
            "must be between 0.1 and 0.95",
        );
    }
    let timeout = c.positive_duration(
        &format!("{at}.timeout"),
        &o.timeout,
        Duration::from_secs(10),
    );
    let max_retry = c.positive_duration(
        &format!("{at}.max_retry"),
        &o.max_retry,
        Duration::from_secs(4),
    );
    let tls = o.tls.as_ref();
    if c.errors.len() > errors_before {
        return None;
    }
    Some(OAuth2Spec {
        token_url: url,
        endpoint,
        path_and_query,
        client_id: client_id?,
        client_secret: client_secret?,
        scope: o.scope.clone(),
        audience: o.audience.clone(),
        client_auth,
        refresh_fraction,
        timeout,
        max_retry,
        ca_file: tls.and_then(|t| t.ca_file.as_deref()).map(|p| c.path(p)),
        verify: tls.and_then(|t| t.verify).unwrap_or(true),
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
