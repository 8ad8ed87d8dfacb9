//! The `graceway` binary: parses the command line and hands over to the
//! library. No logic lives here.

#[cfg(feature = "demo")]
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// jemalloc: glibc malloc cost ~8% of CPU per request in measurements.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "graceway",
    version,
    about = "Token-injecting reverse-proxy sidecar that serves the last good answer when the upstream turns the token away"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground (or --daemon)
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Run in the background (Pingora's daemon mode)
        #[arg(short, long)]
        daemon: bool,
        /// Take over the listening sockets of a running instance (graceful upgrade)
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate the config and every token source, like `nginx -t`
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Check the file only: do not read token sources, resolve hosts or load CA files
        #[arg(long)]
        skip_sources: bool,
    },
    /// Send SIGHUP to the running instance (pid file from the config) and report the result
    Reload {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show upstreams, token fingerprints and states as a table
    Status {
        /// Admin listener URL (default: from --config, else http://127.0.0.1:9180)
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Redraw the tables every second until Ctrl-C (for a shell with no browser)
        #[arg(long)]
        watch: bool,
    },
    /// Run a demo emoji API with graceway in front of it and walk through an outage
    #[cfg(feature = "demo")]
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9999")]
        api: SocketAddr,
        /// Folder for the demo's files (default: a new folder under the temp dir)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Exit after the walkthrough; non-zero if any step went unexpectedly
        #[arg(long)]
        exit: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            config,
            daemon,
            upgrade,
        } => {
            match graceway::server::run(graceway::server::RunOptions {
                config,
                daemon,
                upgrade,
            }) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("graceway: {e:#}");
                    1
                }
            }
        }
        Command::Check {
            config,
            skip_sources,
        } => graceway::cli::check(&config, skip_sources),
        Command::Reload { config } => graceway::cli::reload(&config),
        Command::Status {
            admin,
            config,
            watch,
        } => graceway::cli::status(admin, config.as_deref(), watch),
        #[cfg(feature = "demo")]
        Command::Demo {
            listen,
            admin,
            api,
            dir,
            exit,
        } => {
            match graceway::cli::demo::run(graceway::cli::demo::DemoOptions {
                listen,
                admin,
                api,
                exit,
                dir,
            }) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("graceway demo: {e:#}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
