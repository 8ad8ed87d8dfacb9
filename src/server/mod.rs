//! Wiring: config -> [`App`] -> Pingora server with three services
//! (control, proxy, admin) -> run.
//!
//! [`logging`]: the logger, with Pingora's messages about expected client
//! and pool events demoted to DEBUG and counted.

pub(crate) mod logging;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use pingora::services::ServiceHandle;

use crate::admin::AdminApp;
use crate::app::App;
use crate::config::{self, Config};
use crate::control::Control;
use crate::proxy::Proxy;

/// How `graceway run` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    pub daemon: bool,
    pub upgrade: bool,
}

/// Loads the config, builds the first generation and runs until a signal
/// ends the process. Errors before the listeners bind exit non-zero.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let loaded = config::load(&opts.config)?;
    crate::server::logging::init(&loaded.config.log);
    for w in loaded.config.warnings() {
        log::warn!("{w}");
    }
    let app = start_app(loaded)?;
    let (server, _) = build_server(&app, &opts)?;
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(crate::app::lifecycle::Signals { app: app.clone() }),
    });
    crate::app::lifecycle::finish(&app);
    Ok(())
}

/// Builds the first generation on a short-lived runtime (Pingora starts its
/// own runtimes later, possibly after forking).
pub fn start_app(loaded: config::LoadedConfig) -> anyhow::Result<Arc<App>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the startup runtime")?;
    Ok(rt.block_on(App::start(loaded))?)
}

/// Pingora's settings from ours. `work_stealing: false` keeps each thread
/// on its own scheduler (measured ~10% less CPU per request).
pub fn server_conf(cfg: &Config, daemon: bool) -> ServerConf {
    ServerConf {
        daemon,
        threads: cfg.server.worker_threads(),
        work_stealing: false,
        pid_file: cfg.pid_file.display().to_string(),
        upgrade_sock: cfg.server.upgrade_sock.display().to_string(),
        // graceway drains on its own (see `lifecycle`): Pingora's grace
        // period only has to outlast it, and what is left after that is cut.
        grace_period_seconds: Some(crate::app::lifecycle::pingora_grace_period(&cfg.server)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// Handles of the services [`build_server`] added, so that callers (the
/// demo) can add services that start after them.
pub struct Services {
    pub control: ServiceHandle,
    pub proxy: ServiceHandle,
    pub admin: ServiceHandle,
}

/// The server with its three services.
pub fn build_server(app: &Arc<App>, opts: &RunOptions) -> anyhow::Result<(Server, Services)> {
    let gen = app.live.load_full();
    let cfg = &gen.loaded.config;
    let conf = server_conf(cfg, opts.daemon);
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let control = GenBackgroundService::new(
        "graceway control".to_string(),
        Arc::new(Control { app: app.clone() }),
    );
    let control_handle = server.add_service(control);

    let (nofile_soft, nofile_hard) = crate::net::listener::raise_nofile_limit();
    app.limits.get_or_init(|| crate::net::listener::Limits {
        nofile_soft,
        nofile_hard,
    });
    let max_connections = cfg
        .server
        .max_connections
        .unwrap_or_else(|| crate::net::listener::default_max_connections(nofile_soft));
    let header_timeout = cfg.server.request_header_timeout;

    let mut proxy_http =
        pingora::proxy::http_proxy(&server.configuration, Proxy { app: app.clone() });
    if cfg.server.h2c {
        // HTTP/2 with prior knowledge beside HTTP/1.1; an h2c connection
        // with no stream open is closed after the keep-alive timeout (the
        // value at start: Pingora reads the options per connection from
        // this app, which is fixed once the service runs).
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        options.h2_idle_timeout = Some(cfg.server.client_keepalive_timeout);
        proxy_http.server_options = Some(options);
    }
    let proxy_app = crate::net::listener::Guarded::new(
        proxy_http,
        app.listeners.proxy.clone(),
        max_connections,
        header_timeout,
    );
    let mut proxy = Service::new("graceway proxy".to_string(), proxy_app);
    proxy.add_tcp(&cfg.listen.to_string());
    let proxy_handle = server.add_service(proxy);
    proxy_handle.add_dependency(&control_handle);

    let admin_app = crate::net::listener::Guarded::new(
        HttpServer::new_app(AdminApp { app: app.clone() }),
        app.listeners.admin.clone(),
        cfg.admin.max_connections,
        header_timeout,
    );
    let mut admin = Service::new("graceway admin".to_string(), admin_app);
    admin.add_tcp(&cfg.admin.listen.to_string());
    let admin_handle = server.add_service(admin);
    admin_handle.add_dependency(&control_handle);

    if max_connections as u64 * 2 + cfg.admin.max_connections as u64 + 64 > nofile_soft {
        log::warn!(
            "server.max_connections {max_connections} may use up the open-file limit {nofile_soft} (each client connection can hold an upstream connection too)"
        );
    }

    if cfg.upstreams.iter().any(|u| u.url.tls && !u.tls.verify) {
        for u in cfg.upstreams.iter().filter(|u| u.url.tls && !u.tls.verify) {
            log::warn!(
                "upstream {}: tls.verify is false: certificates are NOT checked, anyone on the path can read the token",
                u.name
            );
        }
    }
    Ok((
        server,
        Services {
            control: control_handle,
            proxy: proxy_handle,
            admin: admin_handle,
        },
    ))
}
