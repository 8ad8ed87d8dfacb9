//! graceway: a reverse-proxy sidecar on Pingora that injects an external
//! API's token into every request, hot-swaps tokens without dropping a
//! request, and answers from the last good response when the upstream
//! turns the token away or fails, saying so in headers, metrics and health.
//!
//! # Layout
//! Data flows one way: config -> model -> generation -> services; and for a
//! request: route -> token -> upstream -> outcome. Each folder is one
//! concept; no module imports a module that imports it
//! (`tests/it/architecture.rs` fails with the circle's path). Listed from
//! the bottom layer up: a module may use the ones above it in this table.
//!
//! | module | what lives there |
//! |---|---|
//! | [`clock`], [`outcome`], [`metrics`] | Unix time, backoff and RFC 3339; how a request ended and why it degraded; every Prometheus series |
//! | [`config`] | the YAML schema, the validated model, its validation, durations and sizes |
//! | `net` | the guard around each listener (connection cap, header deadline); the one outbound HTTP client |
//! | [`tokens`] | token sources (file, env, command, OAuth2), value checks and fingerprints, the per-upstream set with states, the vendor's evidence |
//! | [`generation`] | one swapped snapshot of config + tokens: upstreams with precomputed values, the router, injection targets, breakers |
//! | [`cache`] | the last-good cache: memory tier, what may be stored and served, persist tier, Redis fleet tier |
//! | `app` | process-wide state (`ArcSwap<Generation>`, the cache), reload and token refresh, probes and preflight, drain, systemd |
//! | `proxy` | the Pingora `ProxyHttp` implementation: the data plane, with request admission, target normalization, graceway's own answers, the access log |
//! | `admin` | health, readiness, status, metrics and reload endpoints |
//! | `control` | the background service: SIGHUP, pid file, file watcher, refresh schedule, probe tasks, the memory watch, the webhook |
//! | [`server`] | wiring of the Pingora server and its services; the logger |
//! | [`cli`] | `check`, `reload`, `status`, and `graceway demo` |
//!
//! Modules are `pub(crate)` unless `main.rs`, the benches or the example
//! use them (`cache`, `cli`, `config`, `generation`, `server`, `tokens`).

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub(crate) mod app;
pub mod cache;
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub(crate) mod control;
pub mod generation;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod outcome;
pub(crate) mod proxy;
pub mod server;
pub mod tokens;
