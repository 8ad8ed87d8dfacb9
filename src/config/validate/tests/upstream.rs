//! `upstreams[]` errors other than its credentials.

use super::*;

#[test]
fn upstream_identity_and_route() {
    let a = "name: a, url: 'http://127.0.0.1:1', credentials: none";
    expect(&[
        (
            "upstreams: []\n".into(),
            &[("upstreams", "at least one upstream is required")],
        ),
        (
            up("url: 'http://x', credentials: none"),
            &[("upstreams[0].name", "is required")],
        ),
        (
            up("name: 'a b', url: 'http://x', credentials: none"),
            &[(
                "upstreams[0].name",
                "`a b`: use 1-64 characters from a-z, A-Z, 0-9, `-`, `_`, `.`",
            )],
        ),
        (
            up("name: a, credentials: none"),
            &[("upstreams[0].url", "is required")],
        ),
        (
            up("name: a, url: 'ftp://x', credentials: none"),
            &[("upstreams[0].url", "`ftp://x` must start with http:// or https://")],
        ),
        (
            up("name: a, url: 'http://x/v1', credentials: none"),
            &[(
                "upstreams[0].url",
                "`http://x/v1` must not have a path or query; graceway forwards the request path unchanged",
            )],
        ),
        (
            up("name: a, url: 'http://u:p@x', credentials: none"),
            &[(
                "upstreams[0].url",
                "`http://u:p@x` must not carry user info; put credentials in `credentials.tokens`",
            )],
        ),
        (
            up("name: a, url: 'http://127.0.0.1:1'"),
            &[(
                "upstreams[0].credentials",
                "is required: list the tokens, or write `credentials: none` for an upstream that needs no token",
            )],
        ),
        (
            format!("upstreams:\n  - {{ {a} }}\n  - {{ {a} }}\n"),
            &[
                ("upstreams[1].name", "`a` is used by an earlier upstream"),
                (
                    "upstreams[1].match",
                    "an earlier upstream has the same host and path_prefix; this one would never be used",
                ),
            ],
        ),
        (
            up(&format!("{a}, match: {{ path_prefix: v1 }}")),
            &[("upstreams[0].match.path_prefix", "`v1` must start with `/`")],
        ),
        (
            up(&format!("{a}, match: {{ host: 'x:80' }}")),
            &[(
                "upstreams[0].match.host",
                "`x:80` must be a bare host name, without scheme, port or path",
            )],
        ),
        (
            up(&format!("{a}, dns_refresh: soon")),
            &[("upstreams[0].dns_refresh", NOT_A_DURATION)],
        ),
    ]);
}

#[test]
fn upstream_methods_and_upgrades() {
    let a = "name: a, url: 'http://127.0.0.1:1', credentials: none";
    expect(&[
        (
            up(&format!("{a}, methods: []")),
            &[("upstreams[0].methods", "must name at least one method")],
        ),
        (
            up(&format!("{a}, methods: [GET, connect]")),
            &[(
                "upstreams[0].methods[1]",
                "`connect` is never forwarded: TRACE would echo the injected token, CONNECT opens a tunnel",
            )],
        ),
        (
            up(&format!("{a}, methods: ['GE T']")),
            &[("upstreams[0].methods[0]", "`GE T` is not an HTTP method name")],
        ),
        (
            up(&format!("{a}, upgrade: [websocket, 'web socket']")),
            &[(
                "upstreams[0].upgrade[1]",
                "must be a protocol name such as `websocket`",
            )],
        ),
    ]);
}

#[test]
fn upstream_timeouts_and_tls() {
    let a = "name: a, url: 'http://127.0.0.1:1', credentials: none";
    let mut cases: Vec<(String, &[(&str, &str)])> = vec![
        (
            up(&format!("{a}, tls: {{ verify: false }}")),
            &[(
                "upstreams[0].tls",
                "is set but the url is http://; use https:// or remove `tls`",
            )],
        ),
        (
            up(&format!("{a}, timeouts: {{ connect: soon }}")),
            &[("upstreams[0].timeouts.connect", NOT_A_DURATION)],
        ),
        (
            up(&format!(
                "{a}, tls: {{ client_cert: c.pem, client_key: k.pem }}"
            )),
            &[(
                "upstreams[0].tls",
                "is set but the url is http://; use https:// or remove `tls`",
            )],
        ),
        (
            up(&https("tls: { client_cert: c.pem }")),
            &[(
                "upstreams[0].tls.client_key",
                "is required with `client_cert`",
            )],
        ),
        (
            up(&https("tls: { client_key: k.pem }")),
            &[(
                "upstreams[0].tls.client_cert",
                "is required with `client_key`",
            )],
        ),
    ];
    for (key, want) in [
        ("connect", &[("upstreams[0].timeouts.connect", ZERO)]),
        ("read", &[("upstreams[0].timeouts.read", ZERO)]),
        ("write", &[("upstreams[0].timeouts.write", ZERO)]),
        (
            "stream_idle",
            &[("upstreams[0].timeouts.stream_idle", ZERO)],
        ),
    ] {
        cases.push((up(&format!("{a}, timeouts: {{ {key}: 0s }}")), want));
    }
    expect(&cases);
}

fn https(rest: &str) -> String {
    format!("name: a, url: 'https://127.0.0.1:1', credentials: none, {rest}")
}

#[test]
fn upstream_health_and_stale() {
    let a = "name: a, url: 'http://127.0.0.1:1', credentials: none";
    expect(&[
        (
            up(&format!("{a}, health: {{ open_after: 0 }}")),
            &[("upstreams[0].health.open_after", ONE)],
        ),
        (
            up(&format!("{a}, health: {{ retry_after: 0s }}")),
            &[("upstreams[0].health.retry_after", ZERO)],
        ),
        (
            up(&format!("{a}, health: {{ max_retry_after: 0s }}")),
            &[("upstreams[0].health.max_retry_after", ZERO)],
        ),
        (
            up(&format!("{a}, health: {{ retry_after: 10s, max_retry_after: 5s }}")),
            &[(
                "upstreams[0].health.max_retry_after",
                "must not be shorter than retry_after",
            )],
        ),
        (
            up(&format!("{a}, stale: {{ on: [401, 418] }}")),
            &[(
                "upstreams[0].stale.on[1]",
                "`418`: must be one of 401, 403, 429, 5xx, timeout, connect_error, token_unavailable",
            )],
        ),
        (
            up(&format!("{a}, stale: {{ max_stale: 0s }}")),
            &[("upstreams[0].stale.max_stale", ZERO)],
        ),
        (
            up(&format!("{a}, stale: {{ origin_directives: obey }}")),
            &[(
                "upstreams[0].stale.origin_directives",
                "`obey`: must be `honor` or `ignore`",
            )],
        ),
    ]);
}
