//! AWS Signature Version 4 on the request graceway sends, with the official
//! `aws-sigv4` signer.
//!
//! What is signed: the method, the path and query as sent, `Host` (the
//! upstream's own, set just before), `Content-Type` when there is one,
//! every `x-amz-*` header the client sent (AWS requires them signed, e.g.
//! `X-Amz-Target`), `X-Amz-Date`, `X-Amz-Security-Token` with a session
//! token, and `X-Amz-Content-Sha256`: the body's SHA-256 (the empty
//! string's for a request without a body), or `UNSIGNED-PAYLOAD` with
//! `payload: unsigned`. Other headers are left out of the signature, so a
//! hop that rewrites them cannot break it. A client's own `Authorization`
//! and `X-Amz-Date`/`-Security-Token`/`-Content-Sha256` are dropped first.

use std::time::SystemTime;

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use pingora::http::RequestHeader;

use crate::config::{Payload, SigV4Spec};

/// The headers graceway replaces with its own.
const DROPPED: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// How one upstream's requests are signed, built at load.
#[derive(Debug, Clone)]
pub struct Signing {
    region: Box<str>,
    service: Box<str>,
    payload: Payload,
    /// No excluded headers (graceway hands the signer only those it signs),
    /// so a clone per request copies no list.
    settings: SigningSettings,
}

impl Signing {
    pub fn new(spec: &SigV4Spec) -> Signing {
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.excluded_headers = None;
        if spec.service == "s3" {
            // S3 signs the path as sent, like the AWS SDKs do for it.
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        }
        Signing {
            region: spec.region.as_str().into(),
            service: spec.service.as_str().into(),
            payload: spec.payload,
            settings,
        }
    }

    /// Whether a request's body must be read whole (and hashed) before its
    /// header is sent.
    pub fn hashes_body(&self) -> bool {
        self.payload == Payload::Signed
    }

    /// Signs `req` as it will be sent. `body_sha256`: the lower-case hex
    /// SHA-256 of the body when it has one (`None`: no body).
    pub fn sign(
        &self,
        identity: &Identity,
        req: &mut RequestHeader,
        body_sha256: Option<&str>,
    ) -> pingora::Result<()> {
        for h in DROPPED {
            req.remove_header(h);
        }
        let signed: Vec<(&str, &str)> = req
            .headers
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str();
                n == "host" || n == "content-type" || n.starts_with("x-amz-")
            })
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
            .collect();
        let body = match (self.payload, body_sha256) {
            (Payload::Unsigned, _) => SignableBody::UnsignedPayload,
            (Payload::Signed, Some(h)) => SignableBody::Precomputed(h.to_string()),
            (Payload::Signed, None) => SignableBody::Bytes(&[]),
        };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let signable = SignableRequest::new(req.method.as_str(), target, signed.into_iter(), body)
            .map_err(fail)?;
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.region)
            .name(&self.service)
            .time(SystemTime::now())
            .settings(self.settings.clone())
            .build()
            .map_err(fail)?
            .into();
        let (instructions, _signature) = sign(signable, &params).map_err(fail)?.into_parts();
        let (headers, _params) = instructions.into_parts();
        for h in headers {
            let mut v = http::HeaderValue::from_str(h.value()).map_err(fail)?;
            v.set_sensitive(h.sensitive());
            req.insert_header(h.name(), v)?;
        }
        Ok(())
    }
}

/// A signing error as Pingora's, without the request's values.
fn fail(e: impl std::fmt::Display) -> Box<pingora::Error> {
    pingora::Error::explain(
        pingora::ErrorType::InternalError,
        format!("SigV4 signing failed: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(token: Option<&str>) -> Identity {
        aws_credential_types::Credentials::new(
            "AKIDTEST",
            "secret",
            token.map(Into::into),
            None,
            "t",
        )
        .into()
    }

    #[test]
    fn signs_with_the_host_sent_and_drops_the_clients_signature() {
        let s = Signing::new(&SigV4Spec {
            region: "eu-west-1".into(),
            service: "execute-api".into(),
            payload: Payload::Signed,
        });
        let mut req = RequestHeader::build("GET", b"/v1/x?a=b%20c", None).unwrap();
        req.insert_header("host", "api.example").unwrap();
        req.insert_header("authorization", "Bearer client").unwrap();
        req.insert_header("x-amz-security-token", "client").unwrap();
        s.sign(&identity(Some("TOKEN")), &mut req, None).unwrap();
        let auth = req.headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"),
            "{auth}"
        );
        assert!(
            auth.contains("/eu-west-1/execute-api/aws4_request"),
            "{auth}"
        );
        assert!(
            auth.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
            ),
            "{auth}"
        );
        assert_eq!(req.headers["x-amz-security-token"], "TOKEN");
        assert!(req.headers["x-amz-security-token"].is_sensitive());
        assert_eq!(
            req.headers["x-amz-content-sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn unsigned_payload_says_so() {
        let s = Signing::new(&SigV4Spec {
            region: "us-east-1".into(),
            service: "s3".into(),
            payload: Payload::Unsigned,
        });
        let mut req = RequestHeader::build("PUT", b"/bucket/key", None).unwrap();
        req.insert_header("host", "s3.example").unwrap();
        s.sign(&identity(None), &mut req, None).unwrap();
        assert_eq!(req.headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert!(req.headers.get("x-amz-security-token").is_none());
    }
}
