//! Every default of the config, written once: what a key means when the
//! file leaves it out.
//!
//! A section whose keys all have a default gets an `impl Default` on its
//! model type ([`ServerSettings::default`] is what `server:` left out
//! means); a section with a required key (an upstream's `url`, a token
//! list, a probe's `path`, an OAuth2 `token_url`, a Redis URL) has no
//! config default as a whole, so its other defaults are the consts below.
//! Validation ([`super::validate`]) and the rest of graceway read them from
//! here, and a unit test checks `docs/configuration.md` against them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::*;

/// `listen`.
pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);
/// `pid_file`.
pub const PID_FILE: &str = "/run/graceway.pid";

/// `server.upgrade_sock`: beside the pid file, so two instances with their
/// own pid files never share a socket.
pub fn upgrade_sock_beside(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("upgrade.sock")
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180),
            token_file: None,
            allowed_hosts: Vec::new(),
            max_connections: 64,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: None,
            grace_period: Duration::ZERO,
            graceful_shutdown_timeout: Duration::from_secs(25),
            client_keepalive_timeout: Duration::from_secs(60),
            max_request_header_bytes: 64 << 10,
            max_request_body_bytes: 10 << 20,
            request_header_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(10),
            max_connections: None,
            upgrade_sock: upgrade_sock_beside(Path::new(PID_FILE)),
            h2c: false,
        }
    }
}

/// `upstreams[].methods`.
pub const METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::PATCH,
    http::Method::DELETE,
    http::Method::OPTIONS,
];
/// `upstreams[].dns_refresh`.
pub const DNS_REFRESH: Duration = Duration::from_secs(30);
/// `upstreams[].stream`.
pub const STREAM: bool = false;

impl Default for RouteMatch {
    /// Every request, whatever its host.
    fn default() -> Self {
        RouteMatch {
            host: None,
            path_prefix: "/".into(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(10),
            write: Duration::from_secs(10),
            stream_idle: Duration::from_secs(300),
        }
    }
}

impl Default for TlsSettings {
    /// The system roots, verified (also an OAuth2 endpoint's `tls`).
    fn default() -> Self {
        TlsSettings {
            ca_file: None,
            verify: true,
        }
    }
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            open_after: 5,
            retry_after: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl StaleTriggers {
    /// Nothing is answered from the cache: where a `stale.on` list starts.
    pub const NONE: StaleTriggers = StaleTriggers {
        s401: false,
        s403: false,
        s429: false,
        s5xx: false,
        timeout: false,
        connect_error: false,
        token_unavailable: false,
    };
}

impl Default for StaleTriggers {
    /// All seven: every outcome may be answered from the cache.
    fn default() -> Self {
        StaleTriggers {
            s401: true,
            s403: true,
            s429: true,
            s5xx: true,
            timeout: true,
            connect_error: true,
            token_unavailable: true,
        }
    }
}

impl Default for StalePolicy {
    fn default() -> Self {
        StalePolicy {
            on: StaleTriggers::default(),
            max_stale: Duration::from_secs(24 * 3600),
            warning_header: false,
            honor_origin_directives: true,
            scrub_bodies: false,
        }
    }
}

/// `credentials.inject.header`.
pub const INJECT_HEADER: &str = "Authorization";

impl Injection {
    /// `credentials.inject.prefix` when not set: `Bearer ` for
    /// `Authorization` (RFC 6750), nothing for any other header.
    pub fn default_prefix(header: &str) -> &'static str {
        if header.eq_ignore_ascii_case("authorization") {
            "Bearer "
        } else {
            ""
        }
    }
}

impl Default for Injection {
    fn default() -> Self {
        Injection::header(INJECT_HEADER, Injection::default_prefix(INJECT_HEADER))
    }
}

/// `credentials.expires_warning`.
pub const EXPIRES_WARNING: Duration = Duration::from_secs(72 * 3600);
/// `credentials.preflight`.
pub const PREFLIGHT: bool = false;
/// `credentials.suspect_after`.
pub const SUSPECT_AFTER: u32 = 3;
/// `credentials.queue` left out, or its keys: no waiting; at most 100
/// requests wait at once when `max_wait` is set.
impl Default for TokenQueue {
    fn default() -> Self {
        TokenQueue {
            max_wait: Duration::ZERO,
            max_queued: 100,
        }
    }
}
/// The longest `credentials.queue.max_wait`: a client asked to wait longer
/// has most likely given up, and a reset further away is answered at once
/// with `Retry-After`.
pub const QUEUE_MAX_WAIT_LIMIT: Duration = Duration::from_secs(300);
/// `credentials.probe.interval`.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// `credentials.tokens[].timeout` (command sources).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

impl FailoverOn {
    /// No refusal moves a request on: where a `failover_on` list starts.
    pub const NONE: FailoverOn = FailoverOn {
        s401: false,
        s403: false,
        s429: false,
    };
}

impl Default for FailoverOn {
    /// `[401, 403]`.
    fn default() -> Self {
        FailoverOn {
            s401: true,
            s403: true,
            s429: false,
        }
    }
}

/// `oauth2.refresh_fraction`.
pub const OAUTH2_REFRESH_FRACTION: f64 = 0.8;
/// `oauth2.timeout`.
pub const OAUTH2_TIMEOUT: Duration = Duration::from_secs(10);
/// `oauth2.max_retry`.
pub const OAUTH2_MAX_RETRY: Duration = Duration::from_secs(4);
/// `oauth2.share`: each replica fetches its own token.
pub const OAUTH2_SHARE: bool = false;

impl Default for ClientAuth {
    /// HTTP Basic, RFC 6749 §2.3.1's recommendation.
    fn default() -> Self {
        ClientAuth::Basic
    }
}

/// `cache.sensitive_query`.
pub const SENSITIVE_QUERY: [&str; 9] = [
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "auth",
    "signature",
    "sig",
    "password",
];

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 64 << 20,
            max_object_bytes: 1 << 20,
            persist_path: None,
            redis: None,
            sensitive_query: SENSITIVE_QUERY.iter().map(|s| s.to_string()).collect(),
            coalesce: CoalesceConfig::default(),
        }
    }
}

impl Default for CoalesceConfig {
    /// Like nginx's `proxy_cache_lock_timeout`: 5 s; per replica.
    fn default() -> Self {
        CoalesceConfig {
            wait: Duration::from_secs(5),
            fleet: false,
        }
    }
}

/// `cache.redis.timeout`.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// `cache.redis.key_prefix`.
pub const REDIS_KEY_PREFIX: &str = "graceway:";
/// `cache.redis.queue`.
pub const REDIS_QUEUE: usize = 1024;
/// `cache.redis.ledger`: on wherever the fleet tier is.
pub const REDIS_LEDGER: bool = true;

impl Default for MemoryConfig {
    /// No shedding.
    fn default() -> Self {
        MemoryConfig { soft_limit: None }
    }
}

impl Default for AlertsConfig {
    /// No webhook.
    fn default() -> Self {
        AlertsConfig {
            webhook: None,
            webhook_ca_file: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: log::LevelFilter::Info,
            access: false,
            format: LogFormat::Plain,
        }
    }
}
