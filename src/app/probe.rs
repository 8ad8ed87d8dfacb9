//! Probes: a cheap request (`credentials.probe.path`) sent with each token
//! in the background, to find a rejected token before users do and to see
//! recovery; and the same request as a reload's preflight.
//!
//! What a probe answer means:
//! - 401/403: the token is rejected (failover and the auth breaker follow);
//!   this is also how a `suspect` token (a request met a 401/403 without an
//!   error code) is confirmed: its suspicion wakes the probe at once;
//! - 5xx, a timeout or no connection: the upstream is unwell (fed to the
//!   health breaker; the next probe backs off, up to 8x the interval);
//! - anything else: the token is accepted and the upstream answers (a
//!   rejected token is cleared, which closes the auth breaker; the health
//!   breaker closes).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::http::RequestHeader;

use crate::app::ledger::FleetTrials;
use crate::generation::Generation;
use crate::generation::Upstream;
use crate::net::outbound::{self, Failure};
use crate::outcome::Reason;
use crate::tokens::Token;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Accepted(u16),
    Rejected(u16),
    Failed(Reason),
}

/// Sends the probe request with `token`.
pub async fn probe_token(up: &Upstream, token: &Token) -> ProbeResult {
    let Some(spec) = up.probe() else {
        return ProbeResult::Failed(Reason::UpstreamUnreachable);
    };
    probe_path(up, Some(token), &spec.path).await
}

/// `GET path` with `token` injected (none for an upstream without
/// credentials), none of a client's headers.
async fn probe_path(up: &Upstream, token: Option<&Token>, path: &str) -> ProbeResult {
    match probe_answer(up, token, path).await {
        Ok(a) if a.status == 401 || a.status == 403 => ProbeResult::Rejected(a.status),
        Ok(a) if a.status >= 500 => ProbeResult::Failed(Reason::Upstream5xx),
        Ok(a) => ProbeResult::Accepted(a.status),
        Err(Failure::Timeout) => ProbeResult::Failed(Reason::UpstreamTimeout),
        Err(Failure::Unreachable(_)) => ProbeResult::Failed(Reason::UpstreamUnreachable),
    }
}

/// The answer to `GET path` with `token` injected (see [`probe_path`]).
async fn probe_answer(
    up: &Upstream,
    token: Option<&Token>,
    path: &str,
) -> Result<outbound::Answer, Failure> {
    let unusable = || {
        Err(Failure::Unreachable(
            "cannot build the probe request".into(),
        ))
    };
    if up.inject.is_some() && token.is_none_or(|t| t.injected.is_none()) {
        return unusable();
    }
    let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), Some(4)) else {
        return unusable();
    };
    let built = req
        .insert_header(http::header::HOST, up.host_header.clone())
        .and_then(|_| {
            req.insert_header(
                http::header::USER_AGENT,
                concat!("graceway-probe/", env!("CARGO_PKG_VERSION")),
            )
        })
        .and_then(|_| match (&up.inject, token) {
            (Some(target), Some(t)) => target.inject(t, &mut req, None),
            _ => Ok(()),
        });
    if built.is_err() {
        return unusable();
    }
    let deadline = up.config.timeouts.connect + up.config.timeouts.read;
    outbound::send(&up.next_peer(0).0, req, None, deadline, 1 << 20).await
}

/// Applies a probe's answer to the token and the breakers.
pub fn apply(up: &Upstream, token: &Token, result: ProbeResult) {
    let name = &up.config.name;
    match result {
        ProbeResult::Accepted(status) => {
            if token.recovered(crate::tokens::ledger::Evidence::Probe) {
                log::info!(
                    "upstream {name}: probe: token {} ({}) accepted again ({status})",
                    token.index,
                    token.fingerprint
                );
            }
            up.status.health_success();
        }
        ProbeResult::Rejected(status) => {
            if token.mark_rejected(status, crate::tokens::ledger::Evidence::Probe) {
                log::warn!(
                    "upstream {name}: probe: token {} ({}) rejected with {status}",
                    token.index,
                    token.fingerprint
                );
            }
            up.status.health_success();
        }
        ProbeResult::Failed(reason) => up.status.health_failure(reason),
    }
    if up.tokens.any_usable(SystemTime::now()) && up.auth.success() {
        log::info!("upstream {name}: auth breaker closed: a token is usable again");
    }
}

