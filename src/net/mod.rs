//! Connections: the guard around each listener ([`listener`]: connection
//! cap, request-header deadline, the open-file limit, the figures `/status`
//! and `/metrics` read) and graceway's own outbound requests ([`outbound`]:
//! one HTTP client on Pingora's connector for probes, preflight, OAuth2,
//! the webhook, the CLI and the demo).

pub(crate) mod client_cert;
pub(crate) mod listener;
pub(crate) mod outbound;
