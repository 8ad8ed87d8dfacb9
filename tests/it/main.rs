//! graceway's integration tests: one crate, so the binary under test and
//! Pingora link once. Each module is one capability; every test spawns the
//! real `graceway` binary (see [`support`]) against mock upstreams on
//! loopback.

mod support;

mod architecture;
mod breaker;
mod check;
mod collapse;
mod connections;
mod credentials;
mod demo;
mod dns;
mod drain;
mod fleet;
mod grpc;
mod h2;
mod hostile;
mod hostile_admin;
mod idp;
mod image;
mod inject;
mod ledger;
mod ledger_trials;
mod lifecycle;
mod mtls;
mod nginx;
mod oauth2_assertions;
mod oauth2_share;
mod observability;
mod package;
mod persist_damage;
mod pools;
mod prometheus;
mod reflection;
mod reload;
mod secrets;
mod signals;
mod sigv4;
mod stale;
mod status_page;
mod streams;
mod systemd;
mod tls;
mod upgrade;
