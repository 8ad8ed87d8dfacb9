//! Where the token goes: a header (replacing the client's), a query
//! parameter (the client's value dropped, the token appended), or an AWS
//! SigV4 signature ([`super::sign`]).

use crate::tokens::Injected;

/// Where the token goes.
#[derive(Debug, Clone)]
pub enum InjectTarget {
    /// The header name in the case the config wrote it, and its lookup form.
    Header {
        name: bytes::Bytes,
        lookup: http::HeaderName,
    },
    Query {
        /// `param=`, to find and drop a client-sent value.
        key_eq: String,
    },
    /// The request is signed with the token's AWS credential set.
    SigV4(Box<super::sign::Signing>),
}

impl InjectTarget {
    /// How requests are signed, for a `sigv4` upstream.
    pub fn signing(&self) -> Option<&super::sign::Signing> {
        match self {
            InjectTarget::SigV4(s) => Some(s),
            _ => None,
        }
    }

    /// Puts the token into the request, replacing whatever the client sent
    /// in that header or query parameter; or signs the request as it is
    /// now (call it last). `body_sha256`: the hex SHA-256 of the request's
    /// body, for a signature over it (`None`: no body).
    pub fn inject(
        &self,
        token: &crate::tokens::Token,
        req: &mut pingora::http::RequestHeader,
        body_sha256: Option<&str>,
    ) -> pingora::Result<()> {
        match (self, token.injected.as_ref()) {
            (InjectTarget::Header { name, lookup }, Some(Injected::Header(value))) => {
                req.remove_header(lookup);
                req.insert_header(name.clone(), value.clone())?;
            }
            (InjectTarget::Query { key_eq }, Some(Injected::Query(piece))) => {
                let uri = with_query_token(&req.uri, key_eq, piece);
                req.set_raw_path(uri.as_bytes())?;
            }
            (InjectTarget::SigV4(signing), Some(Injected::SigV4(identity))) => {
                signing.sign(identity, req, body_sha256)?;
            }
            _ => {
                return pingora::Error::e_explain(
                    pingora::ErrorType::InternalError,
                    "token has no value to inject",
                )
            }
        }
        Ok(())
    }
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
