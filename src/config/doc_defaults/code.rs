//! The code's side of the check: every default, by the key it belongs to,
//! taken from [`crate::config::defaults`].

use std::time::Duration;

use crate::config::defaults;
use crate::config::model::*;

/// What the code does when a key is left out.
#[derive(Debug)]
pub(super) enum Code {
    /// This value (as YAML).
    Value(String),
    /// Nothing: the feature is off.
    Unset,
    /// A value counted at start (CPUs, the open-file limit, the pid file).
    Derived,
}

use Code::{Derived, Unset};

fn val(v: impl std::fmt::Display) -> Code {
    Code::Value(v.to_string())
}
fn dur(d: Duration) -> Code {
    val(format!("{}ms", d.as_millis()))
}
fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> Code {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    val(format!("[{}]", items.join(", ")))
}
fn opt<T>(v: Option<T>, show: impl Fn(T) -> Code) -> Code {
    v.map_or(Unset, show)
}

/// Every default in the code, by the key it belongs to.
pub(super) fn code_defaults() -> Vec<(&'static str, Code)> {
    let mut out = vec![
        ("listen", val(defaults::LISTEN)),
        ("pid_file", val(defaults::PID_FILE)),
    ];
    let AdminConfig {
        listen,
        token_file,
        allowed_hosts,
        max_connections,
    } = AdminConfig::default();
    out.extend([
        ("admin.listen", val(listen)),
        ("admin.token_file", opt(token_file, |p| val(p.display()))),
        (
            "admin.allowed_hosts",
            if allowed_hosts.is_empty() {
                Unset
            } else {
                list(allowed_hosts)
            },
        ),
        ("admin.max_connections", val(max_connections)),
    ]);
    let ServerSettings {
        threads,
        grace_period,
        graceful_shutdown_timeout,
        client_keepalive_timeout,
        max_request_header_bytes,
        max_request_body_bytes,
        request_header_timeout,
        client_body_timeout,
        max_connections,
        upgrade_sock: _, // beside `pid_file`: `upgrade_sock_beside`
        h2c,
    } = ServerSettings::default();
    out.extend([
        ("server.threads", opt(threads, val).or_derived()),
        ("server.grace_period", dur(grace_period)),
        (
            "server.graceful_shutdown_timeout",
            dur(graceful_shutdown_timeout),
        ),
        (
            "server.client_keepalive_timeout",
            dur(client_keepalive_timeout),
        ),
        (
            "server.max_request_header_bytes",
            val(max_request_header_bytes),
        ),
        ("server.max_request_body_bytes", val(max_request_body_bytes)),
        ("server.request_header_timeout", dur(request_header_timeout)),
        ("server.client_body_timeout", dur(client_body_timeout)),
        (
            "server.max_connections",
            opt(max_connections, val).or_derived(),
        ),
        ("server.upgrade_sock", Derived),
        ("server.h2c", val(h2c)),
    ]);

    out.extend([
        ("upstreams[].methods", list(defaults::METHODS)),
        ("upstreams[].dns_refresh", dur(defaults::DNS_REFRESH)),
        ("upstreams[].stream", val(defaults::STREAM)),
        ("upstreams[].http", val(HttpVersion::default().as_str())),
        (
            "upstreams[].cache.fresh",
            val(match UpstreamCache::default().fresh {
                FreshPolicy::Off => "off",
                FreshPolicy::Honor => "honor",
            }),
        ),
    ]);
    let RouteMatch { host, path_prefix } = RouteMatch::default();
    out.extend([
        ("upstreams[].match.host", opt(host, val)),
        ("upstreams[].match.path_prefix", val(path_prefix)),
    ]);
    let Timeouts {
        connect,
        read,
        write,
        stream_idle,
    } = Timeouts::default();
    out.extend([
        ("upstreams[].timeouts.connect", dur(connect)),
        ("upstreams[].timeouts.read", dur(read)),
        ("upstreams[].timeouts.write", dur(write)),
        ("upstreams[].timeouts.stream_idle", dur(stream_idle)),
    ]);
    for at in [
        "upstreams[].tls",
        "upstreams[].credentials.tokens[].oauth2.tls",
    ] {
        let TlsSettings { ca_file, verify } = TlsSettings::default();
        let ca_file = opt(ca_file, |p| val(p.display()));
        out.push((leak(format!("{at}.ca_file")), ca_file));
        out.push((leak(format!("{at}.verify")), val(verify)));
    }
    let HealthPolicy {
        open_after,
        retry_after,
        max_retry_after,
    } = HealthPolicy::default();
    out.extend([
        ("upstreams[].health.open_after", val(open_after)),
        ("upstreams[].health.retry_after", dur(retry_after)),
        ("upstreams[].health.max_retry_after", dur(max_retry_after)),
    ]);
    let StalePolicy {
        on,
        max_stale,
        warning_header,
        honor_origin_directives,
        scrub_bodies,
    } = StalePolicy::default();
    let StaleTriggers {
        s401,
        s403,
        s429,
        s5xx,
        timeout,
        connect_error,
        token_unavailable,
    } = on;
    let on = [
        (s401, "401"),
        (s403, "403"),
        (s429, "429"),
        (s5xx, "5xx"),
        (timeout, "timeout"),
        (connect_error, "connect_error"),
        (token_unavailable, "token_unavailable"),
    ];
    out.extend([
        (
            "upstreams[].stale.on",
            list(on.iter().filter(|(set, _)| *set).map(|(_, n)| n)),
        ),
        ("upstreams[].stale.max_stale", dur(max_stale)),
        ("upstreams[].stale.warning_header", val(warning_header)),
        (
            "upstreams[].stale.origin_directives",
            val(if honor_origin_directives {
                "honor"
            } else {
                "ignore"
            }),
        ),
        ("upstreams[].stale.scrub_bodies", val(scrub_bodies)),
    ]);

    let default = Injection::default();
    let [InjectValue {
        place: Place::Header(name),
        form: ValueForm::Plain { prefix, .. },
    }] = default.values()
    else {
        panic!("the default injection is one header");
    };
    let FailoverOn { s401, s403, s429 } = FailoverOn::default();
    let failover = [(s401, 401), (s403, 403), (s429, 429)];
    out.extend([
        ("upstreams[].credentials.inject.header", val(name)),
        (
            "upstreams[].credentials.inject.prefix",
            val(format!("{prefix:?}")),
        ),
        (
            "upstreams[].credentials.expires_warning",
            dur(defaults::EXPIRES_WARNING),
        ),
        (
            "upstreams[].credentials.preflight",
            val(defaults::PREFLIGHT),
        ),
        (
            "upstreams[].credentials.suspect_after",
            val(defaults::SUSPECT_AFTER),
        ),
        (
            "upstreams[].credentials.failover_on",
            list(failover.iter().filter(|(set, _)| *set).map(|(_, s)| s)),
        ),
        (
            "upstreams[].credentials.probe.interval",
            dur(defaults::PROBE_INTERVAL),
        ),
        (
            "upstreams[].credentials.select",
            val(Select::default().as_str()),
        ),
        ("upstreams[].credentials.sticky_header", Unset),
    ]);
    let TokenQueue {
        max_wait,
        max_queued,
    } = TokenQueue::default();
    out.extend([
        ("upstreams[].credentials.queue.max_wait", dur(max_wait)),
        ("upstreams[].credentials.queue.max_queued", val(max_queued)),
        (
            "upstreams[].credentials.tokens[].timeout",
            dur(defaults::COMMAND_TIMEOUT),
        ),
    ]);
    let payload = match Payload::default() {
        Payload::Signed => "signed",
        Payload::Unsigned => "unsigned",
    };
    out.push(("upstreams[].credentials.sigv4.payload", val(payload)));
    let oauth2 = "upstreams[].credentials.tokens[].oauth2";
    let client_auth = match ClientAuth::default() {
        ClientAuth::Basic => "basic",
        ClientAuth::Body => "body",
        ClientAuth::PrivateKeyJwt => "private_key_jwt",
        ClientAuth::None => "none",
    };
    out.extend([
        (leak(format!("{oauth2}.client_auth")), val(client_auth)),
        (leak(format!("{oauth2}.grant")), val("client_credentials")),
        (
            leak(format!("{oauth2}.refresh_fraction")),
            val(defaults::OAUTH2_REFRESH_FRACTION),
        ),
        (
            leak(format!("{oauth2}.timeout")),
            dur(defaults::OAUTH2_TIMEOUT),
        ),
        (
            leak(format!("{oauth2}.max_retry")),
            dur(defaults::OAUTH2_MAX_RETRY),
        ),
        (leak(format!("{oauth2}.share")), val(defaults::OAUTH2_SHARE)),
    ]);

    let CacheConfig {
        memory_bytes,
        max_object_bytes,
        persist_path,
        redis,
        sensitive_query,
        coalesce,
    } = CacheConfig::default();
    let CoalesceConfig { wait, fleet } = coalesce;
    out.extend([
        ("cache.memory_bytes", val(memory_bytes)),
        ("cache.max_object_bytes", val(max_object_bytes)),
        (
            "cache.persist.path",
            opt(persist_path, |p| val(p.display())),
        ),
        ("cache.redis", opt(redis, |_| Derived)),
        ("cache.sensitive_query", list(sensitive_query)),
        ("cache.redis.timeout", dur(defaults::REDIS_TIMEOUT)),
        (
            "cache.redis.key_prefix",
            val(format!("{:?}", defaults::REDIS_KEY_PREFIX)),
        ),
        ("cache.redis.queue", val(defaults::REDIS_QUEUE)),
        ("cache.redis.ledger", val(defaults::REDIS_LEDGER)),
        ("cache.coalesce.wait", dur(wait)),
        ("cache.coalesce.fleet", val(fleet)),
    ]);
    let MemoryConfig { soft_limit } = MemoryConfig::default();
    let AlertsConfig {
        webhook,
        webhook_ca_file,
    } = AlertsConfig::default();
    let LogConfig {
        level,
        access,
        format,
    } = LogConfig::default();
    out.extend([
        ("memory.soft_limit", opt(soft_limit, val)),
        ("alerts.webhook", opt(webhook, val)),
        (
            "alerts.webhook_ca_file",
            opt(webhook_ca_file, |p| val(p.display())),
        ),
        ("log.level", val(level.to_string().to_ascii_lowercase())),
        ("log.access", val(access)),
        (
            "log.format",
            val(match format {
                LogFormat::Plain => "plain",
                LogFormat::Json => "json",
            }),
        ),
    ]);
    out
}

impl Code {
    /// An unset count is counted at start.
    fn or_derived(self) -> Code {
        match self {
            Unset => Derived,
            other => other,
        }
    }
}

/// Keys built with `format!` live as long as the test.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
