//! The one way the process state changes: [`App::reload`] (the config file
//! and every token source, on SIGHUP, `POST /reload` or a config change)
//! and [`App::refresh_tokens`] (the token sources alone, on a token file
//! change or a due refresh). Both build a new generation beside the one in
//! force and swap it in whole, or keep the old one and say why.

use std::sync::Arc;
use std::time::SystemTime;

use super::*;

impl App {
    /// Re-reads the config file and every token source, checks them, and
    /// swaps them in at once. On any error the old generation stays in
    /// force; the failure is logged, counted and kept for `/status`.
    ///
    /// Concurrent calls coalesce: a call answers with the result of a run
    /// that started after the call arrived, so a burst of reload requests
    /// costs at most two runs, and every caller's change is seen.
    pub async fn reload(&self, trigger: Trigger) -> ReloadRecord {
        use std::sync::atomic::Ordering::SeqCst;
        let arrived = self.runs_started.load(SeqCst);
        let _one_at_a_time = self.reload_lock.lock().await;
        if let (run, Some(record)) = &*self.last_run.lock().unwrap_or_else(|e| e.into_inner()) {
            if *run > arrived {
                return record.clone();
            }
        }
        let run = self.runs_started.fetch_add(1, SeqCst) + 1;
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            crate::app::systemd::notify(&[sd_notify::NotifyState::Reloading, now]);
        }
        let record = self.reload_now(trigger).await;
        crate::app::systemd::notify(&[sd_notify::NotifyState::Ready]);
        let m = metrics();
        m.config_reloads_total
            .with_label_values(&[if record.ok { "ok" } else { "failed" }])
            .inc();
        m.config_last_reload_successful.set(i64::from(record.ok));
        if record.ok {
            m.config_last_reload_success_timestamp_seconds
                .set(crate::clock::unix_now() as i64);
        }
        *self.last_run.lock().unwrap_or_else(|e| e.into_inner()) = (run, Some(record.clone()));
        record
    }

    async fn reload_now(&self, trigger: Trigger) -> ReloadRecord {
        let current = self.live.load_full();
        let result = match config::load(&self.config_path) {
            Err(e) => Err(ReloadError::Config(e)),
            Ok(loaded) => {
                let mut notes = Vec::new();
                let old = &current.loaded.config;
                if loaded.config.listen != old.listen
                    || loaded.config.admin.listen != old.admin.listen
                    || loaded.config.pid_file != old.pid_file
                    || loaded.config.server.h2c != old.server.h2c
                {
                    notes.push(
                        "listen, admin.listen, pid_file and server.h2c changes apply at the next restart"
                            .to_string(),
                    );
                }
                let lookup = |name: &str| status_for(&self.statuses, name);
                match generation::build(
                    loaded,
                    current.number + 1,
                    Some(&current),
                    &lookup,
                    SourcePolicy::Require,
                    false,
                    &self.shared,
                )
                .await
                {
                    Err(e) => Err(e.into()),
                    Ok(g) => match crate::app::probe::preflight(&g, &current).await {
                        Ok(()) => Ok((g, notes)),
                        Err(e) => Err(e.into()),
                    },
                }
            }
        };
        self.finish(trigger, &current, result)
    }

    /// Re-reads the token sources of the config in force (a watched file
    /// changed, or a command's refresh came due). Swaps only when a value
    /// changed; tokens whose value did not change keep their state.
    pub async fn refresh_tokens(&self, trigger: Trigger) -> Option<ReloadRecord> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.live.load_full();
        let lookup = |name: &str| status_for(&self.statuses, name);
        let built = generation::build(
            current.loaded.clone(),
            current.number + 1,
            Some(&current),
            &lookup,
            SourcePolicy::KeepPrevious,
            true,
            &self.shared,
        )
        .await;
        let gen = match built {
            Ok(g) => g,
            Err(e) => return Some(self.finish(trigger, &current, Err(e.into()))),
        };
        let unchanged = gen
            .upstreams
            .iter()
            .zip(current.upstreams.iter())
            .all(|(n, o)| {
                n.same_client_cert(o)
                    && n.tokens.tokens.len() == o.tokens.tokens.len()
                    && n.tokens
                        .tokens
                        .iter()
                        .zip(o.tokens.tokens.iter())
                        .all(|(a, b)| a.same_value(b))
            });
        if unchanged && gen.warnings.is_empty() {
            return None;
        }
        if let Err(e) = crate::app::probe::preflight(&gen, &current).await {
            return Some(self.finish(trigger, &current, Err(e.into())));
        }
        if !gen.warnings.is_empty() {
            // Report the failed sources; apply what did change. The same
            // failure seen again with nothing changed is not reported again
            // (a retry schedule or folder events would repeat it).
            let message = gen.warnings.join("; ");
            let last = self.last_reload.load();
            if unchanged && !last.ok && last.message == message {
                return None;
            }
            if !unchanged {
                self.finish(trigger, &current, Ok((gen, Vec::new())));
            }
            let failed = Err(ReloadError::Sources(message));
            return Some(self.finish(trigger, &self.live.load_full(), failed));
        }
        Some(self.finish(trigger, &current, Ok((gen, Vec::new()))))
    }

    fn finish(
        &self,
        trigger: Trigger,
        current: &Generation,
        result: Result<(Generation, Vec<String>), ReloadError>,
    ) -> ReloadRecord {
        let attempt = self.last_reload.load().attempt + 1;
        let record = match result {
            Ok((gen, notes)) => {
                warn_risky_changes(current, &gen);
                let changes = describe_changes(current, &gen);
                let mut message = changes;
                for n in notes {
                    message.push_str("; ");
                    message.push_str(&n);
                }
                let number = gen.number;
                publish_token_metrics(&gen, Some(current));
                self.live.store(Arc::new(gen));
                metrics()
                    .token_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                log::info!("reload ({trigger:?}) applied generation {number}: {message}");
                ReloadRecord {
                    attempt,
                    at: SystemTime::now(),
                    trigger,
                    ok: true,
                    message,
                    generation: number,
                }
            }
            Err(error) => {
                let message = error.to_string();
                metrics()
                    .token_reloads_total
                    .with_label_values(&["failed"])
                    .inc();
                log::error!(
                    "reload ({trigger:?}) failed, generation {} stays in force: {message}",
                    current.number
                );
                ReloadRecord {
                    attempt,
                    at: SystemTime::now(),
                    trigger,
                    ok: false,
                    message,
                    generation: current.number,
                }
            }
        };
        self.last_reload.store(Arc::new(record.clone()));
        self.timeline.record(crate::app::timeline::Change {
            at: humantime::format_rfc3339_seconds(record.at).to_string(),
            kind: "reload".into(),
            upstream: None,
            token: None,
            fingerprint: None,
            from: format!("generation {}", current.number),
            to: if record.ok {
                format!("generation {}", record.generation)
            } else {
                "refused".into()
            },
            reason: Some(format!("{}: {}", trigger.as_str(), record.message)),
        });
        record
    }
}

