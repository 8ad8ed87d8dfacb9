//! The validated config: what the rest of graceway is built from. Every
//! value here has been parsed and checked (see [`super::validate`]); the
//! file schema stays behind in [`super::schema`]. What a key left out of
//! the file means is in [`super::defaults`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

mod inject;
mod oauth2;
mod protocol;
mod sigv4;
pub use inject::{InjectValue, Injection, Part, Place, ValueForm};
pub use oauth2::{ClientAuth, Grant, SigningKey};
pub use protocol::HttpVersion;
pub use sigv4::{AwsSource, Payload, SigV4Spec};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    pub pid_file: PathBuf,
    pub server: ServerSettings,
    pub upstreams: Vec<UpstreamConfig>,
    pub cache: CacheConfig,
    pub memory: MemoryConfig,
    pub alerts: AlertsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// Host names (besides the listener's own address and `localhost`)
    /// that a request's `Host` may carry: what a proxy or DNS name in
    /// front of the admin port sends. Anything else is a DNS-rebinding
    /// page and gets 421.
    pub allowed_hosts: Vec<String>,
    /// Open admin connections at most (its own budget, so that health
    /// checks answer while the proxy port is flooded).
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Pingora worker threads; `None`: one per CPU, counted at start
    /// ([`ServerSettings::worker_threads`]), not while the file is checked.
    pub threads: Option<usize>,
    /// SIGTERM: keep accepting new connections this long (the accept
    /// window), answering with `Connection: close`.
    pub grace_period: Duration,
    /// SIGTERM/SIGQUIT: then wait at most this long for requests in
    /// flight; exit as soon as there are none.
    pub graceful_shutdown_timeout: Duration,
    /// Idle keep-alive connections from clients are closed after this long.
    pub client_keepalive_timeout: Duration,
    /// Request header blocks (request line included) larger than this get 431.
    pub max_request_header_bytes: usize,
    /// Request bodies larger than this get 413 (by `Content-Length` before
    /// anything goes upstream; a chunked body is cut off when it passes it).
    pub max_request_body_bytes: u64,
    /// A request header must be complete this long after the connection
    /// opened (first request) or after its first byte (later requests): 408.
    pub request_header_timeout: Duration,
    /// A client that sends no body bytes for this long gets 408.
    pub client_body_timeout: Duration,
    /// Open client connections at most; `None`: derived from the
    /// descriptor limit at start (see `net::listener::default_max_connections`).
    pub max_connections: Option<usize>,
    pub upgrade_sock: PathBuf,
    /// The proxy listener also accepts HTTP/2 with prior knowledge (h2c,
    /// gRPC clients) beside HTTP/1.1 on the same port.
    pub h2c: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: UpstreamUrl,
    pub route: RouteMatch,
    pub timeouts: Timeouts,
    pub tls: TlsSettings,
    /// `tls.client_cert` + `tls.client_key`: sent when the upstream asks
    /// for a certificate (mTLS); read by `generation::build`, watched.
    pub client_cert: Option<ClientCertFiles>,
    pub credentials: Option<Credentials>,
    pub health: HealthPolicy,
    pub stale: StalePolicy,
    /// Methods forwarded to this upstream; others get 405 with `Allow`.
    pub methods: Vec<http::Method>,
    /// Re-resolve the host this often (zero: only after a failed connect).
    pub dns_refresh: Duration,
    /// Lower-case `Upgrade` protocols a client may switch to; without
    /// one listed, `Upgrade` is not forwarded and a 101 is answered 502.
    pub upgrade: Vec<String>,
    /// Every answer is a stream (see `proxy`'s stream handling).
    pub stream: bool,
    /// `cache`: whether fresh copies answer without a vendor call.
    pub cache: UpstreamCache,
    /// `http`: the HTTP version spoken to the upstream.
    pub http: HttpVersion,
}

/// `upstreams[].cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpstreamCache {
    pub fresh: FreshPolicy,
}