/// Probes every token of one upstream once; true when the upstream
/// answered (whatever it said about the tokens). With the fleet ledger on,
/// a token another replica probes this `window` is left to it (its
/// result reaches this replica through the ledger).
pub async fn probe_upstream(up: &Upstream, fleet: Option<&FleetTrials>, window: Duration) -> bool {
    let mut answered = true;
    for t in &up.tokens.tokens {
        if t.injected.is_none() {
            continue;
        }
        if let Some(f) = fleet {
            if !f.take(t, window).await {
                continue;
            }
        }
        let r = probe_token(up, t).await;
        if matches!(r, ProbeResult::Failed(_)) {
            answered = false;
        }
        apply(up, t, r);
    }
    answered
}

/// A small deterministic jitter: ±10% of `d`, varied by the clock.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos() as u64);
    let span = d.as_millis() as u64 / 5; // 20% wide window
    if span == 0 {
        return d;
    }
    let offset = nanos % span;
    d - Duration::from_millis(span / 2) + Duration::from_millis(offset)
}

/// The earlier of a timer's `instant` and the wall-clock time `t` (a
/// breaker's next trial), as a timer instant.
fn earlier(instant: tokio::time::Instant, t: SystemTime) -> tokio::time::Instant {
    let left = t
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    instant.min(tokio::time::Instant::now() + left)
}

/// A timer instant no wait reaches (a day from now).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// The probe loop of one upstream of one generation; the control service
/// aborts it when a new generation is swapped in and starts the next.
pub async fn run(
    live: Arc<dyn Fn() -> Arc<Generation> + Send + Sync>,
    generation: u64,
    name: String,
    fleet: Option<FleetTrials>,
) {
    let mut failures: u32 = 0;
    // The newest suspicion already probed (see `Evidence::suspect`).
    let mut probed_suspicion = 0u64;
    loop {
        let gen = live();
        if gen.number != generation {
            return;
        }
        let Some(up) = gen.upstream_named(&name).cloned() else {
            return;
        };
        let Some(interval) = up.probe().map(|p| p.interval) else {
            return;
        };
        drop(gen);
        // Sleep until the next probe: while the health breaker is open the
        // probe is its half-open test and follows the breaker's schedule
        // (`retry_after`, doubling to `max_retry_after`). A request wakes
        // the loop when the breaker opens or a token becomes suspect.
        let wait = crate::clock::backoff(interval, failures + 1, interval * 8);
        let due = tokio::time::Instant::now() + jitter(wait);
        let mut trial = false;
        while tokio::time::Instant::now() < due {
            if up.status.health.is_open() && up.status.health.try_trial() {
                trial = true;
                break;
            }
            // A token met a 401/403 without an error code: the probe, on a
            // path the token is known to reach, decides at once whether
            // the token is rejected or the refusal was about that resource.
            let suspicion = up
                .tokens
                .tokens
                .iter()
                .map(|t| t.evidence.suspect_since())
                .max()
                .unwrap_or(0);
            if suspicion > probed_suspicion {
                probed_suspicion = suspicion;
                break;
            }
            let until = [up.status.health.next_trial()]
                .into_iter()
                .flatten()
                .fold(due, earlier);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = up.status.wake.notified() => {}
            }
        }
        if probe_upstream(&up, fleet.as_ref(), wait).await {
            failures = 0;
        } else if !trial {
            failures += 1;
        }
    }
}

/// The background trial of one upstream without a probe, for one
/// generation: while a breaker is open (copies or 503s are being served),
/// one request per breaker window replays the most recent path kept as a
/// last-good copy (a successful GET, without any client's headers), so a
/// recovery is found without waiting for a client. The auth breaker's
/// trial carries the next rejected token (cycling, as request trials do);
/// the health breaker's a usable one. Requests take the same trial slot,
/// so there is still one trial per window. With the fleet ledger the auth
/// breaker's trials are the fleet's: this task takes the trial lock of a
/// token (or of the next rejected one, when another replica tries that
/// one), and tries it on the last good path, or, with no path yet, leaves
/// it to the next request (`Upstream::trial_grant`).
pub async fn trials(
    live: Arc<dyn Fn() -> Arc<Generation> + Send + Sync>,
    generation: u64,
    name: String,
    fleet: Option<FleetTrials>,
) {
    let mut first = true;
    loop {
        let gen = live();
        if gen.number != generation {
            return;
        }
        let Some(up) = gen.upstream_named(&name).cloned() else {
            return;
        };
        drop(gen);
        // Sleep until a breaker grants its next trial, or a request wakes
        // this task (a breaker opened); a closed breaker needs no trial.
        // The first pass looks before sleeping (a breaker open already).
        if !first {
            let next = [up.status.health.next_trial(), up.auth.next_trial()]
                .into_iter()
                .flatten()
                .fold(None, |a: Option<tokio::time::Instant>, t| {
                    let t = earlier(far_future(), t);
                    Some(a.map_or(t, |a| a.min(t)))
                });
            match next {
                Some(until) => tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = up.status.wake.notified() => {}
                },
                None => up.status.wake.notified().await,
            }
        }
        first = false;
        let path = up.status.last_good_path();
        let now = SystemTime::now();
        let fleet = fleet.as_ref().filter(|_| up.tokens.in_fleet());
        let health_trial_now =
            path.is_some() && up.status.health.is_open() && up.status.health.try_trial();
        if let (Some(path), true) = (&path, health_trial_now) {
            health_trial(&up, path, now).await;
        } else if up.auth.is_open() && (path.is_some() || fleet.is_some()) && up.auth.try_trial() {
            let n = up
                .auth_trials
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // One trial of a token per window for the fleet: a token
            // another replica tries now is left to it, and the next
            // rejected one tried instead, so the fleet tries each once.
            // The lock lives this window (the breaker's doubled backoff),
            // so replicas whose windows do not line up still share one.
            let window = up
                .auth
                .next_trial()
                .and_then(|t| t.duration_since(now).ok())
                .unwrap_or_default()
                .max(up.config.health.retry_after);
            let mut chosen = None;
            for t in up.tokens.trial_tokens(n, now) {
                match fleet {
                    Some(f) if !f.take(t, window).await => continue,
                    _ => {
                        chosen = Some(t);
                        break;
                    }
                }
            }
            let Some(t) = chosen else {
                continue;
            };
            match &path {
                Some(path) => auth_trial(&up, t, path).await,
                // No path to try it on: the next request carries it.
                None => up
                    .trial_grant
                    .store(t.index + 1, std::sync::atomic::Ordering::Relaxed),
            }
        }
    }
}

