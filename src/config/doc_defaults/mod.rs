//! `docs/configuration.md` checked against the code (unit tests only).
//!
//! Three checks, each reporting every mismatch at once:
//! 1. The reference lists exactly the keys the file schema accepts. The
//!    schema's keys are read from serde itself: an unknown key at each level
//!    makes it list the keys it expects.
//! 2. Every default the reference writes as a literal (the first `` `…` ``
//!    of its default column) means what leaving the key out means: a file
//!    with the key set to that literal validates to the same [`Config`] as
//!    the file without it.
//! 3. Every default in [`super::defaults`] is in the reference: a value as
//!    a literal, an unset key as "none", a value counted at start as prose.
//!    The table of them ([`code`]) takes each `Default` apart without
//!    `..`, so a new model field does not compile until it is listed there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_yaml::{Mapping, Value};

use crate::config::Config;

mod code;

use code::{code_defaults, Code, Code::Derived, Code::Unset};

/// A file that sets every section whose keys the checks must reach: an
/// https upstream with a command and an OAuth2 token, a probe, a SigV4
/// upstream, Redis and a webhook (their own required keys only).
const BASE: &str = r#"
upstreams:
  - name: a
    url: "https://127.0.0.1:1"
    credentials:
      tokens:
        - command: [x]
        - oauth2: { token_url: "https://idp.example/t", client_id: c, client_secret_env: S }
      probe: { path: /me }
  - name: b
    url: "https://127.0.0.1:2"
    match: { host: b.example }
    credentials:
      sigv4: { region: eu-west-1, service: execute-api }
      tokens:
        - aws: { environment: true }
cache:
  redis: { url: "redis://127.0.0.1:6379" }
alerts: { webhook: "https://hooks.example/x" }
"#;

const PROBE: &str = "zz_probe";

/// One row of the reference: its key(s) and its default column.
#[derive(Debug)]
struct Row {
    keys: Vec<String>,
    default: String,
}

/// The rows of the reference's key table.
fn reference() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let mut lines = text.lines().skip_while(|l| !l.starts_with("| key |"));
    let header = cells(lines.next().expect("a `| key | ... |` table"));
    let col = header
        .iter()
        .position(|c| c == "default")
        .expect("a default column");
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells = cells(l);
            Row {
                keys: keys_of(&cells[0]),
                default: cells.get(col).cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// A table line's cells (`\|` stays inside its cell).
fn cells(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if chars.peek() == Some(&'|') => cell.push(chars.next().unwrap_or('|')),
            '|' => out.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(ch),
        }
    }
    out
}

/// The `` `…` `` spans of a cell.
fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The keys a key cell names: `` `a.b.c` / `d` `` is `a.b.c` and `a.b.d`.
fn keys_of(cell: &str) -> Vec<String> {
    let spans = spans(cell);
    let Some(first) = spans.first() else {
        return Vec::new();
    };
    let parent = first.rsplit_once('.').map_or("", |(p, _)| p);
    let mut out = vec![first.to_string()];
    for s in &spans[1..] {
        out.push(if parent.is_empty() {
            s.to_string()
        } else {
            format!("{parent}.{s}")
        });
    }
    out
}

/// The default column's literal: its first `` `…` ``, when it opens with one.
fn literal(default: &str) -> Option<&str> {
    default
        .starts_with('`')
        .then(|| spans(default).first().copied())
        .flatten()
}