/// `upstreams[].cache.fresh`: what the vendor's freshness directives
/// (`max-age`, `s-maxage`, `Expires`, `stale-while-revalidate`) do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FreshPolicy {
    /// Every request goes to the vendor; copies answer only failures.
    #[default]
    Off,
    /// A copy within its freshness answers without a vendor call, one
    /// within `stale-while-revalidate` answers at once while one
    /// background refresh renews it, and a stale copy is renewed with a
    /// conditional request (a 304 renews it without a body).
    Honor,
}

/// `url` taken apart: graceway forwards the request path unchanged, so the
/// URL names only scheme, host and port. `Default` is the empty stand-in
/// validation keeps while it reports a missing or bad `url`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamUrl {
    pub tls: bool,
    /// Host as written, without brackets for IPv6; used for SNI and `Host`.
    pub host: String,
    pub port: u16,
    /// The value of the `Host` header sent upstream (`host` or `host:port`).
    pub host_header: String,
    pub original: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteMatch {
    /// Lower-cased host without port, when set.
    pub host: Option<String>,
    pub path_prefix: String,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// How long an upgraded connection (a tunnel) may carry nothing in
    /// either direction.
    pub stream_idle: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    pub verify: bool,
}

/// An upstream's client certificate and key files (both or neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub inject: Injection,
    pub tokens: Vec<TokenSpec>,
    pub expires_warning: Duration,
    pub probe: Option<ProbeSpec>,
    pub preflight: bool,
    pub failover_on: FailoverOn,
    /// A `suspect` token refused this many times in a row (a 401/403
    /// without an error code, no success anywhere in between, within the
    /// suspicion window) is rejected: the next token takes over, or the
    /// auth breaker opens.
    pub suspect_after: u32,
    /// How a request's first attempt chooses among the usable tokens.
    pub select: Select,
    /// `credentials.sticky_header`, parsed once at load: a request with
    /// this header stays on one token while it is usable.
    pub sticky_header: Option<http::HeaderName>,
    pub queue: TokenQueue,
}

/// `credentials.select`: which usable token a request's first attempt
/// takes (a retry after a refusal takes one it has not tried, by the same
/// rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Select {
    /// The first usable token in configured order.
    #[default]
    Failover,
    /// Successive requests rotate over the usable tokens.
    RoundRobin,
    /// The usable token with the most quota left by the vendor's
    /// rate-limit headers (a token with none known yet counts as full).
    MostRemaining,
}

impl Select {
    pub fn as_str(self) -> &'static str {
        match self {
            Select::Failover => "failover",
            Select::RoundRobin => "round_robin",
            Select::MostRemaining => "most_remaining",
        }
    }
}

/// `credentials.queue`: pacing. With `max_wait` above zero, a token whose
/// known quota is spent is skipped until the vendor's reset, and a request
/// that finds every token spent waits for the first reset when it is
/// within `max_wait` (at most `max_queued` requests at once) instead of
/// being sent to a certain refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenQueue {
    pub max_wait: std::time::Duration,
    pub max_queued: u32,
}

impl TokenQueue {
    /// Whether requests may wait for a reset (and spent tokens are skipped).
    pub fn on(&self) -> bool {
        !self.max_wait.is_zero()
    }
}

/// `credentials.failover_on`: which refusals move a request to the next
/// token. 429 (and a 403 that says the quota is gone) also puts the token
/// in a cool-down until the vendor's reset, when listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverOn {
    pub s401: bool,
    pub s403: bool,
    pub s429: bool,
}

impl FailoverOn {
    pub fn covers(&self, status: u16) -> bool {
        match status {
            401 => self.s401,
            403 => self.s403,
            429 => self.s429,
            _ => false,
        }
    }
}

/// The most tokens one upstream may list (a request tracks the tokens it
/// tried in a 64-bit set).
pub const MAX_TOKENS: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    pub source: SourceSpec,
    /// Explicit expiry; a JWT's `exp` claim is used when this is absent.
    pub expires_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    File(PathBuf),
    Env(String),
    Command {
        argv: Vec<String>,
        refresh: Option<Duration>,
        timeout: Duration,
    },
    OAuth2(Box<OAuth2Spec>),
    /// An AWS credential set (`credentials.sigv4` upstreams only).
    Aws(Box<AwsSource>),
    /// One structured token whose named fields each come from their own
    /// file, variable or command (`tokens[].fields`), in name order.
    Fields(Vec<(String, SourceSpec)>),
}

