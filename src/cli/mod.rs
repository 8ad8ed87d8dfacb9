//! The commands besides `run`: `check`, `reload`, `status`.
//! Each returns the process exit code.
//! The demo (`graceway demo`) lives in [`demo`]; the text of `graceway
//! status` in `render.rs`.

#[cfg(feature = "demo")]
pub mod demo;
mod render;

pub use render::render_status;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::admin::status::Status;
use crate::config;
use crate::generation::{self, SourcePolicy, UpstreamStatus};
use crate::net::outbound;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts")
        .block_on(f)
}

/// Prints every error of a failed check and its summary line; exit code 1.
fn check_failed(path: &Path, errors: &[impl std::fmt::Display]) -> i32 {
    for e in errors {
        eprintln!("graceway: {e}");
    }
    eprintln!(
        "graceway: configuration file {} test failed ({} error{})",
        path.display(),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    1
}

/// `graceway check -c FILE`: like `nginx -t`. Validates the file (stage 1,
/// no I/O besides reading it), then checks the files it names, reads every
/// token source, resolves every upstream and loads every CA file (stage 2,
/// what `run` and reload do too). Prints every problem with its field
/// path; exit 0 only when none. `skip_sources` stops after stage 1, for
/// checking a config away from the machine it will run on.
pub fn check(path: &Path, skip_sources: bool) -> i32 {
    let loaded = match config::read(path) {
        Ok(l) => l,
        Err(errors) => return check_failed(path, &errors.0),
    };
    for w in loaded.config.warnings() {
        eprintln!("graceway: warning: {w}");
    }
    if skip_sources {
        println!(
            "graceway: configuration file {} syntax is ok ({} upstreams; token sources not read)",
            path.display(),
            loaded.config.upstreams.len()
        );
        return 0;
    }
    if let Err(errors) = config::files::check(&loaded.config) {
        return check_failed(path, &errors.0);
    }
    let built = block_on(async {
        let lookup = |name: &str| std::sync::Arc::new(UpstreamStatus::new(name));
        // With `oauth2.share`, check takes the fleet's token like a
        // replica: it reads the shared one, and a token it must fetch is
        // stored for the fleet, so checking costs no extra fetch.
        let shared = crate::tokens::Shared::default();
        let fleet = loaded
            .config
            .cache
            .redis
            .as_ref()
            .and_then(|r| crate::cache::fleet::FleetTier::new(r).ok());
        crate::app::share_oauth2(
            &loaded.config,
            fleet.as_ref(),
            &shared.oauth2,
            &format!("{} (graceway check)", crate::app::ledger::replica_name()),
        )
        .await;
        generation::build(
            loaded,
            1,
            None,
            &lookup,
            SourcePolicy::Require,
            false,
            &shared,
        )
        .await
    });
    match built {
        Err(errors) => check_failed(path, &errors.0),
        Ok(gen) => {
            println!(
                "graceway: configuration file {} syntax is ok",
                path.display()
            );
            for (i, u) in gen.upstreams.iter().enumerate() {
                let fps: Vec<String> = u
                    .tokens
                    .tokens
                    .iter()
                    .map(|t| format!("{} {}", t.spec.source.describe(), t.fingerprint))
                    .collect();
                println!(
                    "graceway: upstream {} -> {} ({}); tokens: {}",
                    u.config.name,
                    u.config.url.original,
                    u.addresses
                        .load()
                        .all()
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if fps.is_empty() {
                        "none".into()
                    } else {
                        fps.join(", ")
                    }
                );
                if let Some(c) = &u.client_cert {
                    let state = c.state(std::time::SystemTime::now());
                    println!(
                        "graceway: upstream {} client certificate {} ({}), key matches, {} until {}",
                        u.config.name,
                        c.fingerprint,
                        c.subject,
                        state.as_str(),
                        humantime::format_rfc3339_seconds(c.not_after)
                    );
                    if state != crate::net::client_cert::CertState::Active {
                        eprintln!(
                            "graceway: warning: upstreams[{}].tls.client_cert is {}",
                            i,
                            state.as_str()
                        );
                    }
                }
            }
            println!(
                "graceway: configuration file {} test is successful",
                path.display()
            );
            0
        }
    }
}

fn admin_url_from_config(path: &Path) -> Option<String> {
    // Only `admin.listen` is wanted: the files the config names need not be
    // readable by whoever asks for the status.
    config::read(path)
        .ok()
        .map(|l| format!("http://{}", l.config.admin.listen))
}

async fn get_status(admin: &str) -> Result<Status, String> {
    let r = outbound::request(
        "GET",
        &format!("{}/status", admin.trim_end_matches('/')),
        &[],
        b"",
        Duration::from_secs(5),
        outbound::Tls::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("/status answered {}", r.status));
    }
    // Typed: a field this version expects and the server does not send is
    // an error here, never a silent `-` in the table.
    serde_json::from_slice(&r.body)
        .map_err(|e| format!("/status is not the document this version reads: {e}"))
}

