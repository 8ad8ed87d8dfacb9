//! `upstreams[].credentials` errors, OAuth2 sources included.

use super::*;

#[test]
fn credentials_injection() {
    let t = "tokens: [{ file: t }]";
    expect(&[
        (
            cred(&format!("inject: {{ query: 'a b' }}, {t}")),
            &[(
                "upstreams[0].credentials.inject.query",
                "`a b` is not a plain query parameter name",
            )],
        ),
        (
            cred(&format!("inject: {{ query: k, header: X-Key }}, {t}")),
            &[(
                "upstreams[0].credentials.inject",
                "set either `header` (with optional `prefix`) or `query`, not both",
            )],
        ),
        (
            cred(&format!("inject: {{ header: 'Bad Header' }}, {t}")),
            &[(
                "upstreams[0].credentials.inject.header",
                "`Bad Header` is not a valid header name",
            )],
        ),
        (
            cred(&format!("inject: {{ header: Connection }}, {t}")),
            &[(
                "upstreams[0].credentials.inject.header",
                "`Connection` is a hop-by-hop or framing header and cannot carry a token",
            )],
        ),
        (
            cred(&format!("inject: {{ prefix: \"a\\tb\" }}, {t}")),
            &[(
                "upstreams[0].credentials.inject.prefix",
                "must not contain control characters",
            )],
        ),
    ]);
}

#[test]
fn credentials_tokens() {
    let at = "upstreams[0].credentials.tokens[0]";
    let many = vec!["{ file: t }"; 33].join(", ");
    expect(&[
        (
            cred("tokens: []"),
            &[(
                "upstreams[0].credentials.tokens",
                "at least one token source is required",
            )],
        ),
        (
            cred(&format!("tokens: [{many}]")),
            &[(
                "upstreams[0].credentials.tokens",
                "33 tokens: at most 32 per upstream",
            )],
        ),
        (
            cred("tokens: [{ file: t, env: T }]"),
            &[(
                at,
                "set exactly one of `file`, `env`, `command`, `oauth2` or `fields`",
            )],
        ),
        (
            cred("tokens: [{ file: t, refresh: 1m }]"),
            &[(
                at,
                "`refresh` and `timeout` apply to `command` sources only",
            )],
        ),
        (
            cred("tokens: [{ file: '' }]"),
            &[(
                "upstreams[0].credentials.tokens[0].file",
                "must not be empty",
            )],
        ),
        (
            cred("tokens: [{ env: 'A=B' }]"),
            &[(
                "upstreams[0].credentials.tokens[0].env",
                "is not a valid variable name",
            )],
        ),
        (
            cred("tokens: [{ command: [] }]"),
            &[(
                "upstreams[0].credentials.tokens[0].command",
                "must name a program: [\"program\", \"arg\", ...]",
            )],
        ),
        (
            cred("tokens: [{ command: [x], refresh: 500ms }]"),
            &[(
                "upstreams[0].credentials.tokens[0].refresh",
                "must be at least 1s",
            )],
        ),
        (
            cred("tokens: [{ command: [x], refresh: 0s }]"),
            &[("upstreams[0].credentials.tokens[0].refresh", ZERO)],
        ),
        (
            cred("tokens: [{ command: [x], refresh: soon }]"),
            &[("upstreams[0].credentials.tokens[0].refresh", NOT_A_DURATION)],
        ),
        (
            cred("tokens: [{ command: [x], timeout: 0s }]"),
            &[("upstreams[0].credentials.tokens[0].timeout", ZERO)],
        ),
        (
            cred("tokens: [{ file: t, expires_at: tomorrow }]"),
            &[(
                "upstreams[0].credentials.tokens[0].expires_at",
                "`tomorrow` is not a timestamp; write e.g. `2026-12-31T23:59:59Z`",
            )],
        ),
    ]);
}

#[test]
fn credentials_probe_failover_and_suspicion() {
    let t = "tokens: [{ file: t }]";
    expect(&[
        (
            cred(&format!("{t}, probe: {{ interval: 1m }}")),
            &[(
                "upstreams[0].credentials.probe.path",
                "is required and must start with `/`",
            )],
        ),
        (
            cred(&format!("{t}, probe: {{ path: /me, interval: 0s }}")),
            &[("upstreams[0].credentials.probe.interval", ZERO)],
        ),
        (
            cred(&format!("{t}, preflight: true")),
            &[(
                "upstreams[0].credentials.preflight",
                "needs `probe`: the new token is tried with the probe request before it is swapped in",
            )],
        ),
        (
            cred(&format!("{t}, failover_on: [401, 418]")),
            &[(
                "upstreams[0].credentials.failover_on[1]",
                "`418`: must be one of 401, 403, 429",
            )],
        ),
        (
            cred(&format!("{t}, suspect_after: 0")),
            &[("upstreams[0].credentials.suspect_after", ONE)],
        ),
        (
            cred(&format!("{t}, expires_warning: soon")),
            &[("upstreams[0].credentials.expires_warning", NOT_A_DURATION)],
        ),
    ]);
}

