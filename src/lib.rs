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
//! | [`stale`] | the last-good store: memory tier, persist tier, what may be stored and served |
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
//! | [`listener`] | client connection cap and request-header deadline around each listener |
//! | [`logging`] | the logger, with Pingora's expected-event messages demoted and counted |
//! | [`metrics`], [`outcome`], [`json`], [`clock`] | shared small pieces |

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod breaker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod generation;
pub mod json;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod outbound;
pub mod outcome;
pub mod probe;
pub mod proxy;
pub mod server;
pub mod stale;
pub mod tokens;
pub mod webhook;

#[cfg(test)]
mod fuzz;
