//! OAuth2 with signed assertions (RFC 7523) against a provider that
//! verifies them with ring and the public key alone: `private_key_jwt`
//! client authentication (an EC P-256 key, ES256) and the JWT-bearer grant
//! from a Google-style service account file (an RSA key made by openssl,
//! RS256), with `extra_params` on the form.

use std::sync::{Arc, Mutex};

use base64::Engine;

use crate::support::{client, EmojiConfig, Graceway, MockReply, MockUpstream, TestDir};

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            let decoded = percent_decode(&v);
            (k.to_string(), decoded)
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the provider checked of one assertion.
#[derive(Debug, Clone)]
struct Seen {
    header: serde_json::Value,
    claims: serde_json::Value,
    form: Vec<(String, String)>,
}

/// A provider that mints `minted-N` for an assertion (in `field`) that
/// verifies with `verify`, and answers 401 `invalid_client` otherwise.
fn provider(
    field: &'static str,
    verify: impl Fn(&[u8], &[u8]) -> bool + Send + Sync + 'static,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> MockUpstream {
    MockUpstream::start(move |r| {
        let f = form(&r.body);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let Some(jwt) = get(field) else {
            return MockReply::status(400, r#"{"error":"invalid_request"}"#);
        };
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3 {
            return MockReply::status(400, r#"{"error":"invalid_request"}"#);
        }
        let signed = format!("{}.{}", parts[0], parts[1]);
        if !verify(signed.as_bytes(), &b64(parts[2])) {
            return MockReply::status(401, r#"{"error":"invalid_client"}"#);
        }
        let mut s = seen.lock().unwrap();
        s.push(Seen {
            header: serde_json::from_slice(&b64(parts[0])).unwrap(),
            claims: serde_json::from_slice(&b64(parts[1])).unwrap(),
            form: f.clone(),
        });
        MockReply::ok(&format!(
            r#"{{"access_token":"minted-{}","token_type":"Bearer","expires_in":3600}}"#,
            s.len()
        ))
    })
}

fn vendor() -> MockUpstream {
    MockUpstream::start(|r| match r.bearer() {
        Some(t) if t.starts_with("minted-") => MockReply::ok(r#"{"ok":true}"#),
        _ => MockReply::revoked(401, r#"{"error":"invalid_token"}"#),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_authenticates_the_client_with_an_es256_assertion() {
    let key = rcgen::KeyPair::generate().unwrap();
    let public = key.public_key_raw().to_vec();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let idp = provider(
        "client_assertion",
        move |msg, sig| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                &public,
            )
            .verify(msg, sig)
            .is_ok()
        },
        seen.clone(),
    );
    let up = vendor();
    let dir = TestDir::new();
    dir.write("key.pem", &key.serialize_pem());
    let token_url = format!("http://127.0.0.1:{}/oauth/token", idp.port);
    let cfg = EmojiConfig::new(up.port)
        .tokens(&format!(
            "        - oauth2:\n            token_url: \"{token_url}\"\n            client_id: svc-1\n            client_auth: private_key_jwt\n            private_key_file: \"{{dir}}/key.pem\"\n            key_id: key-2026\n            extra_params: {{ resource: \"https://api.example/\" }}"
        ))
        .build();
    let g = Graceway::start_in(dir, &cfg);
    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    assert_eq!(up.requests()[0].bearer(), Some("minted-1"));
    let seen = seen.lock().unwrap().clone();
    let first = &seen[0];
    assert_eq!(first.header["alg"], "ES256");
    assert_eq!(first.header["kid"], "key-2026");
    let c = &first.claims;
    assert_eq!(c["iss"], "svc-1");
    assert_eq!(c["sub"], "svc-1");
    assert_eq!(c["aud"], token_url.as_str());
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
    assert!(c["jti"].as_str().is_some_and(|j| j.len() == 32));
    let get = |k: &str| {
        first
            .form
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("grant_type"), Some("client_credentials"));
    assert_eq!(get("client_id"), Some("svc-1"));
    assert_eq!(
        get("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(get("resource"), Some("https://api.example/"));
    assert_eq!(get("client_secret"), None);
    assert!(idp.requests()[0].header("authorization").is_none());
    // Nothing of the key is in the logs.
    let logs = g.logs();
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
}

/// An RSA key from openssl, as PKCS#8 PEM, and its public key as PKCS#1
/// DER (what ring verifies with).
fn rsa_key(dir: &TestDir) -> (String, Vec<u8>) {
    let pem = dir.file("rsa.pem");
    let (ok, out) = crate::support::sh(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem.to_str().unwrap(),
        ],
    );
    assert!(ok, "openssl genpkey: {out}");
    let der = dir.file("rsa-pub.der");
    let (ok, out) = crate::support::sh(
        "openssl",
        &[
            "rsa",
            "-in",
            pem.to_str().unwrap(),
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap(),
        ],
    );
    assert!(ok, "openssl rsa: {out}");
    (
        std::fs::read_to_string(&pem).unwrap(),
        std::fs::read(&der).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_bearer_grant_from_a_service_account_file_signs_rs256() {
    let dir = TestDir::new();
    let (pem, public) = rsa_key(&dir);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let idp = provider(
        "assertion",
        move |msg, sig| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                &public,
            )
            .verify(msg, sig)
            .is_ok()
        },
        seen.clone(),
    );
    let up = vendor();
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": "emoji-prod",
        "private_key_id": "4f0c1a",
        "private_key": pem,
        "client_email": "graceway@emoji-prod.iam.gserviceaccount.com",
        "token_uri": format!("http://127.0.0.1:{}/token", idp.port),
    });
    dir.write("sa.json", &account.to_string());
    let token_url = format!("http://127.0.0.1:{}/token", idp.port);
    let cfg = EmojiConfig::new(up.port)
        .tokens(&format!(
            "        - oauth2:\n            token_url: \"{token_url}\"\n            grant: jwt_bearer\n            service_account_file: \"{{dir}}/sa.json\"\n            scope: \"https://www.googleapis.com/auth/cloud-platform\"\n            subject: ops@emoji.example"
        ))
        .build();
    let g = Graceway::start_in(dir, &cfg);
    let r = client().get(g.url("/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", g.logs());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.header["alg"], "RS256");
    assert_eq!(s.header["kid"], "4f0c1a");
    assert_eq!(
        s.claims["iss"],
        "graceway@emoji-prod.iam.gserviceaccount.com"
    );
    assert_eq!(s.claims["sub"], "ops@emoji.example");
    assert_eq!(
        s.claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert_eq!(s.claims["aud"], token_url.as_str());
    assert_eq!(
        s.claims["exp"].as_u64().unwrap() - s.claims["iat"].as_u64().unwrap(),
        3600
    );
    let grant = s.form.iter().find(|(k, _)| k == "grant_type").unwrap();
    assert_eq!(grant.1, "urn:ietf:params:oauth:grant-type:jwt-bearer");
    assert!(!s.form.iter().any(|(k, _)| k == "client_id" || k == "scope"));
    assert!(idp.requests()[0].header("authorization").is_none());
    let logs = g.logs();
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");

    // A damaged service account file is a clear error at the next fetch
    // and the token in hand stays in use.
    g.dir.write(
        "sa.json",
        "{\"client_email\": \"x\", \"private_key\": \"nope\"}",
    );
    let (code, _, err) = crate::support::run_cli(&["check", "-c", g.config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("service_account_file") && err.contains("`private_key` is not a PEM"),
        "{err}"
    );
    assert!(!err.contains("nope"), "{err}");
    let r = client().get(g.url("/v1/y")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