/// `base` with `key` (`a.b[].c`) set to `v`. In a list the item that
/// already has the next two keys is used (`upstreams[].credentials.sigv4.x`
/// goes to the SigV4 upstream), else the one with the next key when a key
/// follows it, else the first (`tokens[].oauth2.x` goes to the OAuth2
/// token, `tokens[].timeout` to the command, `upstreams[].match` to the
/// first upstream).
fn set(base: &Value, key: &str, v: Value) -> Value {
    fn walk(at: &mut Value, parts: &[&str], v: Value) {
        let (part, rest) = (parts[0], &parts[1..]);
        let (name, list) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        if !at.is_mapping() {
            *at = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = at else { return };
        if rest.is_empty() {
            map.insert(name.into(), v);
            return;
        }
        let child = map.entry(name.into()).or_insert(Value::Null);
        if !list {
            return walk(child, rest, v);
        }
        if !child.is_sequence() {
            *child = Value::Sequence(vec![Value::Mapping(Mapping::new())]);
        }
        let Value::Sequence(items) = child else {
            return;
        };
        let next = rest[0].trim_end_matches("[]");
        let deepest = items
            .iter()
            .enumerate()
            .map(|(i, it)| (depth(it, rest), std::cmp::Reverse(i)))
            .max()
            .filter(|(d, _)| *d >= 2)
            .map(|(_, std::cmp::Reverse(i))| i);
        // A key of the item itself goes to the first item (the second
        // upstream's own `match` keeps the two routes apart).
        let i = deepest
            .or_else(|| {
                (rest.len() > 1).then(|| items.iter().position(|it| it.get(next).is_some()))?
            })
            .unwrap_or(0);
        walk(&mut items[i], rest, v);
    }
    let mut out = base.clone();
    let parts: Vec<&str> = key.split('.').collect();
    walk(&mut out, &parts, v);
    out
}

/// How many of `parts` (`a.b[].c`) `v` already has, one after another.
fn depth(v: &Value, parts: &[&str]) -> usize {
    let Some((first, rest)) = parts.split_first() else {
        return 0;
    };
    match v.get(first.trim_end_matches("[]")) {
        None => 0,
        Some(Value::Sequence(items)) => 1 + items.iter().map(|i| depth(i, rest)).max().unwrap_or(0),
        Some(child) => 1 + depth(child, rest),
    }
}

fn parse(v: &Value) -> Result<Config, String> {
    let text = serde_yaml::to_string(v).map_err(|e| e.to_string())?;
    crate::config::parse(&text, Path::new("/cfg")).map_err(|e| e.to_string())
}

fn base() -> Value {
    serde_yaml::from_str(BASE).expect("BASE is YAML")
}

/// The keys serde expects where `key` is (`None`: not a map there).
fn fields_at(base: &Value, key: &str) -> Option<Vec<String>> {
    let probe = if key.is_empty() {
        PROBE.to_string()
    } else {
        format!("{key}.{PROBE}")
    };
    let err = parse(&set(base, &probe, Value::from(0))).err()?;
    let (_, expected) = err.split_once(&format!("unknown field `{PROBE}`, "))?;
    Some(spans(expected).into_iter().map(String::from).collect())
}

/// Every key of the file schema, maps and lists included (`upstreams[]`).
fn schema_keys() -> BTreeSet<String> {
    let base = base();
    let mut out = BTreeSet::new();
    let mut todo = vec![String::new()];
    while let Some(at) = todo.pop() {
        let fields = fields_at(&base, &at).unwrap_or_else(|| panic!("`{at}` is not a map"));
        for f in fields {
            let key = if at.is_empty() {
                f
            } else {
                format!("{at}.{f}")
            };
            if fields_at(&base, &key).is_some() {
                todo.push(key.clone());
                out.insert(key);
                continue;
            }
            let mut item = Mapping::new();
            item.insert(PROBE.into(), 0.into());
            let as_list = set(&base, &key, Value::Sequence(vec![Value::Mapping(item)]));
            if parse(&as_list).is_err_and(|e| e.contains(&format!("unknown field `{PROBE}`"))) {
                todo.push(format!("{key}[]"));
                out.insert(format!("{key}[]"));
            } else {
                out.insert(key);
            }
        }
    }
    out
}

/// Whether `key: literal` validates to the same config as leaving it out.
fn means_the_default(base: &Value, without: &str, key: &str, literal: &str) -> Result<(), String> {
    let v: Value = serde_yaml::from_str(literal).map_err(|e| format!("not YAML: {e}"))?;
    let with = parse(&set(base, key, v)).map_err(|e| format!("refused: {e}"))?;
    if format!("{with:?}") == without {
        Ok(())
    } else {
        Err("gives another config than leaving the key out".into())
    }
}

#[test]
fn the_reference_lists_every_key_with_the_default_the_code_has() {
    let rows = reference();
    assert!(rows.len() > 80, "the key table was not read: {rows:?}");
    let documented: BTreeMap<&str, &str> = rows
        .iter()
        .flat_map(|r| r.keys.iter().map(|k| (k.as_str(), r.default.as_str())))
        .collect();
    let schema = schema_keys();
    assert!(schema.len() > 80, "the schema was not read: {schema:?}");
    let base = base();
    let without = format!("{:?}", parse(&base).expect("BASE is valid"));
    let code = code_defaults();
    let mut problems = Vec::new();

    // 1. The same keys.
    for k in &schema {
        if !documented.contains_key(k.as_str()) {
            problems.push(format!("`{k}` is a config key but not in the reference"));
        }
    }
    for k in documented.keys() {
        if !schema.contains(*k) {
            problems.push(format!("`{k}` is in the reference but not a config key"));
        }
    }

    // 2. Each literal default means what leaving the key out means.
    let derived: BTreeSet<&str> = code
        .iter()
        .filter(|(_, c)| matches!(c, Derived))
        .map(|(k, _)| *k)
        .collect();
    for (key, default) in &documented {
        let Some(lit) = literal(default).filter(|_| !derived.contains(key)) else {
            continue;
        };
        if let Err(e) = means_the_default(&base, &without, key, lit) {
            problems.push(format!("`{key}`: the documented default `{lit}` {e}"));
        }
    }

    // 3. Each default in the code is documented as such.
    for (key, c) in &code {
        let Some(default) = documented.get(key) else {
            problems.push(format!("`{key}` has a default in code but no row"));
            continue;
        };
        match c {
            Code::Value(v) => {
                if literal(default).is_none() {
                    problems.push(format!(
                        "`{key}` defaults to `{v}` but the reference says \"{default}\""
                    ));
                }
                // The table above names the right key: the code's own value
                // also means leaving the key out.
                if let Err(e) = means_the_default(&base, &without, key, v) {
                    problems.push(format!("`{key}`: the code's default `{v}` {e}"));
                }
            }
            Unset if !default.starts_with("none") => problems.push(format!(
                "`{key}` is unset by default but the reference says \"{default}\""
            )),
            Derived if default.is_empty() || default.starts_with("none") => problems.push(format!(
                "`{key}` is counted at start but the reference says \"{default}\""
            )),
            _ => {}
        }
    }
    // ... and a literal in the reference is a default the code has (a map's
    // literal, `{ path_prefix: / }`, is checked by 2. alone).
    let in_code: BTreeSet<&str> = code
        .iter()
        .filter(|(_, c)| !matches!(c, Unset))
        .map(|(k, _)| *k)
        .collect();
    for (key, default) in &documented {
        let leaf = !schema.contains(&format!("{key}[]")) && fields_at(&base, key).is_none();
        if leaf && literal(default).is_some() && !in_code.contains(key) {
            problems.push(format!(
                "`{key}`: the reference gives a default that the code's defaults do not list"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_reference_parser_reads_cells_keys_and_literals() {
    assert_eq!(
        cells("| `a` | `basic` \\| `body` | `basic` |"),
        ["`a`", "`basic` | `body`", "`basic`"]
    );
    assert_eq!(
        keys_of("`x.oauth2.client_id` / `client_id_env`"),
        ["x.oauth2.client_id", "x.oauth2.client_id_env"]
    );
    assert_eq!(literal("`64KiB`"), Some("64KiB"));
    assert_eq!(literal("none (system roots)"), None);
    let v = set(
        &base(),
        "upstreams[].credentials.tokens[].oauth2.timeout",
        5.into(),
    );
    assert_eq!(
        v["upstreams"][0]["credentials"]["tokens"][1]["oauth2"]["timeout"],
        Value::from(5)
    );
}
