//! The config file as written: serde types that mirror the YAML one to one.
//!
//! Nothing here is trusted. Every struct refuses unknown keys, durations and
//! sizes stay strings until [`super::model`] parses them, so that validation
//! can report every bad value at once with its field path instead of stopping
//! at the first one.

use serde::Deserialize;

/// A duration (`2s`, `15m`, `24h`) or a size (`64MiB`), as written.
///
/// YAML reads `60` as a number and `60s` as a string; both are accepted here
/// and kept as text, so that the model parses every value in one place and
/// reports bad ones with their field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Human(pub String);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Human;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration like `2s` or a size like `64MiB`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Human, E> {
                Ok(Human(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Human, E> {
                Ok(Human(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Human, E> {
                Ok(Human(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    #[serde(default)]
    pub admin: Option<FileAdmin>,
    pub pid_file: Option<String>,
    #[serde(default)]
    pub server: Option<FileServer>,
    #[serde(default)]
    pub upstreams: Vec<FileUpstream>,
    #[serde(default)]
    pub cache: Option<FileCache>,
    #[serde(default)]
    pub memory: Option<FileMemory>,
    #[serde(default)]
    pub alerts: Option<FileAlerts>,
    #[serde(default)]
    pub log: Option<FileLog>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub threads: Option<usize>,
    pub grace_period: Option<Human>,
    pub graceful_shutdown_timeout: Option<Human>,
    pub client_keepalive_timeout: Option<Human>,
    pub max_request_header_bytes: Option<Human>,
    pub max_request_body_bytes: Option<Human>,
    pub request_header_timeout: Option<Human>,
    pub client_body_timeout: Option<Human>,
    pub max_connections: Option<usize>,
    pub upgrade_sock: Option<String>,
    pub h2c: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub name: Option<String>,
    pub url: Option<String>,
    #[serde(rename = "match", default)]
    pub route: Option<FileMatch>,
    #[serde(default)]
    pub timeouts: Option<FileTimeouts>,
    #[serde(default)]
    pub tls: Option<FileUpstreamTls>,
    /// Required: a token list, or `none` for an upstream that needs no
    /// token (so a file cut short before `credentials:` fails validation).
    #[serde(default)]
    pub credentials: Option<FileCredentialsField>,
    #[serde(default)]
    pub health: Option<FileHealth>,
    #[serde(default)]
    pub stale: Option<FileStale>,
    pub methods: Option<Vec<String>>,
    pub dns_refresh: Option<Human>,
    /// Protocols a client may switch to (`Upgrade`), e.g. `[websocket]`;
    /// none by default.
    pub upgrade: Option<Vec<String>>,
    /// Every answer of this upstream is a stream (`timeouts.stream_idle`,
    /// never stored, never charged to the breaker after its header).
    pub stream: Option<bool>,
    #[serde(default)]
    pub cache: Option<FileUpstreamCache>,
    /// `auto`, `h1` or `h2`.
    pub http: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    pub path_prefix: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub connect: Option<Human>,
    pub read: Option<Human>,
    pub write: Option<Human>,
    pub stream_idle: Option<Human>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub ca_file: Option<String>,
    pub verify: Option<bool>,
}

/// An upstream's `tls:`: [`FileTls`] and the client certificate.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTls {
    pub ca_file: Option<String>,
    pub verify: Option<bool>,
    /// PEM: the leaf certificate first, then any intermediates.
    pub client_cert: Option<String>,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<String>,
}

/// `credentials:` as written: the word `none`, or the map.
#[derive(Debug)]
pub enum FileCredentialsField {
    None,
    /// Boxed: the map is large and `none` carries nothing.
    Tokens(Box<FileCredentials>),
}

impl<'de> Deserialize<'de> for FileCredentialsField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileCredentialsField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`none` or a map with `tokens`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "none" {
                    Ok(FileCredentialsField::None)
                } else {
                    Err(E::custom(format!(
                        "`{v}`: write `none` for an upstream that needs no token, or a map with `tokens`"
                    )))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                FileCredentials::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|c| FileCredentialsField::Tokens(Box::new(c)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredentials {
    #[serde(default)]
    pub inject: Option<FileInjectField>,
    /// AWS Signature Version 4 instead of `inject`.
    #[serde(default)]
    pub sigv4: Option<FileSigV4>,
    #[serde(default)]
    pub tokens: Vec<FileToken>,
    pub expires_warning: Option<Human>,
    #[serde(default)]
    pub probe: Option<FileProbe>,
    pub preflight: Option<bool>,
    /// Statuses that move a request to the next token: 401, 403, 429.
    pub failover_on: Option<Vec<Human>>,
    /// Bare 401/403s in a row (no success between) that make a suspect
    /// token rejected.
    pub suspect_after: Option<u32>,
    /// `failover`, `round_robin` or `most_remaining`.
    pub select: Option<String>,
    /// A request header whose value keeps a client on one token.
    pub sticky_header: Option<String>,
    #[serde(default)]
    pub queue: Option<FileQueue>,
}

/// `credentials.queue`: waiting for a quota reset instead of a refusal.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileQueue {
    pub max_wait: Option<Human>,
    pub max_queued: Option<u32>,
}

/// `credentials.inject` as written: one target (a map) or a list of them.
#[derive(Debug)]
pub struct FileInjectField(pub Vec<FileInject>);

impl<'de> Deserialize<'de> for FileInjectField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileInjectField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map (`header`, `query` or `basic`) or a list of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                FileInject::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|one| FileInjectField(vec![one]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::<FileInject>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(FileInjectField)
            }
        }
        d.deserialize_any(V)
    }
}

/// One injection target: a header (with its prefix), a query parameter,
/// or HTTP Basic; fed by the whole token or, with `from`, one field of a
/// structured token.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileInject {
    pub header: Option<String>,
    pub prefix: Option<String>,
    pub query: Option<String>,
    pub from: Option<String>,
    pub basic: Option<FileBasic>,
}

/// `inject.basic`: the user and password; the one left out is the token.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileBasic {
    pub user: Option<FileBasicPart>,
    pub password: Option<FileBasicPart>,
}

/// A Basic part: a literal string, or `{ from: FIELD }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string, or a map with `from`")]
pub enum FileBasicPart {
    Literal(String),
    Field(FileFrom),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFrom {
    pub from: String,
}

/// One token entry: exactly one of `file`, `env`, `command`, `oauth2`,
/// `aws`, `fields`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    pub file: Option<String>,
    pub env: Option<String>,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub oauth2: Option<FileOAuth2>,
    /// One AWS credential set (`credentials.sigv4` upstreams).
    #[serde(default)]
    pub aws: Option<FileAws>,
    /// A structured token's fields, each from its own source.
    #[serde(default)]
    pub fields: Option<std::collections::BTreeMap<String, FileAwsPart>>,
    pub refresh: Option<Human>,
    pub timeout: Option<Human>,
    pub expires_at: Option<String>,
}

/// `credentials.sigv4`: what requests are signed for.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileSigV4 {
    pub region: Option<String>,
    pub service: Option<String>,
    /// `signed` or `unsigned`.
    pub payload: Option<String>,
}

/// `tokens[].aws`: the parts (`access_key_id`, `secret_access_key`,
/// `session_token`), `environment: true`, or a profile of the shared
/// credentials file (`profile`, `credentials_file`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileAws {
    #[serde(default)]
    pub access_key_id: Option<FileAwsPart>,
    #[serde(default)]
    pub secret_access_key: Option<FileAwsPart>,
    #[serde(default)]
    pub session_token: Option<FileAwsPart>,
    pub environment: Option<bool>,
    pub profile: Option<String>,
    pub credentials_file: Option<String>,
}

