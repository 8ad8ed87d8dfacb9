//! `credentials.sigv4` and the AWS credential sets of its `tokens`.

use super::*;

/// `credentials.sigv4`: the region, service and payload mode.
pub(super) fn sigv4(c: &mut Check, at: &str, s: &FileSigV4) -> Injection {
    let at = format!("{at}.sigv4");
    let region = s.region.clone().unwrap_or_default();
    if region.is_empty() {
        c.err(format!("{at}.region"), "is required, e.g. `eu-west-1`");
    } else if !is_region(&region) {
        c.err(
            format!("{at}.region"),
            format!("`{region}` is not an AWS region name (like `eu-west-1` or `us-gov-west-1`)"),
        );
    }
    let service = s.service.clone().unwrap_or_default();
    if service.is_empty() {
        c.err(
            format!("{at}.service"),
            "is required: the signing name, e.g. `execute-api`, `s3`, `es`",
        );
    } else if !service
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        c.err(
            format!("{at}.service"),
            format!("`{service}`: a signing name is lower-case letters, digits and `-`"),
        );
    }
    let payload = match s.payload.as_deref() {
        None => Payload::default(),
        Some("signed") => Payload::Signed,
        Some("unsigned") => Payload::Unsigned,
        Some(other) => {
            c.err(
                format!("{at}.payload"),
                format!("`{other}`: must be `signed` or `unsigned`"),
            );
            Payload::default()
        }
    };
    Injection::SigV4(SigV4Spec {
        region,
        service,
        payload,
    })
}

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`, `eusc-de-east-1`: lower-case
/// words joined by `-`, the first of 2 to 4 letters, the last a number.
pub(crate) fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    let word = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    parts.len() >= 3
        && (2..=4).contains(&parts[0].len())
        && parts[..parts.len() - 1].iter().all(word)
        && parts
            .last()
            .is_some_and(|n| (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `tokens[i].aws`: exactly one of the parts, `environment: true`, or the
/// shared credentials file.
pub(super) fn aws(c: &mut Check, tat: &str, a: &FileAws) -> Option<AwsSource> {
    let at = format!("{tat}.aws");
    let parts = a.access_key_id.is_some() || a.secret_access_key.is_some();
    let shared = a.profile.is_some() || a.credentials_file.is_some();
    let env = a.environment.is_some();
    if usize::from(parts) + usize::from(shared) + usize::from(env) != 1
        || (a.session_token.is_some() && !parts)
    {
        c.err(
            &at,
            "set exactly one of: `access_key_id` + `secret_access_key` (+ `session_token`), \
             `environment: true`, or `profile` / `credentials_file`",
        );
        return None;
    }
    if env {
        if a.environment == Some(false) {
            c.err(
                format!("{at}.environment"),
                "only `true` means something here: leave the key out instead",
            );
        }
        return Some(AwsSource::Environment);
    }
    if shared {
        if let Some(p) = &a.profile {
            if p.is_empty() || p.contains([']', '\n']) {
                c.err(format!("{at}.profile"), "is not a profile name");
            }
        }
        if a.credentials_file.as_deref() == Some("") {
            c.err(format!("{at}.credentials_file"), "must not be empty");
        }
        return Some(AwsSource::Shared {
            file: a.credentials_file.as_ref().map(|f| c.path(f)),
            profile: a.profile.clone(),
        });
    }
    let mut part = |name: &str, p: Option<&FileAwsPart>| -> Option<SourceSpec> {
        let pat = format!("{at}.{name}");
        let Some(p) = p else {
            c.err(pat, "is required with the other part");
            return None;
        };
        part_source(c, &pat, p)
    };
    let access_key_id = part("access_key_id", a.access_key_id.as_ref());
    let secret_access_key = part("secret_access_key", a.secret_access_key.as_ref());
    let session_token = match &a.session_token {
        Some(p) => Some(part("session_token", Some(p))?),
        None => None,
    };
    Some(AwsSource::Parts {
        access_key_id: access_key_id?,
        secret_access_key: secret_access_key?,
        session_token,
    })
}

/// One part from its own file, variable or command (an AWS credential's
/// part, a structured token's field).
pub(super) fn part_source(c: &mut Check, pat: &str, p: &FileAwsPart) -> Option<SourceSpec> {
    match (&p.file, &p.env, &p.command) {
        (Some(f), None, None) if !f.is_empty() => Some(SourceSpec::File(c.path(f))),
        (None, Some(e), None) if !e.is_empty() && !e.contains(['=', '\0']) => {
            Some(SourceSpec::Env(e.clone()))
        }
        (None, None, Some(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => {
            Some(SourceSpec::Command {
                argv: argv.clone(),
                refresh: None,
                timeout: defaults::COMMAND_TIMEOUT,
            })
        }
        _ => {
            c.err(
                pat,
                "set exactly one of `file` (a path), `env` (a variable name) or `command` ([program, args...])",
            );
            None
        }
    }
}
