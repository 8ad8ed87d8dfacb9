//! `credentials`: injection, token sources (OAuth2 included), probe,
//! failover and suspicion settings.

use super::*;

mod inject;
pub(super) mod sigv4;

pub(super) fn credentials(c: &mut Check, at: &str, cr: &FileCredentials) -> Credentials {
    let inj = cr.inject.as_ref();
    if let (Some(_), Some(_)) = (&cr.sigv4, inj) {
        c.err(
            format!("{at}.sigv4"),
            "set either `inject` or `sigv4`: a signed request carries its credential in the signature",
        );
    }
    let inject = match (&cr.sigv4, inj) {
        (Some(s), _) => sigv4::sigv4(c, at, s),
        (None, inj) => inject::injection(c, at, inj),
    };

    if cr.tokens.is_empty() {
        c.err(
            format!("{at}.tokens"),
            "at least one token source is required",
        );
    }
    let signs = matches!(inject, Injection::SigV4(_));
    let mut tokens = Vec::new();
    for (i, t) in cr.tokens.iter().enumerate() {
        let tat = format!("{at}.tokens[{i}]");
        let set = [
            t.file.is_some(),
            t.env.is_some(),
            t.command.is_some(),
            t.oauth2.is_some(),
            t.aws.is_some(),
            t.fields.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            c.err(
                &tat,
                if signs {
                    "set exactly one of `aws`, `file` or `command` (the last two: the AWS `credential_process` JSON)"
                } else {
                    "set exactly one of `file`, `env`, `command`, `oauth2` or `fields`"
                },
            );
            continue;
        }
        if signs && (t.env.is_some() || t.oauth2.is_some() || t.fields.is_some()) {
            c.err(
                &tat,
                "a `sigv4` token is an AWS credential set: `aws`, or a `file` or `command` with the `credential_process` JSON",
            );
            continue;
        }
        if !signs && t.aws.is_some() {
            c.err(
                format!("{tat}.aws"),
                "an AWS credential set is for `credentials.sigv4`: set it to sign requests",
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
        } else if let Some(f) = &t.fields {
            match inject::fields(c, &tat, f) {
                Some(spec) => spec,
                None => continue,
            }
        } else if let Some(a) = &t.aws {
            match sigv4::aws(c, &tat, a) {
                Some(spec) => SourceSpec::Aws(Box::new(spec)),
                None => continue,
            }
        } else if let Some(o) = &t.oauth2 {
            match super::oauth2::oauth2(c, &format!("{tat}.oauth2"), o) {
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
            let refresh = c.optional_positive_duration(&format!("{tat}.refresh"), &t.refresh);
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
                    defaults::COMMAND_TIMEOUT,
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
                defaults::PROBE_INTERVAL,
            ),
        }
    });
    let preflight = cr.preflight.unwrap_or(defaults::PREFLIGHT);
    if preflight && probe.is_none() {
        c.err(
            format!("{at}.preflight"),
            "needs `probe`: the new token is tried with the probe request before it is swapped in",
        );
    }

    let failover_on = match &cr.failover_on {
        None => FailoverOn::default(),
        Some(list) => {
            let mut on = FailoverOn::NONE;
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

    let suspect_after = c.at_least_one(
        &format!("{at}.suspect_after"),
        cr.suspect_after,
        defaults::SUSPECT_AFTER,
    );
    inject::fit(c, at, &inject, &tokens);
    let (select, sticky_header, queue) = pool(c, at, cr, &inject);
    Credentials {
        failover_on,
        suspect_after,
        select,
        sticky_header,
        queue,
        inject,
        tokens,
        expires_warning: c.duration(
            &format!("{at}.expires_warning"),
            &cr.expires_warning,
            defaults::EXPIRES_WARNING,
        ),
        probe,
        preflight,
    }
}

/// `select`, `sticky_header` and `queue`: how requests share the tokens.
fn pool(
    c: &mut Check,
    at: &str,
    cr: &FileCredentials,
    inject: &Injection,
) -> (Select, Option<http::HeaderName>, TokenQueue) {
    let select = match cr.select.as_deref() {
        None => Select::default(),
        Some("failover") => Select::Failover,
        Some("round_robin") => Select::RoundRobin,
        Some("most_remaining") => Select::MostRemaining,
        Some(other) => {
            c.err(
                format!("{at}.select"),
                format!("`{other}`: must be `failover`, `round_robin` or `most_remaining`"),
            );
            Select::default()
        }
    };
    let sticky_header = cr.sticky_header.as_ref().and_then(|name| {
        let path = format!("{at}.sticky_header");
        let injected = inject.injects_header(name);
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Err(_) => c.err(path, format!("`{name}` is not a valid header name")),
            Ok(_) if is_reserved_header(name) => c.err(
                path,
                format!(
                    "`{name}` is a hop-by-hop or framing header: it says nothing about the client"
                ),
            ),
            Ok(_) if injected => c.err(
                path,
                format!("`{name}` is a header the token is injected into: graceway replaces it"),
            ),
            Ok(h) => return Some(h),
        }
        None
    });
    let d = TokenQueue::default();
    let queue = match &cr.queue {
        None => d,
        Some(q) => {
            let max_wait = c.duration(&format!("{at}.queue.max_wait"), &q.max_wait, d.max_wait);
            if max_wait > defaults::QUEUE_MAX_WAIT_LIMIT {
                c.err(
                    format!("{at}.queue.max_wait"),
                    format!(
                        "at most {}s: a reset further away is answered at once with `Retry-After`",
                        defaults::QUEUE_MAX_WAIT_LIMIT.as_secs()
                    ),
                );
            }
            let max_queued = q.max_queued.unwrap_or(d.max_queued);
            if max_queued == 0 && !max_wait.is_zero() {
                c.err(
                    format!("{at}.queue.max_queued"),
                    "must be at least 1 when `max_wait` is set (or set `max_wait: 0s` to wait never)",
                );
            }
            TokenQueue {
                max_wait,
                max_queued,
            }
        }
    };
    (select, sticky_header, queue)
}

pub(super) fn credential(
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

/// Headers a token may not be injected into: hop-by-hop and framing.
fn is_reserved_header(name: &str) -> bool {
    is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length")
}
