//! Where the token's values go: headers (replacing the client's) and
//! query parameters (the client's value dropped, the token's appended),
//! or an AWS SigV4 signature ([`super::sign`]).

use crate::tokens::injected::InjectedValue;
use crate::tokens::Injected;

/// Where the token goes.
#[derive(Debug, Clone)]
pub enum InjectTarget {
    /// One slot per `inject` target, in the order of the token's values.
    Values(Box<[Slot]>),
    /// The request is signed with the token's AWS credential set.
    SigV4(Box<super::sign::Signing>),
}

/// Where one value goes.
#[derive(Debug, Clone)]
pub enum Slot {
    /// The header name in the case the config wrote it, and its lookup form.
    Header {
        name: bytes::Bytes,
        lookup: http::HeaderName,
    },
    Query {
        /// `param=`, to find and drop a client-sent value.
        key_eq: String,
    },
}

impl InjectTarget {
    /// The slots of validated `inject` values.
    pub fn new(how: &crate::config::Injection) -> InjectTarget {
        use crate::config::{Injection, Place};
        match how {
            Injection::SigV4(spec) => {
                InjectTarget::SigV4(Box::new(super::sign::Signing::new(spec)))
            }
            Injection::Values(list) => InjectTarget::Values(
                list.iter()
                    .map(|v| match &v.place {
                        Place::Header(name) => Slot::Header {
                            name: bytes::Bytes::from(name.clone()),
                            lookup: http::HeaderName::from_bytes(name.as_bytes())
                                .expect("validated header name"),
                        },
                        Place::Query(param) => Slot::Query {
                            key_eq: format!("{param}="),
                        },
                    })
                    .collect(),
            ),
        }
    }

    /// How requests are signed, for a `sigv4` upstream.
    pub fn signing(&self) -> Option<&super::sign::Signing> {
        match self {
            InjectTarget::SigV4(s) => Some(s),
            _ => None,
        }
    }

    /// Puts the token into the request, replacing whatever the client sent
    /// in those headers or query parameters; or signs the request as it is
    /// now (call it last). `body_sha256`: the hex SHA-256 of the request's
    /// body, for a signature over it (`None`: no body).
    pub fn inject(
        &self,
        token: &crate::tokens::Token,
        req: &mut pingora::http::RequestHeader,
        body_sha256: Option<&str>,
    ) -> pingora::Result<()> {
        match (self, token.injected.as_ref()) {
            (InjectTarget::Values(slots), Some(Injected::Values { values, .. }))
                if slots.len() == values.len() =>
            {
                for (slot, value) in slots.iter().zip(values.iter()) {
                    match (slot, value) {
                        (Slot::Header { name, lookup }, InjectedValue::Header(v)) => {
                            req.remove_header(lookup);
                            req.insert_header(name.clone(), v.clone())?;
                        }
                        (Slot::Query { key_eq }, InjectedValue::Query(piece)) => {
                            let uri = with_query_token(&req.uri, key_eq, piece);
                            req.set_raw_path(uri.as_bytes())?;
                        }
                        _ => return no_value(),
                    }
                }
            }
            (InjectTarget::SigV4(signing), Some(Injected::SigV4(identity))) => {
                signing.sign(identity, req, body_sha256)?;
            }
            _ => return no_value(),
        }
        Ok(())
    }
}

fn no_value() -> pingora::Result<()> {
    pingora::Error::e_explain(
        pingora::ErrorType::InternalError,
        "token has no value to inject",
    )
}

/// The request target with `key_eq…` pairs removed and `piece` appended.
fn with_query_token(uri: &http::Uri, key_eq: &str, piece: &str) -> String {
    let mut out = String::with_capacity(uri.path().len() + piece.len() + 64);
    out.push_str(uri.path());
    out.push('?');
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            if pair.is_empty() || pair.starts_with(key_eq) || pair == &key_eq[..key_eq.len() - 1] {
                continue;
            }
            out.push_str(pair);
            out.push('&');
        }
    }
    out.push_str(piece);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_token_replaces_client_value() {
        let uri: http::Uri = "/v1/x?a=1&access_token=client&b=2&access_token"
            .parse()
            .unwrap();
        assert_eq!(
            with_query_token(&uri, "access_token=", "access_token=T"),
            "/v1/x?a=1&b=2&access_token=T"
        );
        let uri: http::Uri = "/v1/x".parse().unwrap();
        assert_eq!(with_query_token(&uri, "k=", "k=T"), "/v1/x?k=T");
    }
}
