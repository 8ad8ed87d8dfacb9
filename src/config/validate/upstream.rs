//! One `upstreams[]` entry: URL, route, timeouts, TLS, health, stale
//! policy, methods, upgrades and streams, with its credentials from
//! [`super::credentials`](mod@super::credentials).

use super::*;

pub(super) fn upstream(c: &mut Check, at: &str, u: &FileUpstream) -> UpstreamConfig {
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
    .unwrap_or_default();

    let m = u.route.as_ref();
    let default_route = RouteMatch::default();
    let path_prefix = m
        .and_then(|m| m.path_prefix.clone())
        .unwrap_or(default_route.path_prefix);
    if !path_prefix.starts_with('/') {
        c.err(
            format!("{at}.match.path_prefix"),
            format!("`{path_prefix}` must start with `/`"),
        );
    }
    let host = m
        .and_then(|m| m.host.as_ref())
        .map(|h| h.to_ascii_lowercase())
        .or(default_route.host);
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
    let d = Timeouts::default();
    let timeouts = Timeouts {
        connect: c.positive_duration(
            &format!("{at}.timeouts.connect"),
            &t.and_then(|t| t.connect.clone()),
            d.connect,
        ),
        read: c.positive_duration(
            &format!("{at}.timeouts.read"),
            &t.and_then(|t| t.read.clone()),
            d.read,
        ),
        write: c.positive_duration(
            &format!("{at}.timeouts.write"),
            &t.and_then(|t| t.write.clone()),
            d.write,
        ),
        stream_idle: c.positive_duration(
            &format!("{at}.timeouts.stream_idle"),
            &t.and_then(|t| t.stream_idle.clone()),
            d.stream_idle,
        ),
    };

    let ft = u.tls.as_ref();
    let tls = tls_settings(
        c,
        ft.map(|t| FileTls {
            ca_file: t.ca_file.clone(),
            verify: t.verify,
        })
        .as_ref(),
    );
    let client_cert = client_cert(c, at, ft);
    let tls_set = tls.ca_file.is_some() || !tls.verify || client_cert.is_some();
    if tls_set && !url.tls && !url.original.is_empty() {
        c.err(
            format!("{at}.tls"),
            "is set but the url is http://; use https:// or remove `tls`",
        );
    }
    // The CA file is read (every certificate parsed) by `generation::build`,
    // and so are the client certificate and key.

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
    let d = HealthPolicy::default();
    let health = HealthPolicy {
        open_after: c.at_least_one(
            &format!("{at}.health.open_after"),
            h.and_then(|h| h.open_after),
            d.open_after,
        ),
        retry_after: c.positive_duration(
            &format!("{at}.health.retry_after"),
            &h.and_then(|h| h.retry_after.clone()),
            d.retry_after,
        ),
        max_retry_after: c.positive_duration(
            &format!("{at}.health.max_retry_after"),
            &h.and_then(|h| h.max_retry_after.clone()),
            d.max_retry_after,
        ),
    };
    if health.max_retry_after < health.retry_after {
        c.err(
            format!("{at}.health.max_retry_after"),
            "must not be shorter than retry_after",
        );
    }

    let st = u.stale.as_ref();
    let d = StalePolicy::default();
    let on = match st.and_then(|s| s.on.as_ref()) {
        None => d.on,
        Some(list) => {
            let mut on = StaleTriggers::NONE;
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
            d.max_stale,
        ),
        warning_header: st
            .and_then(|s| s.warning_header)
            .unwrap_or(d.warning_header),
        honor_origin_directives: match st.and_then(|s| s.origin_directives.as_deref()) {
            None => d.honor_origin_directives,
            Some("honor") => true,
            Some("ignore") => false,
            Some(other) => {
                c.err(
                    format!("{at}.stale.origin_directives"),
                    format!("`{other}`: must be `honor` or `ignore`"),
                );
                d.honor_origin_directives
            }
        },
        scrub_bodies: st.and_then(|s| s.scrub_bodies).unwrap_or(d.scrub_bodies),
    };

    let methods = methods(c, &format!("{at}.methods"), u.methods.as_deref());

    let dns_refresh = c.duration(
        &format!("{at}.dns_refresh"),
        &u.dns_refresh,
        defaults::DNS_REFRESH,
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
        stream: u.stream.unwrap_or(defaults::STREAM),
        cache: upstream_cache(c, at, u.cache.as_ref()),
        http: http_version(c, at, u.http.as_deref()),
        name,
        url,
        route,
        timeouts,
        tls,
        client_cert,
        credentials,
        health,
        stale,
    }
}

/// `upstreams[].http`.
fn http_version(c: &mut Check, at: &str, v: Option<&str>) -> HttpVersion {
    match v {
        None => HttpVersion::default(),
        Some(v) => match HttpVersion::ALL.iter().find(|h| h.as_str() == v) {
            Some(h) => *h,
            None => {
                c.err(
                    format!("{at}.http"),
                    format!("must be `auto`, `h1` or `h2`, not `{}`", v.escape_debug()),
                );
                HttpVersion::default()
            }
        },
    }
}

/// `upstreams[].cache`.
fn upstream_cache(c: &mut Check, at: &str, f: Option<&FileUpstreamCache>) -> UpstreamCache {
    let d = UpstreamCache::default();
    let fresh = match f.and_then(|f| f.fresh.as_deref()) {
        None => d.fresh,
        Some("off") => FreshPolicy::Off,
        Some("honor") => FreshPolicy::Honor,
        Some(other) => {
            c.err(
                format!("{at}.cache.fresh"),
                format!("must be `off` or `honor`, not `{}`", other.escape_debug()),
            );
            d.fresh
        }
    };
    UpstreamCache { fresh }
}

/// `tls.client_cert` and `tls.client_key`: both or neither.
fn client_cert(c: &mut Check, at: &str, t: Option<&FileUpstreamTls>) -> Option<ClientCertFiles> {
    let t = t?;
    match (&t.client_cert, &t.client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(ClientCertFiles {
            cert: c.path(cert),
            key: c.path(key),
        }),
        (Some(_), None) => {
            c.err(
                format!("{at}.tls.client_key"),
                "is required with `client_cert`",
            );
            None
        }
        (None, Some(_)) => {
            c.err(
                format!("{at}.tls.client_cert"),
                "is required with `client_key`",
            );
            None
        }
    }
}