/// Logs at WARN what a reload takes away from an upstream: the upstream
/// itself, or its credentials (a file cut short or a bad template render
/// would otherwise change what is sent without a word).
fn warn_risky_changes(old: &Generation, new: &Generation) {
    for u in &old.upstreams {
        let name = &u.config.name;
        match new.upstream_named(name) {
            None => log::warn!("reload: upstream {name} was removed: its requests now get 404"),
            Some(n) => {
                let creds = |c: &Option<crate::config::Credentials>| {
                    c.as_ref()
                        .map(|c| format!("{:?} {:?} {:?}", c.inject, c.tokens, c.failover_on))
                };
                let (before, after) = (creds(&u.config.credentials), creds(&n.config.credentials));
                if before != after {
                    log::warn!(
                        "reload: upstream {name}: credentials changed ({} -> {})",
                        if before.is_some() { "tokens" } else { "none" },
                        match &n.config.credentials {
                            Some(c) => format!("{} token(s)", c.tokens.len()),
                            None => "none: requests go out without a token".into(),
                        }
                    );
                }
            }
        }
    }
}

/// A one-line summary of what a reload changed, by fingerprint.
fn describe_changes(old: &Generation, new: &Generation) -> String {
    let mut parts = Vec::new();
    if old.loaded.file_hash != new.loaded.file_hash {
        parts.push(format!(
            "config {} -> {}",
            old.loaded.file_hash, new.loaded.file_hash
        ));
    }
    for u in &new.upstreams {
        let before = old.upstream_named(&u.config.name);
        if before.is_some_and(|b| !u.same_client_cert(b))
            || before.is_none() && u.client_cert.is_some()
        {
            let fp = |u: Option<&Arc<crate::generation::Upstream>>| {
                u.and_then(|u| u.client_cert.as_ref())
                    .map_or("none".to_string(), |c| c.fingerprint.clone())
            };
            parts.push(format!(
                "{}.client_cert {} -> {}",
                u.config.name,
                fp(before),
                fp(Some(u))
            ));
        }
        for t in &u.tokens.tokens {
            let prev = before.and_then(|b| b.tokens.tokens.get(t.index));
            if prev.is_none_or(|p| p.fingerprint != t.fingerprint) {
                parts.push(format!(
                    "{}.tokens[{}] {} -> {}",
                    u.config.name,
                    t.index,
                    prev.map_or("none", |p| p.fingerprint.as_str()),
                    t.fingerprint
                ));
            }
        }
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join(", ")
    }
}