/// The health breaker's background trial: the last good path with a usable
/// token.
async fn health_trial(up: &Upstream, path: &str, now: SystemTime) {
    let token = up.tokens.pick(0, now);
    match probe_path(up, token, path).await {
        ProbeResult::Failed(reason) => up.status.health_failure(reason),
        ProbeResult::Accepted(status) | ProbeResult::Rejected(status) => {
            log::info!(
                "upstream {}: background trial GET {} answered {status}",
                up.config.name,
                crate::app::probe::shown_path(path)
            );
            up.status.health_success();
        }
    }
}

/// The auth breaker's background trial of rejected token `t` on the last
/// good path.
async fn auth_trial(up: &Upstream, t: &crate::tokens::Token, path: &str) {
    match probe_path(up, Some(t), path).await {
        ProbeResult::Accepted(status) => {
            if t.recovered(crate::tokens::ledger::Evidence::Trial) {
                log::info!(
                    "upstream {}: background trial: token {} ({}) accepted again ({status}); auth breaker closed",
                    up.config.name,
                    t.index,
                    t.fingerprint
                );
            }
            up.auth.success();
            up.status.health_success();
        }
        ProbeResult::Rejected(_) => up.status.health_success(),
        ProbeResult::Failed(reason) => up.status.health_failure(reason),
    }
}

