//! `credentials.inject`: the values a request carries, and the
//! `tokens[].fields` of structured tokens they are made of.

use super::super::*;
use super::is_reserved_header;

/// The most values one credential injects.
const MAX_VALUES: usize = 8;

/// `inject`: one target or a list; absent, `Authorization: Bearer <token>`.
pub(super) fn injection(c: &mut Check, at: &str, inj: Option<&FileInjectField>) -> Injection {
    let Some(FileInjectField(list)) = inj else {
        return Injection::default();
    };
    let one = list.len() == 1;
    if list.is_empty() {
        c.err(
            format!("{at}.inject"),
            "lists no target: leave `inject` out for `Authorization: Bearer <token>`",
        );
        return Injection::default();
    }
    if list.len() > MAX_VALUES {
        c.err(
            format!("{at}.inject"),
            format!("{} targets: at most {MAX_VALUES}", list.len()),
        );
    }
    let mut values = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let tat = match one {
            true => format!("{at}.inject"),
            false => format!("{at}.inject[{i}]"),
        };
        if let Some(v) = target(c, &tat, t) {
            values.push(v);
        }
    }
    let inject = Injection::Values(values);
    let structured = inject.structured();
    for (i, v) in inject.values().iter().enumerate() {
        let tat = match one {
            true => format!("{at}.inject"),
            false => format!("{at}.inject[{i}]"),
        };
        let (place, same) = match &v.place {
            Place::Header(h) => (
                format!("header `{h}`"),
                inject.values()[..i]
                    .iter()
                    .any(|o| matches!(&o.place, Place::Header(x) if x.eq_ignore_ascii_case(h))),
            ),
            Place::Query(q) => (
                format!("query parameter `{q}`"),
                inject.values()[..i]
                    .iter()
                    .any(|o| o.place == Place::Query(q.clone())),
            ),
        };
        if same {
            c.err(
                &tat,
                format!("the {place} is already a target: each gets one value"),
            );
        }
        if structured && v.form.parts().any(|p| *p == Part::Token) {
            c.err(
                &tat,
                "the tokens are structured (another target names a field with `from`): name the field this value is, too",
            );
        }
    }
    if inject.values().len() == list.len() && values_fixed(&inject) {
        c.err(
            format!("{at}.inject"),
            "no value comes from the token: every part is written in the config",
        );
    }
    inject
}

/// Whether every part of every value is a literal.
fn values_fixed(inject: &Injection) -> bool {
    inject
        .values()
        .iter()
        .all(|v| v.form.parts().all(|p| matches!(p, Part::Literal(_))))
}

/// One target of `inject`.
fn target(c: &mut Check, at: &str, t: &FileInject) -> Option<InjectValue> {
    let part = match &t.from {
        Some(f) => field(c, &format!("{at}.from"), f).map(Part::Field)?,
        None => Part::Token,
    };
    if let Some(b) = &t.basic {
        if t.query.is_some() || t.prefix.is_some() || t.from.is_some() {
            c.err(
                at,
                "`basic` is a whole `Authorization` value: it takes no `query`, `prefix` or `from` (name fields inside `basic`)",
            );
            return None;
        }
        let name = t
            .header
            .clone()
            .unwrap_or_else(|| defaults::INJECT_HEADER.into());
        header_name(c, &format!("{at}.header"), &name)?;
        return basic(c, &format!("{at}.basic"), b).map(|form| InjectValue {
            place: Place::Header(name),
            form,
        });
    }
    if let Some(q) = &t.query {
        if t.header.is_some() || t.prefix.is_some() {
            c.err(
                at,
                "set either `header` (with optional `prefix`) or `query`, not both",
            );
            return None;
        }
        if q.is_empty()
            || !q
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        {
            c.err(
                format!("{at}.query"),
                format!("`{q}` is not a plain query parameter name"),
            );
            return None;
        }
        return Some(InjectValue {
            place: Place::Query(q.clone()),
            form: ValueForm::Plain {
                prefix: String::new(),
                part,
            },
        });
    }
    let name = t
        .header
        .clone()
        .unwrap_or_else(|| defaults::INJECT_HEADER.into());
    header_name(c, &format!("{at}.header"), &name)?;
    let prefix = t
        .prefix
        .clone()
        .unwrap_or_else(|| Injection::default_prefix(&name).into());
    if prefix.bytes().any(|b| b.is_ascii_control()) {
        c.err(
            format!("{at}.prefix"),
            "must not contain control characters",
        );
        return None;
    }
    Some(InjectValue {
        place: Place::Header(name),
        form: ValueForm::Plain { prefix, part },
    })
}