/// Where a client id or secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Literal(String),
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OAuth2Spec {
    /// Full token endpoint URL (a path is allowed here).
    pub token_url: String,
    pub endpoint: UpstreamUrl,
    pub path_and_query: String,
    /// Absent only for the JWT-bearer grant from a service account file
    /// (its `client_email` is the client).
    pub client_id: Option<CredentialSource>,
    /// For `client_auth: basic | body`.
    pub client_secret: Option<CredentialSource>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub client_auth: ClientAuth,
    pub grant: Grant,
    /// Signs `private_key_jwt` and JWT-bearer assertions (unless a service
    /// account file brings its own key).
    pub signing_key: Option<SigningKey>,
    /// More form fields, sent as given (`oauth2.extra_params`).
    pub extra_params: Vec<(String, String)>,
    pub refresh_fraction: f64,
    pub timeout: Duration,
    /// Fetch retries back off (2 s doubling) up to this while no token of
    /// this source is usable (requests wait on it); up to 5 min while the
    /// previous token still serves.
    pub max_retry: Duration,
    pub ca_file: Option<PathBuf>,
    pub verify: bool,
    /// One fetch for the fleet: the token is read from and stored in the
    /// fleet tier, sealed with `cache.redis.secret_file`
    /// (`tokens::oauth2::share`).
    pub share: bool,
}

impl SourceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::File(_) => "file",
            SourceSpec::Env(_) => "env",
            SourceSpec::Command { .. } => "command",
            SourceSpec::OAuth2(_) => "oauth2",
            SourceSpec::Aws(_) => "aws",
            SourceSpec::Fields(_) => "fields",
        }
    }

    /// Where the token comes from, safe to show: a path, a variable name or
    /// the command's program name (never its arguments, which may hold secrets).
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::File(p) => format!("file:{}", p.display()),
            SourceSpec::Env(n) => format!("env:{n}"),
            SourceSpec::Command { argv, .. } => format!("command:{}", argv[0]),
            SourceSpec::OAuth2(o) => format!("oauth2:{}", o.token_url),
            SourceSpec::Aws(a) => match &**a {
                AwsSource::Parts { access_key_id, .. } => {
                    format!("aws:{}", access_key_id.describe())
                }
                AwsSource::Environment => "aws:environment".into(),
                AwsSource::Shared { profile, .. } => {
                    format!(
                        "aws:profile:{}",
                        profile.as_deref().unwrap_or("(AWS_PROFILE)")
                    )
                }
            },
            SourceSpec::Fields(parts) => {
                let each: Vec<String> = parts
                    .iter()
                    .map(|(name, s)| format!("{name}={}", s.describe()))
                    .collect();
                format!("fields({})", each.join(","))
            }
        }
    }

    /// Every file it reads, for the file watcher.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            SourceSpec::File(p) => vec![p.clone()],
            SourceSpec::Aws(a) => a.files(),
            SourceSpec::Fields(parts) => parts.iter().flat_map(|(_, s)| s.files()).collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub path: String,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct HealthPolicy {
    pub open_after: u32,
    pub retry_after: Duration,
    pub max_retry_after: Duration,
}

/// The outcomes that may be answered from the last-good cache. `Default`
/// is the config's default (all of them); [`StaleTriggers::NONE`] is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleTriggers {
    pub s401: bool,
    pub s403: bool,
    pub s429: bool,
    pub s5xx: bool,
    pub timeout: bool,
    pub connect_error: bool,
    /// No token has a value (every source failed).
    pub token_unavailable: bool,
}

