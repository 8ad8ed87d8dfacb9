//! `credentials.inject` with several values, HTTP Basic and structured
//! tokens (`from`, `tokens[].fields`).

use super::*;

const JSON: &str = "tokens: [{ file: t.json }]";

#[test]
fn several_values_and_basic_are_read_as_written() {
    let yaml = cred(
        "inject: [{ header: X-Api-Key, from: key_id }, { query: sig, from: secret }, { header: X-Basic, basic: { user: { from: key_id }, password: { from: secret } } }], \
         tokens: [{ file: t.json }, { fields: { key_id: { env: K }, secret: { file: s } } }]",
    );
    let cfg = crate::config::parse(&yaml, Path::new("/cfg")).expect("valid");
    let cr = cfg.upstreams[0].credentials.as_ref().unwrap();
    let field = |f: &str| Part::Field(f.into());
    assert_eq!(
        cr.inject,
        Injection::Values(vec![
            InjectValue {
                place: Place::Header("X-Api-Key".into()),
                form: ValueForm::Plain {
                    prefix: String::new(),
                    part: field("key_id")
                },
            },
            InjectValue {
                place: Place::Query("sig".into()),
                form: ValueForm::Plain {
                    prefix: String::new(),
                    part: field("secret")
                },
            },
            InjectValue {
                place: Place::Header("X-Basic".into()),
                form: ValueForm::Basic {
                    user: field("key_id"),
                    password: field("secret")
                },
            },
        ])
    );
    assert_eq!(
        cr.tokens[1].source,
        SourceSpec::Fields(vec![
            ("key_id".into(), SourceSpec::Env("K".into())),
            ("secret".into(), SourceSpec::File("/cfg/s".into())),
        ])
    );
    assert!(cfg.token_files().contains(&PathBuf::from("/cfg/s")));

    let basic = cred("inject: { basic: { user: reporting } }, tokens: [{ file: p }]");
    let cfg = crate::config::parse(&basic, Path::new("/cfg")).expect("valid");
    assert_eq!(
        cfg.upstreams[0].credentials.as_ref().unwrap().inject,
        Injection::Values(vec![InjectValue {
            place: Place::Header("Authorization".into()),
            form: ValueForm::Basic {
                user: Part::Literal("reporting".into()),
                password: Part::Token
            },
        }])
    );
}

#[test]
fn bad_targets_are_named() {
    let at = "upstreams[0].credentials.inject";
    expect(&[
        (
            cred(&format!("inject: [], {JSON}")),
            &[(at, "lists no target: leave `inject` out for `Authorization: Bearer <token>`")],
        ),
        (
            cred(&format!(
                "inject: [{{ header: X-A, from: a }}, {{ header: x-a, from: b }}], {JSON}"
            )),
            &[(
                "upstreams[0].credentials.inject[1]",
                "the header `x-a` is already a target: each gets one value",
            )],
        ),
        (
            cred(&format!(
                "inject: [{{ query: k, from: a }}, {{ query: k, from: b }}], {JSON}"
            )),
            &[(
                "upstreams[0].credentials.inject[1]",
                "the query parameter `k` is already a target: each gets one value",
            )],
        ),
        (
            cred(&format!(
                "inject: [{{ header: X-A, from: a }}, {{ header: X-B }}], {JSON}"
            )),
            &[(
                "upstreams[0].credentials.inject[1]",
                "the tokens are structured (another target names a field with `from`): name the field this value is, too",
            )],
        ),
        (
            cred(&format!(
                "inject: [{{ header: Transfer-Encoding, from: a }}], {JSON}"
            )),
            &[(
                "upstreams[0].credentials.inject.header",
                "`Transfer-Encoding` is a hop-by-hop or framing header and cannot carry a token",
            )],
        ),
        (
            cred(&format!("inject: {{ header: X-A, from: 'a b' }}, {JSON}")),
            &[(
                "upstreams[0].credentials.inject.from",
                "`a b` is not a field name (letters, digits, `_`, `-`, `.`; at most 64)",
            )],
        ),
        (
            cred(&format!("inject: {{ basic: {{}} }}, {JSON}")),
            &[(
                "upstreams[0].credentials.inject.basic",
                "set `user` or `password` (the one left out is the token), or both as `{ from: FIELD }`",
            )],
        ),
        (
            cred(&format!("inject: {{ basic: {{ user: 'a:b' }} }}, {JSON}")),
            &[(
                "upstreams[0].credentials.inject.basic.user",
                "a Basic user name cannot hold `:` (RFC 7617)",
            )],
        ),
        (
            cred(&format!(
                "inject: {{ basic: {{ user: u, password: p }} }}, {JSON}"
            )),
            &[(at, "no value comes from the token: every part is written in the config")],
        ),
        (
            cred(&format!("inject: {{ basic: {{ user: u }}, prefix: 'X ' }}, {JSON}")),
            &[(
                at,
                "`basic` is a whole `Authorization` value: it takes no `query`, `prefix` or `from` (name fields inside `basic`)",
            )],
        ),
        (
            cred(&format!(
                "inject: {{ header: X-A }}, sticky_header: x-a, {JSON}"
            )),
            &[(
                "upstreams[0].credentials.sticky_header",
                "`x-a` is a header the token is injected into: graceway replaces it",
            )],
        ),
    ]);
}

#[test]
fn tokens_must_fit_the_fields() {
    let fields = "inject: [{ header: X-A, from: key_id }, { header: X-B, from: secret }]";
    expect(&[
        (
            cred(&format!(
                "{fields}, tokens: [{{ fields: {{ key_id: {{ file: k }} }} }}]"
            )),
            &[(
                "upstreams[0].credentials.tokens[0].fields",
                "has no `secret`, which `inject` takes a value from",
            )],
        ),
        (
            cred("tokens: [{ fields: { key_id: { file: k } } }]"),
            &[(
                "upstreams[0].credentials.tokens[0].fields",
                "the token has fields but `inject` takes none: name each with `from:` in `inject`",
            )],
        ),
        (
            cred(&format!(
                "{fields}, tokens: [{{ fields: {{ key_id: {{ file: k, env: K }}, secret: {{ env: S }} }} }}]"
            )),
            &[(
                "upstreams[0].credentials.tokens[0].fields.key_id",
                "set exactly one of `file` (a path), `env` (a variable name) or `command` ([program, args...])",
            )],
        ),
        (
            cred(&format!(
                "{fields}, tokens: [{{ oauth2: {{ token_url: 'http://127.0.0.1:1/t', client_id: c, client_secret_env: S }} }}]"
            )),
            &[(
                "upstreams[0].credentials.tokens[0].oauth2",
                "an OAuth2 access token is one value: `inject` names fields (`from`), which need a JSON token or `fields`",
            )],
        ),
        (
            cred("tokens: [{ fields: {} }]"),
            &[("upstreams[0].credentials.tokens[0].fields", "names no field")],
        ),
    ]);
}
