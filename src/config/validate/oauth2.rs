//! `credentials.tokens[].oauth2`: the token endpoint, the client and how it
//! proves itself (a secret in HTTP Basic or the body, or a signed
//! assertion: `private_key_jwt`), the grant (client credentials, or the
//! JWT-bearer grant of service accounts) and extra form fields.

use super::credentials::credential;
use super::*;

/// Form fields graceway writes itself; `extra_params` may not set them.
const RESERVED_PARAMS: [&str; 9] = [
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "assertion",
    "scope",
    "audience",
    "subject",
];

pub(super) fn oauth2(c: &mut Check, at: &str, o: &FileOAuth2) -> Option<OAuth2Spec> {
    let errors_before = c.errors.len();
    let url = o.token_url.clone().unwrap_or_default();
    let parsed = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    let Some(uri) = parsed else {
        c.err(
            format!("{at}.token_url"),
            "is required: the https:// URL of the token endpoint",
        );
        return None;
    };
    let base = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map_or("", |a| a.as_str())
    );
    let endpoint = match parse_url(&base) {
        Ok(e) => e,
        Err(e) => {
            c.err(format!("{at}.token_url"), e);
            return None;
        }
    };
    let path_and_query = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let grant = grant(c, at, o);
    let from_account = matches!(
        grant,
        Grant::JwtBearer {
            service_account: Some(_),
            ..
        }
    );
    let has_id = o.client_id.is_some() || o.client_id_env.is_some() || o.client_id_file.is_some();
    let client_id = if from_account && !has_id {
        None
    } else {
        credential(
            c,
            &format!("{at}.client_id"),
            "client_id",
            o.client_id.as_ref(),
            o.client_id_env.as_ref(),
            o.client_id_file.as_ref(),
        )
    };
    let jwt_bearer = matches!(grant, Grant::JwtBearer { .. });
    let has_secret = o.client_secret_env.is_some() || o.client_secret_file.is_some();
    let client_auth = match o.client_auth.as_deref() {
        None if jwt_bearer && !has_secret => ClientAuth::None,
        None => ClientAuth::default(),
        Some("basic") => ClientAuth::Basic,
        Some("body") => ClientAuth::Body,
        Some("private_key_jwt") if !jwt_bearer => ClientAuth::PrivateKeyJwt,
        Some("private_key_jwt") => {
            c.err(
                format!("{at}.client_auth"),
                "`private_key_jwt` is for `grant: client_credentials`; the JWT-bearer grant's assertion already proves the client",
            );
            ClientAuth::None
        }
        Some(other) => {
            c.err(
                format!("{at}.client_auth"),
                format!(
                    "`{}`: must be `basic`, `body` or `private_key_jwt`",
                    other.escape_debug()
                ),
            );
            ClientAuth::default()
        }
    };
    let client_secret = if matches!(client_auth, ClientAuth::Basic | ClientAuth::Body) {
        credential(
            c,
            &format!("{at}.client_secret"),
            "client_secret",
            None,
            o.client_secret_env.as_ref(),
            o.client_secret_file.as_ref(),
        )
    } else {
        if has_secret {
            c.err(
                format!("{at}.client_secret"),
                "is not sent with this `client_auth`: remove it",
            );
        }
        None
    };
    let signing_key = o.private_key_file.as_deref().map(|f| SigningKey {
        file: c.path(f),
        key_id: o.key_id.clone(),
    });
    let needs_key = client_auth == ClientAuth::PrivateKeyJwt || (jwt_bearer && !from_account);
    if needs_key && signing_key.is_none() {
        c.err(
            format!("{at}.private_key_file"),
            "is required: the PEM key (RSA or EC P-256) that signs the assertion",
        );
    }
    if !needs_key && signing_key.is_some() && !from_account {
        c.err(
            format!("{at}.private_key_file"),
            "signs nothing here: it is for `client_auth: private_key_jwt` or `grant: jwt_bearer`",
        );
    }
    if o.key_id.is_some() && o.private_key_file.is_none() {
        c.err(format!("{at}.key_id"), "needs `private_key_file`");
    }
    let extra_params = extra_params(c, at, o);
    let refresh_fraction = o
        .refresh_fraction
        .unwrap_or(defaults::OAUTH2_REFRESH_FRACTION);
    if !(0.1..=0.95).contains(&refresh_fraction) {
        c.err(
            format!("{at}.refresh_fraction"),
            "must be between 0.1 and 0.95",
        );
    }
    let timeout = c.positive_duration(
        &format!("{at}.timeout"),
        &o.timeout,
        defaults::OAUTH2_TIMEOUT,
    );
    let max_retry = c.positive_duration(
        &format!("{at}.max_retry"),
        &o.max_retry,
        defaults::OAUTH2_MAX_RETRY,
    );
    let tls = tls_settings(c, o.tls.as_ref());
    if c.errors.len() > errors_before {
        return None;
    }
    Some(OAuth2Spec {
        token_url: url,
        endpoint,
        path_and_query,
        client_id,
        client_secret,
        scope: o.scope.clone(),
        audience: o.audience.clone(),
        client_auth,
        grant,
        signing_key,
        extra_params,
        refresh_fraction,
        timeout,
        max_retry,
        ca_file: tls.ca_file,
        verify: tls.verify,
        share: o.share.unwrap_or(defaults::OAUTH2_SHARE),
    })
}

/// `oauth2.grant`, with `service_account_file` and `subject`.
fn grant(c: &mut Check, at: &str, o: &FileOAuth2) -> Grant {
    let g = match o.grant.as_deref() {
        None | Some("client_credentials") => Grant::ClientCredentials,
        Some("jwt_bearer") => Grant::JwtBearer {
            service_account: o.service_account_file.as_deref().map(|f| c.path(f)),
            subject: o.subject.clone(),
        },
        Some(other) => {
            c.err(
                format!("{at}.grant"),
                format!(
                    "`{}`: must be `client_credentials` or `jwt_bearer`",
                    other.escape_debug()
                ),
            );
            Grant::ClientCredentials
        }
    };
    if g == Grant::ClientCredentials {
        for (key, set) in [
            ("service_account_file", o.service_account_file.is_some()),
            ("subject", o.subject.is_some()),
        ] {
            if set {
                c.err(format!("{at}.{key}"), "needs `grant: jwt_bearer`");
            }
        }
    }
    if let Grant::JwtBearer {
        service_account: Some(_),
        ..
    } = &g
    {
        if o.private_key_file.is_some() {
            c.err(
                format!("{at}.private_key_file"),
                "a service account file brings its own key: set one of the two",
            );
        }
    }
    g
}

/// `oauth2.extra_params`: names and values as sent, percent-encoded on the
/// way; graceway's own fields may not be overridden.
fn extra_params(c: &mut Check, at: &str, o: &FileOAuth2) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in o.extra_params.iter().flatten() {
        let field = format!("{at}.extra_params.{}", k.escape_debug());
        if k.is_empty()
            || k.chars().any(|ch| ch.is_control())
            || v.chars().any(|ch| ch.is_control())
        {
            c.err(
                field,
                "names and values may not be empty or hold control characters",
            );
        } else if RESERVED_PARAMS.contains(&k.as_str()) {
            c.err(field, "is a field graceway sets itself");
        } else {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}