#[derive(Debug, Clone)]
pub struct StalePolicy {
    pub on: StaleTriggers,
    pub max_stale: Duration,
    pub warning_header: bool,
    /// Honour an origin's `must-revalidate` and `stale-if-error=N`.
    pub honor_origin_directives: bool,
    /// Mask token values the upstream echoes in a body on the way out.
    pub scrub_bodies: bool,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub memory_bytes: u64,
    pub max_object_bytes: u64,
    pub persist_path: Option<PathBuf>,
    pub redis: Option<RedisConfig>,
    /// Lower-case query parameter names that make a request unstorable
    /// (a client's credential must not be kept, even under a hashed key).
    pub sensitive_query: Vec<String>,
    pub coalesce: CoalesceConfig,
}

/// `cache.coalesce`: collapsed forwarding (see `cache::flight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// The most a request waits for another's fetch of its key; zero: off.
    pub wait: Duration,
    /// One replica fetches a key for the fleet (`cache.redis`).
    pub fleet: bool,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One server (`redis://` or `rediss://`), or the seed nodes of a
    /// Redis Cluster.
    pub target: RedisTarget,
    /// The most a degraded answer waits on Redis.
    pub timeout: Duration,
    /// Put before every key, so that several fleets can share one Redis.
    pub key_prefix: String,
    /// PEM bundle to verify `rediss://` against instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Copies waiting to be written; more are dropped and counted.
    pub queue: usize,
    /// Share what each replica learns about its tokens (the fleet ledger,
    /// `cache::ledger`).
    pub ledger: bool,
    /// 32 bytes as 64 hex characters: the AEAD key that seals shared OAuth2
    /// tokens in Redis. Read by `config::files` (stage 2), never here.
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The URLs with any password replaced by `***` (for logs and status).
    pub fn redacted(&self) -> String {
        let one = |u: &str| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let userinfo = &u[s + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{}{}:***{}", &u[..s + 3], user, &u[at..])
            }
            _ => u.to_string(),
        };
        match self {
            RedisTarget::Single(u) => one(u),
            RedisTarget::Cluster(us) => us.iter().map(|u| one(u)).collect::<Vec<_>>().join(","),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub soft_limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// `http://` or `https://` (verified against the system roots, or
    /// `webhook_ca_file`).
    pub webhook: Option<String>,
    pub webhook_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: log::LevelFilter,
    pub access: bool,
    pub format: LogFormat,
}

/// The largest token graceway accepts; bigger values are refused at load.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

impl ServerSettings {
    /// `threads`, or one per CPU (what the process may use: affinity and
    /// cgroup quota, read now).
    pub fn worker_threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Config {
    /// The oldest any copy may be served (the largest `stale.max_stale`):
    /// older copies in the persist file are dropped on load.
    pub fn longest_max_stale(&self) -> Duration {
        self.upstreams
            .iter()
            .map(|u| u.stale.max_stale)
            .max()
            .unwrap_or_default()
    }

    /// What `check` and the start-up log both warn about: an admin
    /// listener anyone can reach without a bearer, and settings this build
    /// accepts but does not act on.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.admin.listen.ip().is_loopback() && self.admin.token_file.is_none() {
            out.push(format!(
                "admin.listen {} is not a loopback address and admin.token_file is not set: anyone who can reach it can reload graceway; set admin.token_file or listen on 127.0.0.1",
                self.admin.listen
            ));
        }
        if let Some(r) = &self.cache.redis {
            let tls = match &r.target {
                RedisTarget::Single(u) => u.starts_with("rediss://"),
                RedisTarget::Cluster(us) => us.iter().any(|u| u.starts_with("rediss://")),
            };
            if r.ca_file.is_some() && !tls {
                out.push(
                    "cache.redis.ca_file is set but no URL is rediss://: it is not used"
                        .to_string(),
                );
            }
        }
        out
    }

    /// Every file a token or a client certificate comes from, for the
    /// file watcher.
    pub fn token_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for u in &self.upstreams {
            if let Some(cr) = &u.credentials {
                for t in &cr.tokens {
                    out.extend(t.source.files());
                }
            }
            if let Some(cc) = &u.client_cert {
                out.extend([cc.cert.clone(), cc.key.clone()]);
            }
        }
        out
    }
}

/// RFC 9110 §7.6.1: fields that describe one connection, not the message
/// (the one list: injection refuses them, the cache never keeps them).
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}
