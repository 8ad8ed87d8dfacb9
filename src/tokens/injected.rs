//! What a request carries for one token ([`Injected`]): the values
//! `inject` builds from it (headers, query parameters, HTTP Basic) or an
//! AWS credential set to sign with; and structured tokens, the
//! credentials of several values (a JSON object of strings, or the
//! `fields` of a token entry, each from its own source).
//!
//! A structured token is kept as its canonical JSON (keys sorted, no
//! whitespace), so its fingerprint covers every field and does not change
//! when the file is merely reformatted. Each field obeys the rules of a
//! whole token (not empty, no control character).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use http::HeaderValue;

use super::value::{percent_encode, Secret, ValueError};
use crate::config::{InjectValue, Injection, Part, Place, ValueForm};

/// What a request carries for one token, built once at load so that the
/// request path only clones it (a reference-count bump, no allocation).
#[derive(Clone)]
pub enum Injected {
    /// One value per `inject` target, in the same order.
    Values {
        values: std::sync::Arc<[InjectedValue]>,
        /// Every secret string an upstream could echo back: the token, a
        /// field, a Basic credential's encoding (never a config literal).
        needles: std::sync::Arc<[Box<str>]>,
    },
    /// An AWS credential set, ready to sign with (built once per token:
    /// an `Arc` inside, so a clone is a reference-count bump).
    SigV4(aws_smithy_runtime_api::client::identity::Identity),
}

/// One injected value.
#[derive(Clone)]
pub enum InjectedValue {
    /// The complete header value, e.g. `Bearer abc`, marked sensitive so
    /// that HPACK never indexes it.
    Header(HeaderValue),
    /// `param=percent-encoded-value`, appended to the query.
    Query(String),
}

impl fmt::Debug for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Injected(..)")
    }
}

impl Injected {
    pub fn build(secret: &Secret, how: &Injection) -> Result<Injected, ValueError> {
        match how {
            Injection::Values(list) => values(secret, how, list),
            Injection::SigV4(_) => {
                let p = super::value::aws_parts(secret).ok_or(ValueError::NotAHeaderValue)?;
                let creds = aws_credential_types::Credentials::new(
                    p.access_key_id,
                    p.secret_access_key,
                    p.session_token.map(str::to_string),
                    None,
                    "graceway",
                );
                Ok(Injected::SigV4(creds.into()))
            }
        }
    }

    /// The secret strings an upstream could echo back (none for a
    /// signature: see `reflect`).
    pub fn needles(&self) -> &[Box<str>] {
        match self {
            Injected::Values { needles, .. } => needles,
            Injected::SigV4(_) => &[],
        }
    }
}

/// Checks one field's value as a whole token's.
fn checked(field: &str, raw: &str) -> Result<String, ValueError> {
    Secret::parse(raw)
        .map(|s| s.expose().to_string())
        .map_err(|error| ValueError::Field {
            field: field.to_string(),
            error: Box::new(error),
        })
}

/// The canonical form of named fields, as one secret.
pub fn compose(fields: &BTreeMap<String, String>) -> Result<Secret, ValueError> {
    let json = serde_json::to_string(fields).expect("a map of strings serializes");
    Secret::parse(&json)
}

/// A JSON object of strings (numbers are taken as written), checked and
/// made canonical. serde's message is not shown past its position: it may
/// quote a part of the value.
pub fn parse(raw: &str) -> Result<Secret, ValueError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ValueError::Empty);
    }
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
        ValueError::NotStructured(format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    let serde_json::Value::Object(map) = v else {
        return Err(ValueError::NotStructured("not an object".into()));
    };
    let mut fields = BTreeMap::new();
    for (k, v) in map {
        let s = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(ValueError::NotStructured(format!(
                    "the field `{}` is not a string",
                    k.escape_debug()
                )))
            }
        };
        let s = checked(&k, &s)?;
        fields.insert(k, s);
    }
    compose(&fields)
}

/// The fields of a structured token's canonical form.
fn fields_of(secret: &Secret) -> Result<BTreeMap<String, String>, ValueError> {
    serde_json::from_str(secret.expose())
        .map_err(|_| ValueError::NotStructured("not an object".into()))
}