fn header_name(c: &mut Check, at: &str, name: &str) -> Option<()> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        c.err(at, format!("`{name}` is not a valid header name"));
        return None;
    }
    if is_reserved_header(name) {
        c.err(
            at,
            format!("`{name}` is a hop-by-hop or framing header and cannot carry a token"),
        );
        return None;
    }
    Some(())
}

/// A field name: what `from` and `tokens[].fields` say.
fn field(c: &mut Check, at: &str, name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !ok {
        c.err(
            at,
            format!("`{name}` is not a field name (letters, digits, `_`, `-`, `.`; at most 64)"),
        );
        return None;
    }
    Some(name.to_string())
}

/// `basic: { user, password }`: the part left out is the token.
fn basic(c: &mut Check, at: &str, b: &FileBasic) -> Option<ValueForm> {
    let mut part = |name: &str, p: Option<&FileBasicPart>| -> Option<Part> {
        Some(match p {
            None => Part::Token,
            Some(FileBasicPart::Field(f)) => {
                field(c, &format!("{at}.{name}.from"), &f.from).map(Part::Field)?
            }
            Some(FileBasicPart::Literal(l)) => {
                if l.bytes().any(|b| b.is_ascii_control()) {
                    c.err(
                        format!("{at}.{name}"),
                        "must not contain control characters",
                    );
                    return None;
                }
                Part::Literal(l.clone())
            }
        })
    };
    if b.user.is_none() && b.password.is_none() {
        c.err(
            at,
            "set `user` or `password` (the one left out is the token), or both as `{ from: FIELD }`",
        );
        return None;
    }
    let user = part("user", b.user.as_ref());
    let password = part("password", b.password.as_ref());
    let (user, password) = (user?, password?);
    if let Part::Literal(u) = &user {
        if u.contains(':') {
            c.err(
                format!("{at}.user"),
                "a Basic user name cannot hold `:` (RFC 7617)",
            );
            return None;
        }
    }
    Some(ValueForm::Basic { user, password })
}

/// `tokens[i].fields`: each named field from its own file, variable or
/// command.
pub(super) fn fields(
    c: &mut Check,
    tat: &str,
    map: &std::collections::BTreeMap<String, FileAwsPart>,
) -> Option<SourceSpec> {
    let at = format!("{tat}.fields");
    if map.is_empty() {
        c.err(&at, "names no field");
        return None;
    }
    let mut parts = Vec::with_capacity(map.len());
    let mut ok = true;
    for (name, p) in map {
        let pat = format!("{at}.{name}");
        ok &= field(c, &pat, name).is_some();
        match super::sigv4::part_source(c, &pat, p) {
            Some(s) => parts.push((name.clone(), s)),
            None => ok = false,
        }
    }
    ok.then_some(SourceSpec::Fields(parts))
}

/// Each token fits the injection: structured tokens (values named by
/// `from`) come from a JSON file, variable or command, or from `fields`
/// holding every field named; a token injected whole is no `fields` map.
pub(super) fn fit(c: &mut Check, at: &str, inject: &Injection, tokens: &[TokenSpec]) {
    if matches!(inject, Injection::SigV4(_)) {
        return;
    }
    let structured = inject.structured();
    for (i, t) in tokens.iter().enumerate() {
        let tat = format!("{at}.tokens[{i}]");
        match (&t.source, structured) {
            (SourceSpec::Fields(_), false) => c.err(
                format!("{tat}.fields"),
                "the token has fields but `inject` takes none: name each with `from:` in `inject`",
            ),
            (SourceSpec::Fields(parts), true) => {
                for f in inject.fields() {
                    if !parts.iter().any(|(n, _)| n == f) {
                        c.err(
                            format!("{tat}.fields"),
                            format!("has no `{f}`, which `inject` takes a value from"),
                        );
                    }
                }
            }
            (SourceSpec::OAuth2(_), true) => c.err(
                format!("{tat}.oauth2"),
                "an OAuth2 access token is one value: `inject` names fields (`from`), which need a JSON token or `fields`",
            ),
            _ => {}
        }
    }
}
