//! Every validation error, section by section: each case is a small file
//! and the exact list of `(field path, message)` it must produce. A message
//! ending in `...` is compared up to there (the rest comes from a library:
//! humantime, the Redis URL parser).

use super::*;

mod credentials;
mod inject;
mod upstream;

/// The errors of `yaml`, or none when it is valid.
fn errors(yaml: &str) -> Vec<(String, String)> {
    match crate::config::parse(yaml, Path::new("/cfg")) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

/// Runs each case; reports every mismatch at once.
fn expect(cases: &[(String, &[(&str, &str)])]) {
    let mut failures = Vec::new();
    for (yaml, want) in cases {
        let got = errors(yaml);
        let matches = got.len() == want.len()
            && got.iter().zip(want.iter()).all(|((gp, gm), (wp, wm))| {
                gp == wp
                    && match wm.strip_suffix("...") {
                        Some(prefix) => gm.starts_with(prefix),
                        None => gm == wm,
                    }
            });
        if !matches {
            failures.push(format!("{yaml}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// A valid file with `top` added at the top level.
fn top(top: &str) -> String {
    format!("upstreams: [{{ name: a, url: 'http://127.0.0.1:1', credentials: none }}]\n{top}\n")
}

/// One upstream written as `{ fields }`.
fn up(fields: &str) -> String {
    format!("upstreams:\n  - {{ {fields} }}\n")
}

/// One upstream `a` at `http://127.0.0.1:1` with `credentials: { fields }`.
fn cred(fields: &str) -> String {
    up(&format!(
        "name: a, url: 'http://127.0.0.1:1', credentials: {{ {fields} }}"
    ))
}

/// One token `{ oauth2: { fields } }`.
fn oauth2(fields: &str) -> String {
    cred(&format!("tokens: [{{ oauth2: {{ {fields} }} }}]"))
}

const IDP: &str = "token_url: 'https://idp.example/token', client_id: c, client_secret_env: S";
const NOT_A_DURATION: &str = "`soon` is not a duration (...";
const NOT_A_SIZE: &str = "`lots` is not a size; write e.g. `64MiB`, `512KiB` or `1048576`";
const ZERO: &str = "must be greater than zero";
const ONE: &str = "must be at least 1";

#[test]
fn a_valid_file_has_no_errors() {
    expect(&[
        (top(""), &[]),
        (
            cred("tokens: [{ file: t }, { env: T }, { command: [x] }]"),
            &[],
        ),
        (oauth2(IDP), &[]),
    ]);
}

#[test]
fn listen_and_admin() {
    let addr = "`nowhere` is not an address; write ip:port, e.g. `127.0.0.1:8080`";
    expect(&[
        (top("listen: nowhere"), &[("listen", addr)]),
        (top("admin: { listen: nowhere }"), &[("admin.listen", addr)]),
        (
            top("listen: '127.0.0.1:9180'"),
            &[("admin.listen", "must differ from `listen`")],
        ),
        (
            top("admin: { allowed_hosts: ['https://x/'] }"),
            &[(
                "admin.allowed_hosts",
                "`https://x/` is not a host name (write it without scheme, path or port)",
            )],
        ),
        (
            top("admin: { max_connections: 0 }"),
            &[("admin.max_connections", ONE)],
        ),
    ]);
}

#[test]
fn server() {
    expect(&[
        (top("server: { threads: 0 }"), &[("server.threads", ONE)]),
        (
            top("server: { max_connections: 0 }"),
            &[("server.max_connections", ONE)],
        ),
        (
            top("server: { grace_period: soon }"),
            &[("server.grace_period", NOT_A_DURATION)],
        ),
        (
            top("server: { graceful_shutdown_timeout: soon }"),
            &[("server.graceful_shutdown_timeout", NOT_A_DURATION)],
        ),
        (
            top("server: { client_keepalive_timeout: 0s }"),
            &[("server.client_keepalive_timeout", ZERO)],
        ),
        (
            top("server: { request_header_timeout: 0s }"),
            &[("server.request_header_timeout", ZERO)],
        ),
        (
            top("server: { client_body_timeout: 0 }"),
            &[("server.client_body_timeout", ZERO)],
        ),
        (
            top("server: { max_request_header_bytes: lots }"),
            &[("server.max_request_header_bytes", NOT_A_SIZE)],
        ),
        (
            top("server: { max_request_body_bytes: lots }"),
            &[("server.max_request_body_bytes", NOT_A_SIZE)],
        ),
    ]);
}

#[test]
fn cache_and_redis() {
    let bad_scheme = "`http://u:***@h:6379` must start with redis:// or rediss://";
    expect(&[
        (
            top("cache: { memory_bytes: lots }"),
            &[("cache.memory_bytes", NOT_A_SIZE)],
        ),
        (
            top("cache: { max_object_bytes: lots }"),
            &[("cache.max_object_bytes", NOT_A_SIZE)],
        ),
        (
            top("cache: { memory_bytes: 1MiB, max_object_bytes: 2MiB }"),
            &[(
                "cache.max_object_bytes",
                "must not exceed cache.memory_bytes",
            )],
        ),
        (
            top("cache: { memory_bytes: 8GiB, max_object_bytes: 3GiB }"),
            &[("cache.max_object_bytes", "must be below 2GiB")],
        ),
        (
            top("cache: { persist: {} }"),
            &[("cache.persist.path", "is required when `persist` is set")],
        ),
        (
            top("cache: { sensitive_query: [token, 'a=b'] }"),
            &[("cache.sensitive_query[1]", "must be a query parameter name")],
        ),
        (
            top("cache: { redis: {} }"),
            &[(
                "cache.redis",
                "`url` (one server) or `cluster` (seed nodes) is required",
            )],
        ),
        (
            top("cache: { redis: { url: 'redis://h', cluster: ['redis://h'] } }"),
            &[("cache.redis", "set either `url` or `cluster`, not both")],
        ),
        (
            // The password is never shown.
            top("cache: { redis: { url: 'http://u:secret@h:6379' } }"),
            &[("cache.redis.url", bad_scheme)],
        ),
        (
            top("cache: { redis: { cluster: [] } }"),
            &[("cache.redis.cluster", "must list at least one node")],
        ),
        (
            top("cache: { redis: { cluster: ['redis://h:7000', 'redis://:pw@h:notaport'] } }"),
            &[("cache.redis.cluster[1]", "`redis://:***@h:notaport`: ...")],
        ),
        (
            top("cache: { redis: { url: 'redis://h', key_prefix: 'a b' } }"),
            &[(
                "cache.redis.key_prefix",
                "at most 64 characters, no spaces or control characters",
            )],
        ),
        (
            top("cache: { redis: { url: 'redis://h', timeout: 0s } }"),
            &[("cache.redis.timeout", ZERO)],
        ),
        (
            top("cache: { redis: { url: 'redis://h', queue: 0 } }"),
            &[("cache.redis.queue", ONE)],
        ),
    ]);
}

#[test]
fn memory_alerts_and_log() {
    expect(&[
        (
            top("memory: { soft_limit: lots }"),
            &[("memory.soft_limit", NOT_A_SIZE)],
        ),
        (
            top("alerts: { webhook: 'ftp://hooks.example/x' }"),
            &[(
                "alerts.webhook",
                "`ftp://hooks.example` must start with http:// or https://",
            )],
        ),
        (
            top("alerts: { webhook: 'not a url' }"),
            &[("alerts.webhook", "`not a url` is not a URL")],
        ),
        (
            top("alerts: { webhook_ca_file: ca.pem }"),
            &[(
                "alerts.webhook_ca_file",
                "is set but `alerts.webhook` is not",
            )],
        ),
        (
            top("log: { level: loud }"),
            &[(
                "log.level",
                "must be one of off, error, warn, info, debug, trace",
            )],
        ),
        (
            top("log: { format: xml }"),
            &[("log.format", "`xml`: must be `plain` or `json`")],
        ),
    ]);
}

#[test]
fn the_file_schema_names_the_field_of_a_type_error_or_unknown_key() {
    expect(&[
        (
            up("name: a, url: 'http://x', tokenz: 1"),
            &[("upstreams[0]", "unknown field `tokenz`, expected one of ...")],
        ),
        (
            up("name: a, url: 'http://x', credentials: nothing"),
            &[(
                "upstreams[0].credentials",
                "`nothing`: write `none` for an upstream that needs no token, or a map with `tokens`...",
            )],
        ),
        (
            top("server: { threads: many }"),
            &[("server.threads", "invalid type: string \"many\", expected usize...")],
        ),
    ]);
}

#[test]
fn validation_reads_no_file() {
    // Every path names a file that does not exist: they are checked in the
    // second stage (`config::files`, `generation::build`), not here.
    let yaml = "
pid_file: run/g.pid
admin: { token_file: secrets/admin }
upstreams:
  - name: a
    url: 'https://127.0.0.1:1'
    tls: { ca_file: ca/upstream.pem }
    credentials:
      tokens:
        - { file: secrets/token }
        - oauth2: { token_url: 'https://idp.example/t', client_id_file: id, client_secret_file: s, tls: { ca_file: ca/idp.pem } }
cache: { persist: { path: data/cache.redb }, redis: { url: 'rediss://h', ca_file: ca/redis.pem } }
alerts: { webhook: 'https://hooks.example/x', webhook_ca_file: ca/hook.pem }
";
    let cfg = crate::config::parse(yaml, Path::new("/nonexistent-base")).expect("valid");
    assert_eq!(
        cfg.alerts.webhook_ca_file.as_deref(),
        Some(Path::new("/nonexistent-base/ca/hook.pem")),
        "relative paths are anchored, not resolved"
    );
    assert_eq!(
        cfg.server.threads, None,
        "the CPU count is read at start, not while validating"
    );
}

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