/// The values of `list` for one token.
fn values(secret: &Secret, how: &Injection, list: &[InjectValue]) -> Result<Injected, ValueError> {
    let fields = match how.structured() {
        true => Some(fields_of(secret)?),
        false => None,
    };
    let mut needles: Vec<Box<str>> = Vec::new();
    // A part's value, its secret kept as a needle.
    let part = |p: &Part, needles: &mut Vec<Box<str>>| -> Result<String, ValueError> {
        let v = match p {
            Part::Token => secret.expose().to_string(),
            Part::Field(f) => fields
                .as_ref()
                .and_then(|m| m.get(f))
                .cloned()
                .ok_or_else(|| ValueError::MissingField(f.clone()))?,
            Part::Literal(l) => return Ok(l.clone()),
        };
        needles.push(v.as_str().into());
        Ok(v)
    };
    let mut values = Vec::with_capacity(list.len());
    for v in list {
        let text = match &v.form {
            ValueForm::Plain { prefix, part: p } => format!("{prefix}{}", part(p, &mut needles)?),
            ValueForm::Basic { user, password } => {
                let user = part(user, &mut needles)?;
                if user.contains(':') {
                    return Err(ValueError::ColonInUser);
                }
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", part(password, &mut needles)?));
                needles.push(encoded.as_str().into());
                format!("Basic {encoded}")
            }
        };
        values.push(match &v.place {
            Place::Header(_) => {
                let mut h = HeaderValue::try_from(text).map_err(|_| ValueError::NotAHeaderValue)?;
                h.set_sensitive(true);
                InjectedValue::Header(h)
            }
            Place::Query(param) => {
                InjectedValue::Query(format!("{param}={}", percent_encode(&text)))
            }
        });
    }
    needles.sort();
    needles.dedup();
    Ok(Injected::Values {
        values: values.into(),
        needles: needles.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(i: &Injected, n: usize) -> String {
        let Injected::Values { values, .. } = i else {
            panic!("values")
        };
        match &values[n] {
            InjectedValue::Header(h) => h.to_str().unwrap().to_string(),
            InjectedValue::Query(q) => q.clone(),
        }
    }

    fn two_fields() -> Injection {
        let field = |h: &str, f: &str| InjectValue {
            place: Place::Header(h.into()),
            form: ValueForm::Plain {
                prefix: String::new(),
                part: Part::Field(f.into()),
            },
        };
        Injection::Values(vec![
            field("X-Api-Key", "key_id"),
            field("X-Api-Secret", "secret"),
        ])
    }

    #[test]
    fn a_json_token_is_canonical_and_feeds_each_header() {
        let a = parse("{\n  \"secret\": \"s3cr3t\",\n  \"key_id\": \"kid-1\"\n}\n").unwrap();
        let b = parse(r#"{"key_id":"kid-1","secret":"s3cr3t"}"#).unwrap();
        assert_eq!(
            a.fingerprint(),
            b.fingerprint(),
            "reformatting keeps the fingerprint"
        );
        let c = parse(r#"{"key_id":"kid-2","secret":"s3cr3t"}"#).unwrap();
        assert_ne!(
            a.fingerprint(),
            c.fingerprint(),
            "the fingerprint covers every field"
        );
        let i = Injected::build(&a, &two_fields()).unwrap();
        assert_eq!(header(&i, 0), "kid-1");
        assert_eq!(header(&i, 1), "s3cr3t");
        assert_eq!(
            i.needles(),
            &["kid-1".into(), "s3cr3t".into()] as &[Box<str>]
        );
    }

    #[test]
    fn bad_structured_tokens_say_why_without_the_value() {
        for (raw, want) in [
            ("\"just-a-string-token\"", "not an object"),
            (
                "{\"key_id\": 12, \"secret\": [\"x\"]}",
                "`secret` is not a string",
            ),
            ("{\"key_id\": \"a\nb\", \"secret\": \"x\"}", "invalid JSON"),
            (
                "{\"key_id\": \"a\\r\\nX-Evil: 1\", \"secret\": \"x\"}",
                "field `key_id`",
            ),
            (
                "{\"key_id\": \"   \", \"secret\": \"x\"}",
                "field `key_id`: the token is empty",
            ),
            ("not json at all secret-value", "invalid JSON at line 1"),
        ] {
            let e = parse(raw).unwrap_err().to_string();
            assert!(e.contains(want), "{raw:?}: {e}");
            assert!(
                !e.contains("just-a-string") && !e.contains("secret-value"),
                "{e}"
            );
        }
        let s = parse(r#"{"key_id":"kid-1"}"#).unwrap();
        assert_eq!(
            Injected::build(&s, &two_fields()).unwrap_err(),
            ValueError::MissingField("secret".into())
        );
    }

    #[test]
    fn basic_is_encoded_once_with_the_token_as_the_missing_part() {
        let basic = |user: Part, password: Part| {
            Injection::Values(vec![InjectValue {
                place: Place::Header("Authorization".into()),
                form: ValueForm::Basic { user, password },
            }])
        };
        let s = Secret::parse("pa:ss word").unwrap();
        let i =
            Injected::build(&s, &basic(Part::Literal("reporting".into()), Part::Token)).unwrap();
        // RFC 7617's example shape: base64("reporting:pa:ss word").
        assert_eq!(header(&i, 0), "Basic cmVwb3J0aW5nOnBhOnNzIHdvcmQ=");
        assert!(i.needles().contains(&"pa:ss word".into()));
        assert!(i.needles().contains(&"cmVwb3J0aW5nOnBhOnNzIHdvcmQ=".into()));
        assert!(
            !i.needles().contains(&"reporting".into()),
            "a literal is no secret"
        );
        // Stripe's shape: the key is the user, the password empty.
        let k = Secret::parse("sk_test_1").unwrap();
        let i = Injected::build(&k, &basic(Part::Token, Part::Literal(String::new()))).unwrap();
        assert_eq!(header(&i, 0), "Basic c2tfdGVzdF8xOg==");
        assert_eq!(
            Injected::build(
                &Secret::parse("a:b").unwrap(),
                &basic(Part::Token, Part::Literal("x".into()))
            )
            .unwrap_err(),
            ValueError::ColonInUser
        );
    }

    #[test]
    fn a_query_value_is_percent_encoded() {
        let s = parse(r#"{"sig":"a b/c"}"#).unwrap();
        let how = Injection::Values(vec![InjectValue {
            place: Place::Query("signature".into()),
            form: ValueForm::Plain {
                prefix: String::new(),
                part: Part::Field("sig".into()),
            },
        }]);
        assert_eq!(
            header(&Injected::build(&s, &how).unwrap(), 0),
            "signature=a%20b%2Fc"
        );
    }
}