/// One part of an AWS credential or a structured token's field: exactly
/// one of `file`, `env`, `command`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileAwsPart {
    pub file: Option<String>,
    pub env: Option<String>,
    pub command: Option<Vec<String>>,
}

/// OAuth2 client-credentials grant (RFC 6749 §4.4).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileOAuth2 {
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_id_env: Option<String>,
    pub client_id_file: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    /// `basic` (HTTP Basic, RFC 6749's recommendation), `body` or
    /// `private_key_jwt`.
    pub client_auth: Option<String>,
    /// `client_credentials` or `jwt_bearer`.
    pub grant: Option<String>,
    pub private_key_file: Option<String>,
    pub key_id: Option<String>,
    pub service_account_file: Option<String>,
    pub subject: Option<String>,
    pub extra_params: Option<std::collections::BTreeMap<String, String>>,
    /// Refresh once this fraction of `expires_in` has passed (default 0.8).
    pub refresh_fraction: Option<f64>,
    pub timeout: Option<Human>,
    /// The longest wait between fetch retries while no token is usable.
    pub max_retry: Option<Human>,
    /// One fetch for the fleet: the token is shared through
    /// `cache.redis`, sealed with `cache.redis.secret_file`.
    pub share: Option<bool>,
    #[serde(default)]
    pub tls: Option<FileTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileProbe {
    pub path: Option<String>,
    pub interval: Option<Human>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    pub open_after: Option<u32>,
    pub retry_after: Option<Human>,
    pub max_retry_after: Option<Human>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileStale {
    pub on: Option<Vec<String>>,
    pub max_stale: Option<Human>,
    pub warning_header: Option<bool>,
    /// `honor` (default) follows RFC 9111 `must-revalidate` and RFC 5861
    /// `stale-if-error`; `ignore` serves any copy younger than `max_stale`.
    pub origin_directives: Option<String>,
    /// Mask token values an upstream echoes in a body on the way to the
    /// client too (such a body is never kept, with or without this).
    pub scrub_bodies: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    pub memory_bytes: Option<Human>,
    pub max_object_bytes: Option<Human>,
    #[serde(default)]
    pub persist: Option<FilePersist>,
    #[serde(default)]
    pub redis: Option<FileRedis>,
    /// Query parameters that carry a client's credential: a request with
    /// one is never stored.
    pub sensitive_query: Option<Vec<String>>,
    #[serde(default)]
    pub coalesce: Option<FileCoalesce>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileCoalesce {
    pub wait: Option<Human>,
    pub fleet: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamCache {
    /// `off` or `honor`.
    pub fresh: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FilePersist {
    pub path: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub timeout: Option<Human>,
    pub key_prefix: Option<String>,
    pub ca_file: Option<String>,
    pub queue: Option<usize>,
    pub ledger: Option<bool>,
    /// The key that seals shared OAuth2 tokens (`oauth2.share`).
    pub secret_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileMemory {
    pub soft_limit: Option<Human>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileAlerts {
    pub webhook: Option<String>,
    pub webhook_ca_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub level: Option<String>,
    pub access: Option<bool>,
    pub format: Option<String>,
}