#[test]
fn credentials_pool_and_queue() {
    let t = "tokens: [{ file: t }, { file: u }]";
    let at = |k: &str| format!("upstreams[0].credentials.{k}");
    let (select, sticky) = (at("select"), at("sticky_header"));
    let (wait, queued) = (at("queue.max_wait"), at("queue.max_queued"));
    expect(&[
        (
            cred(&format!("{t}, select: random")),
            &[(
                select.as_str(),
                "`random`: must be `failover`, `round_robin` or `most_remaining`",
            )],
        ),
        (
            cred(&format!("{t}, sticky_header: 'x session'")),
            &[(sticky.as_str(), "`x session` is not a valid header name")],
        ),
        (
            cred(&format!("{t}, sticky_header: Connection")),
            &[(
                sticky.as_str(),
                "`Connection` is a hop-by-hop or framing header: it says nothing about the client",
            )],
        ),
        (
            cred(&format!("{t}, sticky_header: authorization")),
            &[(
                sticky.as_str(),
                "`authorization` is a header the token is injected into: graceway replaces it",
            )],
        ),
        (
            cred(&format!("{t}, queue: {{ max_wait: 2s, max_queued: 0 }}")),
            &[(
                queued.as_str(),
                "must be at least 1 when `max_wait` is set (or set `max_wait: 0s` to wait never)",
            )],
        ),
        (
            cred(&format!("{t}, queue: {{ max_wait: 10m }}")),
            &[(
                wait.as_str(),
                "at most 300s: a reset further away is answered at once with `Retry-After`",
            )],
        ),
        (
            cred(&format!("{t}, queue: {{ max_wait: soon }}")),
            &[(wait.as_str(), NOT_A_DURATION)],
        ),
        // Valid: each policy, a sticky header, a queue; no waiting with
        // no room is fine too.
        (
            cred(&format!(
                "{t}, select: round_robin, sticky_header: X-Session-Id, queue: {{ max_wait: 2s }}"
            )),
            &[],
        ),
        (
            cred(&format!(
                "{t}, select: most_remaining, queue: {{ max_wait: 0s, max_queued: 0 }}"
            )),
            &[],
        ),
    ]);
    let c = crate::config::parse(
        &cred(&format!(
            "{t}, select: most_remaining, sticky_header: X-Session-Id, queue: {{ max_wait: 1500ms }}"
        )),
        Path::new("/cfg"),
    )
    .expect("valid");
    let cr = c.upstreams[0].credentials.as_ref().unwrap();
    assert_eq!(cr.select, Select::MostRemaining);
    assert_eq!(cr.sticky_header.as_ref().unwrap().as_str(), "x-session-id");
    assert_eq!(cr.queue.max_wait, Duration::from_millis(1500));
    assert_eq!(cr.queue.max_queued, 100);
}

#[test]
fn credentials_oauth2() {
    let p = |k: &str| format!("upstreams[0].credentials.tokens[0].oauth2.{k}");
    let (url, id, secret) = (p("token_url"), p("client_id"), p("client_secret"));
    let (auth, fraction) = (p("client_auth"), p("refresh_fraction"));
    let (timeout, retry) = (p("timeout"), p("max_retry"));
    expect(&[
        (
            oauth2("client_id: c, client_secret_env: S"),
            &[(&*url, "is required: the https:// URL of the token endpoint")],
        ),
        (
            oauth2("token_url: 'https://u:p@idp.example/token', client_id: c, client_secret_env: S"),
            &[(
                &*url,
                "`https://u:p@idp.example` must not carry user info; put credentials in `credentials.tokens`",
            )],
        ),
        (
            oauth2("token_url: 'https://idp.example/token', client_secret_env: S"),
            &[(&*id, "set exactly one of `client_id`, `client_id_env` or `client_id_file`")],
        ),
        (
            oauth2("token_url: 'https://idp.example/token', client_id: c"),
            &[(&*secret, "set exactly one of `client_secret_env` or `client_secret_file`")],
        ),
        (
            oauth2(&format!("{IDP}, client_auth: jwt")),
            &[(&*auth, "`jwt`: must be `basic`, `body` or `private_key_jwt`")],
        ),
        (
            oauth2(&format!("{IDP}, client_auth: private_key_jwt")),
            &[
                (
                    &*"upstreams[0].credentials.tokens[0].oauth2.client_secret".to_string(),
                    "is not sent with this `client_auth`: remove it",
                ),
                (
                    &*"upstreams[0].credentials.tokens[0].oauth2.private_key_file".to_string(),
                    "is required: the PEM key (RSA or EC P-256) that signs the assertion",
                ),
            ],
        ),
        (
            oauth2("token_url: 'https://idp.example/token', grant: jwt_bearer, service_account_file: sa.json, private_key_file: k.pem"),
            &[(
                &*"upstreams[0].credentials.tokens[0].oauth2.private_key_file".to_string(),
                "a service account file brings its own key: set one of the two",
            )],
        ),
        (
            oauth2(&format!("{IDP}, grant: password, subject: me, extra_params: {{ scope: x, resource: '' }}")),
            &[
                (
                    &*"upstreams[0].credentials.tokens[0].oauth2.grant".to_string(),
                    "`password`: must be `client_credentials` or `jwt_bearer`",
                ),
                (
                    &*"upstreams[0].credentials.tokens[0].oauth2.subject".to_string(),
                    "needs `grant: jwt_bearer`",
                ),
                (
                    &*"upstreams[0].credentials.tokens[0].oauth2.extra_params.scope".to_string(),
                    "is a field graceway sets itself",
                ),
            ],
        ),
        (
            oauth2(&format!("{IDP}, refresh_fraction: 0.99")),
            &[(&*fraction, "must be between 0.1 and 0.95")],
        ),
        (oauth2(&format!("{IDP}, timeout: 0s")), &[(&*timeout, ZERO)]),
        (oauth2(&format!("{IDP}, max_retry: 0s")), &[(&*retry, ZERO)]),
    ]);
}