/// `graceway reload -c FILE`: checks the file, sends SIGHUP to the pid in
/// `pid_file`, then waits for the admin listener to report the result.
/// Exit 0 when the reload applied, 1 when it failed or could not be sent.
pub fn reload(path: &Path) -> i32 {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("graceway: {e}");
            }
            eprintln!("graceway: not reloading: {} is invalid", path.display());
            return 1;
        }
    };
    let pid_file = &loaded.config.pid_file;
    let pid: i32 = match std::fs::read_to_string(pid_file) {
        Ok(s) => match s.trim().parse() {
            Ok(p) if p > 0 => p,
            _ => {
                eprintln!("graceway: {} does not hold a pid", pid_file.display());
                return 1;
            }
        },
        Err(e) => {
            eprintln!(
                "graceway: cannot read pid file {}: {e} (is graceway running with this config?)",
                pid_file.display()
            );
            return 1;
        }
    };
    let admin = format!("http://{}", loaded.config.admin.listen);
    block_on(async {
        let before = get_status(&admin).await.ok().map(|s| s.reload.attempt);
        let rc = send_sighup(pid);
        if let Err(e) = rc {
            eprintln!("graceway: cannot signal pid {pid}: {e}");
            return 1;
        }
        let Some(before) = before else {
            println!("graceway: SIGHUP sent to pid {pid}; the admin listener {admin} did not answer, so the result is unknown (see the log)");
            return 0;
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(s) = get_status(&admin).await {
                let r = &s.reload;
                if r.attempt > before {
                    let msg = &r.message;
                    if r.ok {
                        println!(
                            "graceway: reload applied (generation {}): {msg}",
                            r.generation
                        );
                        return 0;
                    }
                    eprintln!("graceway: reload FAILED, the previous config and tokens stay in force: {msg}");
                    return 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "graceway: SIGHUP sent to pid {pid}, but no reload result within 60s (see the log)"
        );
        1
    })
}

fn send_sighup(pid: i32) -> std::io::Result<()> {
    use nix::sys::signal::{kill, Signal};
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP).map_err(std::io::Error::from)
}

/// `graceway status`: the inventory as a table; with `watch`, redrawn
/// every second until Ctrl-C (see [`watch`]).
pub fn status(admin: Option<String>, config_path: Option<&Path>, watch: bool) -> i32 {
    let admin = admin
        .or_else(|| config_path.and_then(admin_url_from_config))
        .unwrap_or_else(|| format!("http://{}", config::AdminConfig::default().listen));
    if watch {
        return block_on(self::watch(&admin));
    }
    match block_on(get_status(&admin)) {
        Ok(s) => {
            print!("{}", render_status(&s));
            0
        }
        Err(e) => {
            eprintln!("graceway: cannot read {admin}/status: {e}");
            1
        }
    }
}

/// How often `graceway status --watch` reads `/status`.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// `graceway status --watch`: reads `/status` every second and redraws
/// the tables. On a terminal each frame clears the screen first; otherwise
/// (a pipe, a file) each snapshot is printed after a separator line. When
/// the admin listener does not answer, the last tables give way to a line
/// saying so, and it keeps trying. Ctrl-C (SIGINT) or SIGTERM ends it with
/// exit code 0.
async fn watch(admin: &str) -> i32 {
    use std::io::{IsTerminal, Write};
    use tokio::signal::unix::{signal, SignalKind};
    let terminal = std::io::stdout().is_terminal();
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("graceway: cannot handle Ctrl-C: {e}");
            return 1;
        }
    };
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<String> = None;
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {}
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let fetched = tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            r = get_status(admin) => r,
        };
        let body = match fetched {
            Ok(st) => {
                failing_since = None;
                render_status(&st)
            }
            Err(e) => {
                let since = failing_since.get_or_insert_with(|| now.clone());
                format!("graceway: cannot read {admin}/status since {since}: {e}; retrying every second\n")
            }
        };
        let frame = if terminal {
            // Home, clear the screen, then the frame.
            format!("\x1b[H\x1b[2J{body}\n{now}  every 1 s from {admin}; Ctrl-C to quit\n")
        } else {
            format!("--- {now} {admin}/status\n{body}")
        };
        let mut out = std::io::stdout().lock();
        if out
            .write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // Whoever read our output is gone (a closed pipe).
            return 0;
        }
    }
    0
}
