//! The framework ceiling for `benches/compare.sh`: a minimal Pingora 0.9
//! proxy with graceway's tuning (`work_stealing: false`, jemalloc, the
//! release profile's fat LTO) and nothing else. It forwards every request
//! to one upstream and injects `Authorization: Bearer <token>`.
//!
//!   bare_pingora --listen 127.0.0.1:8081 --upstream 127.0.0.1:8080 \
//!                [--token TOKEN | env BARE_PINGORA_TOKEN] [--threads N] [--dir DIR]
//!
//! `--dir` holds Pingora's pid file and upgrade socket (default /tmp).

use std::net::{SocketAddr, ToSocketAddrs};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    upstream: SocketAddr,
    authorization: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        req.insert_header("Authorization", self.authorization.as_str())?;
        Ok(())
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bare_pingora --listen ADDR --upstream HOST:PORT [--token T] [--threads N] [--dir DIR]\n\
         (the token may also come from BARE_PINGORA_TOKEN)"
    );
    std::process::exit(2)
}

fn main() {
    let mut listen = None;
    let mut upstream = None;
    let mut token = std::env::var("BARE_PINGORA_TOKEN").ok();
    let mut threads = 1usize;
    let mut dir = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(val()),
            "--upstream" => upstream = Some(val()),
            "--token" => token = Some(val()),
            "--threads" => threads = val().parse().unwrap_or_else(|_| usage()),
            "--dir" => dir = val().into(),
            _ => usage(),
        }
    }
    let (Some(listen), Some(upstream), Some(token)) = (listen, upstream, token) else {
        usage()
    };
    // HttpPeer::new resolves with a blocking call and unwraps: resolve here.
    let upstream = upstream
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| {
            eprintln!("cannot resolve {upstream}");
            std::process::exit(2)
        });

    let conf = ServerConf {
        threads,
        work_stealing: false,
        pid_file: dir.join("bare_pingora.pid").display().to_string(),
        upgrade_sock: dir.join("bare_pingora.sock").display().to_string(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream,
            authorization: format!("Bearer {token}"),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