#[test]
fn credentials_oauth2_share_needs_the_sealed_fleet_tier() {
    let share = "upstreams[0].credentials.tokens[0].oauth2.share";
    let shared = oauth2(&format!("{IDP}, share: true"));
    let redis = "cache: { redis: { url: 'redis://127.0.0.1:6379' } }";
    let sealed = "cache: { redis: { url: 'redis://127.0.0.1:6379', secret_file: key } }";
    expect(&[
        (
            shared.clone(),
            &[(
                share,
                "needs `cache.redis` (the fleet tier the token is shared through) and `cache.redis.secret_file` (the key that seals it there)",
            )],
        ),
        (
            format!("{shared}{redis}\n"),
            &[(
                share,
                "needs `cache.redis.secret_file`: a shared token is stored sealed, never in clear",
            )],
        ),
        (format!("{shared}{sealed}\n"), &[]),
        // Off (the default) needs neither.
        (oauth2(&format!("{IDP}, share: false")), &[]),
    ]);
}

#[test]
fn credentials_sigv4() {
    let aws = "tokens: [{ aws: { environment: true } }]";
    expect(&[
        (
            cred(&format!("sigv4: {{ region: Europe, service: s3 }}, {aws}")),
            &[(
                "upstreams[0].credentials.sigv4.region",
                "`Europe` is not an AWS region name (like `eu-west-1` or `us-gov-west-1`)",
            )],
        ),
        (
            cred(&format!("sigv4: {{ region: eu-west-1, service: '' }}, {aws}")),
            &[(
                "upstreams[0].credentials.sigv4.service",
                "is required: the signing name, e.g. `execute-api`, `s3`, `es`",
            )],
        ),
        (
            cred(&format!(
                "sigv4: {{ region: eu-west-1, service: s3, payload: maybe }}, {aws}"
            )),
            &[(
                "upstreams[0].credentials.sigv4.payload",
                "`maybe`: must be `signed` or `unsigned`",
            )],
        ),
        (
            cred(&format!(
                "inject: {{ header: X-Key }}, sigv4: {{ region: eu-west-1, service: s3 }}, {aws}"
            )),
            &[(
                "upstreams[0].credentials.sigv4",
                "set either `inject` or `sigv4`: a signed request carries its credential in the signature",
            )],
        ),
        (
            cred("sigv4: { region: eu-west-1, service: s3 }, tokens: [{ env: K }]"),
            &[(
                "upstreams[0].credentials.tokens[0]",
                "a `sigv4` token is an AWS credential set: `aws`, or a `file` or `command` with the `credential_process` JSON",
            )],
        ),
        (
            cred("tokens: [{ aws: { environment: true } }]"),
            &[(
                "upstreams[0].credentials.tokens[0].aws",
                "an AWS credential set is for `credentials.sigv4`: set it to sign requests",
            )],
        ),
        (
            cred("sigv4: { region: eu-west-1, service: s3 }, tokens: [{ aws: { access_key_id: { file: k } } }]"),
            &[(
                "upstreams[0].credentials.tokens[0].aws.secret_access_key",
                "is required with the other part",
            )],
        ),
        (
            cred("sigv4: { region: eu-west-1, service: s3 }, tokens: [{ aws: { profile: p, environment: true } }]"),
            &[(
                "upstreams[0].credentials.tokens[0].aws",
                "set exactly one of: `access_key_id` + `secret_access_key` (+ `session_token`), `environment: true`, or `profile` / `credentials_file`",
            )],
        ),
    ]);
    for ok in [
        "eu-west-1",
        "us-gov-west-1",
        "cn-north-1",
        "eusc-de-east-1",
        "ap-southeast-2",
    ] {
        assert!(
            crate::config::validate::credentials::sigv4::is_region(ok),
            "{ok}"
        );
    }
    for bad in ["eu-west", "EU-WEST-1", "europe-1", "eu--1", "e-west-1"] {
        assert!(
            !crate::config::validate::credentials::sigv4::is_region(bad),
            "{bad}"
        );
    }
}
