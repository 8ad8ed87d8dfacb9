//! graceway: a reverse-proxy sidecar on Pingora that injects an external
//! API's token into every request, hot-swaps tokens without dropping a
//! request, and answers from the last good response when the upstream
//! turns the token away or fails, saying so in headers, metrics and health.
//!
//! # Layout
//! Data flows one way: config -> model -> generation -> services; and for a
//! request: route -> token -> upstream -> outcome.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | the YAML schema, the validated model, durations and sizes |
//! | [`tokens`] | token sources, value checks and fingerprints, the per-upstream set with states |
//! | [`generation`] | one swapped snapshot of config + tokens with precomputed request values; the router |
//! | [`app`] | process-wide state (`ArcSwap<Generation>`), reload and token refresh |
//! | [`breaker`] | the circuit breaker used twice per upstream: health and auth |
//! | [`proxy`] | the Pingora `ProxyHttp` implementation: the data plane |
//! | [`stale`] | the last-good cache: memory tier, persist tier, what may be stored and served |
//! | [`admin`] | health, readiness, status, metrics and reload endpoints |
//! | [`control`] | SIGHUP, pid file, token file watcher, command refresh |
//! | [`server`] | wiring of the Pingora server and its services |
//! | [`cli`] | `check`, `reload`, `status` |
//! | [`demo`] | the demo emoji API and the walkthrough of `graceway demo` |
//! | [`memory`] | resident-memory watch and shedding above `memory.soft_limit` |
//! | [`probe`] | background token probes and reload preflight |
//! | [`outbound`] | graceway's own requests (probes, OAuth2) through Pingora's connector |
//! | [`webhook`] | JSON POSTs on upstream and token state changes |
//! | [`access_log`] | one line per request, plain or JSON |
//! | [`lifecycle`] | SIGTERM drain, SIGQUIT hand-over, SIGINT; requests in flight |
//! | [`systemd`] | `Type=notify`: READY, RELOADING, STOPPING, the watchdog |
//! | [`listener`] | client connection cap and request-header deadline around each listener |
//! | [`logging`] | the logger, with Pingora's expected-event messages demoted and counted |
//! | [`metrics`], [`outcome`], [`json`], [`clock`] | shared small pieces |

//! Modules are `pub(crate)` unless `main.rs`, the benches or the example
//! use them (`breaker`, `cli`, `config`, `demo`, `generation`, `server`,
//! `stale`, `tokens`).

#![forbid(unsafe_code)]

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod app;
pub mod breaker;
pub mod cache;
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub(crate) mod control;
pub mod demo;
pub mod generation;
pub(crate) mod json;
pub(crate) mod lifecycle;
pub(crate) mod listener;
pub(crate) mod logging;
pub(crate) mod memory;
pub(crate) mod metrics;
pub(crate) mod outbound;
pub(crate) mod outcome;
pub(crate) mod probe;
pub(crate) mod proxy;
pub mod server;
pub(crate) mod systemd;
pub mod tokens;
pub(crate) mod webhook;

#[cfg(test)]
mod fuzz;