/// A path for a log line: without its query (which may name things the
/// operator did not choose to log).
pub fn shown_path(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// Reload preflight: tries every token of `new` whose value the running
/// generation does not already use, for upstreams with `preflight: true`.
/// A new client certificate is tried first (see
/// [`preflight_client_cert`]).
/// A refused token fails the reload (the message names its fingerprint and
/// the upstream's status); an upstream that cannot be reached does not
/// (preflight guards against a refused token, not against an outage).
pub async fn preflight(new: &Generation, current: &Generation) -> Result<(), PreflightError> {
    let mut refused = Vec::new();
    for (i, up) in new.upstreams.iter().enumerate() {
        let enabled = up
            .config
            .credentials
            .as_ref()
            .is_some_and(|c| c.preflight && c.probe.is_some());
        if !enabled {
            continue;
        }
        let old = current.upstream_named(&up.config.name);
        if let Some(line) = preflight_client_cert(i, up, old).await {
            refused.push(line);
        }
        for t in &up.tokens.tokens {
            if t.injected.is_none() {
                continue;
            }
            let known = old.is_some_and(|o| o.tokens.tokens.iter().any(|ot| ot.same_value(t)));
            if known {
                continue;
            }
            match probe_token(up, t).await {
                ProbeResult::Rejected(status) => refused.push(format!(
                    "upstreams[{i}].credentials.tokens[{}]: preflight: upstream {} refused token {} with {status}",
                    t.index, up.config.name, t.fingerprint
                )),
                ProbeResult::Failed(reason) => log::warn!(
                    "upstream {}: preflight could not check token {} ({}); applying it anyway",
                    up.config.name,
                    t.fingerprint,
                    reason.as_str()
                ),
                ProbeResult::Accepted(status) => log::info!(
                    "upstream {}: preflight: token {} accepted ({status})",
                    up.config.name,
                    t.fingerprint
                ),
            }
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(PreflightError { refused })
    }
}

/// Preflight of a new client certificate (`tls.client_cert` changed, or
/// is new): the probe is sent over a new connection with it (its pool key
/// differs, see `HttpPeer`'s hash), with a token the running generation
/// uses. The line for the refusal, if the upstream refused it; an upstream
/// that cannot be reached does not refuse it (see [`preflight`]).
async fn preflight_client_cert(
    i: usize,
    up: &Upstream,
    old: Option<&Arc<Upstream>>,
) -> Option<String> {
    let cert = up.client_cert.as_ref()?;
    if old.is_some_and(|o| up.same_client_cert(o)) {
        return None;
    }
    let path = &up.probe()?.path;
    let token = up.tokens.tokens.iter().find(|t| {
        t.injected.is_some()
            && old.is_none_or(|o| o.tokens.tokens.iter().any(|ot| ot.same_value(t)))
    });
    let token = token.or_else(|| up.tokens.tokens.iter().find(|t| t.injected.is_some()));
    let answer = probe_answer(up, token, path).await;
    let name = &up.config.name;
    match cert_refusal(&answer) {
        Some(why) => Some(format!(
            "upstreams[{i}].tls.client_cert: preflight: upstream {name} refused client certificate {} ({why})",
            cert.fingerprint
        )),
        None => {
            match &answer {
                Ok(a) => log::info!("upstream {name}: preflight: client certificate {} accepted ({})", cert.fingerprint, a.status),
                Err(e) => log::warn!("upstream {name}: preflight could not check client certificate {} ({e}); applying it anyway", cert.fingerprint),
            }
            None
        }
    }
}

/// Whether an answer says the upstream refused the client certificate, and
/// how: a TLS alert (a server that checks the certificate in the
/// handshake: `bad_certificate`, `unknown_ca`, `certificate_required`,
/// ...), nginx's `ssl_verify_client on` answer (a 400 saying "No required
/// SSL certificate was sent" or "The SSL certificate error"; 495 and 496
/// where its `error_page` passes them on), or a 401/403 (a server that
/// maps certificates to accounts). A timeout or a refused connection is no
/// verdict on the certificate.
fn cert_refusal(answer: &Result<outbound::Answer, Failure>) -> Option<String> {
    match answer {
        Err(Failure::Unreachable(e)) if e.to_ascii_lowercase().contains("alert") => {
            Some(format!("TLS: {e}"))
        }
        Err(_) => None,
        Ok(a) => {
            let nginx = |body: &[u8]| {
                let text = String::from_utf8_lossy(body);
                text.contains("No required SSL certificate was sent")
                    || text.contains("The SSL certificate error")
            };
            match a.status {
                400 if nginx(&a.body) => {
                    Some("400: the upstream did not accept the certificate".into())
                }
                495 | 496 => Some(format!(
                    "{}: the upstream did not accept the certificate",
                    a.status
                )),
                401 | 403 => Some(format!("{} with a token in use", a.status)),
                _ => None,
            }
        }
    }
}

/// Tokens the upstream refused during reload preflight, one line each
/// (config path, upstream, fingerprint, status).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", refused.join("; "))]
pub struct PreflightError {
    pub refused: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<outbound::Answer, Failure> {
        Ok(outbound::Answer {
            status,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from(body.to_string()),
        })
    }

    #[test]
    fn what_counts_as_a_refused_client_certificate() {
        let nginx = |m: &str| {
            format!("<html><head><title>400 {m}</title></head><body><center><h1>400 Bad Request</h1></center><center>{m}</center></body></html>")
        };
        for refused in [
            answer(400, &nginx("No required SSL certificate was sent")),
            answer(400, &nginx("The SSL certificate error")),
            answer(495, ""),
            answer(496, ""),
            answer(403, "{}"),
            answer(401, ""),
            Err(Failure::Unreachable(
                "TLSHandshakeFailure context: tls stream error cause: received fatal alert: UnknownCA".into(),
            )),
            Err(Failure::Unreachable("ReadError cause: received fatal alert: CertificateRequired".into())),
        ] {
            assert!(cert_refusal(&refused).is_some(), "{refused:?}");
        }
        for verdict_none in [
            answer(200, "ok"),
            answer(404, ""),
            answer(400, "{\"error\":\"bad request\"}"),
            answer(503, ""),
            Err(Failure::Timeout),
            Err(Failure::Unreachable(
                "ConnectRefused context: Connection refused".into(),
            )),
        ] {
            assert!(cert_refusal(&verdict_none).is_none(), "{verdict_none:?}");
        }
    }
}
