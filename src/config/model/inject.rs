//! `credentials.inject`, as validated: where each value of a credential
//! goes (headers and query parameters) and what it is made of.

/// How a request carries its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// One or more values, each into a header or a query parameter (the
    /// client's own value there replaced). Never empty.
    Values(Vec<InjectValue>),
    /// `credentials.sigv4`: every request signed with AWS Signature
    /// Version 4; each token is one AWS credential set.
    SigV4(super::SigV4Spec),
}

/// One injected value: where it goes and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectValue {
    pub place: Place,
    pub form: ValueForm,
}

/// A header (in the case the config wrote it) or a query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Header(String),
    Query(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueForm {
    /// `prefix` + the part (a query parameter has an empty prefix).
    Plain { prefix: String, part: Part },
    /// `Basic base64(user:password)` (RFC 7617), encoded once per token
    /// value.
    Basic { user: Part, password: Part },
}

/// What one value is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The whole token.
    Token,
    /// A named field of a structured token (a JSON object, or the
    /// `fields` of a token entry).
    Field(String),
    /// A value written in the config (a Basic user name): not a secret.
    Literal(String),
}

impl Injection {
    /// One header carrying `prefix` + the whole token.
    pub fn header(name: &str, prefix: &str) -> Injection {
        Injection::Values(vec![InjectValue {
            place: Place::Header(name.into()),
            form: ValueForm::Plain {
                prefix: prefix.into(),
                part: Part::Token,
            },
        }])
    }

    /// One query parameter carrying the whole token.
    pub fn query(param: &str) -> Injection {
        Injection::Values(vec![InjectValue {
            place: Place::Query(param.into()),
            form: ValueForm::Plain {
                prefix: String::new(),
                part: Part::Token,
            },
        }])
    }

    /// The values, none for a signature.
    pub fn values(&self) -> &[InjectValue] {
        match self {
            Injection::Values(v) => v,
            Injection::SigV4(_) => &[],
        }
    }

    /// The fields of a structured token that the values are made of, in
    /// the order they are named (a field may repeat).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.values()
            .iter()
            .flat_map(|v| v.form.parts())
            .filter_map(|p| match p {
                Part::Field(f) => Some(f.as_str()),
                _ => None,
            })
    }

    /// Whether each token is structured (its values are named fields).
    pub fn structured(&self) -> bool {
        self.fields().next().is_some()
    }

    /// Whether `name` is one of the headers a value goes into.
    pub fn injects_header(&self, name: &str) -> bool {
        self.values()
            .iter()
            .any(|v| matches!(&v.place, Place::Header(h) if h.eq_ignore_ascii_case(name)))
    }
}

impl ValueForm {
    pub fn parts(&self) -> impl Iterator<Item = &Part> {
        let (a, b) = match self {
            ValueForm::Plain { part, .. } => (part, None),
            ValueForm::Basic { user, password } => (user, Some(password)),
        };
        std::iter::once(a).chain(b)
    }
}
