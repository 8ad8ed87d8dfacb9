//! The framework ceiling for `benches/compare.sh`: a minimal Pingora 0.9
//! proxy with graceway's tuning (`work_stealing: false`, jemalloc, the
//! release profile's fat LTO) and graceway's default timeouts (upstream
//! connect 2 s, read and write 10 s, idle 55 s; client keep-alive 60 s and
//! body read 10 s: every production proxy has them, and each costs Pingora
//! a timer per read or write), and nothing else. It forwards every request
//! to one upstream and injects `Authorization: Bearer <token>`.
//!
//! With `--respond FILE` it never contacts the upstream: every request is
//! answered from `request_filter` with FILE's bytes as a 200 JSON body
//! (the header built per request, as any answer from memory must carry
//! its own `Age`): the framework's floor for a proxy answering from
//! memory, beside graceway's stale rows.
//!
//!   bare_pingora --listen 127.0.0.1:8081 --upstream 127.0.0.1:8080 \
//!                [--token TOKEN | env BARE_PINGORA_TOKEN] [--threads N] [--dir DIR]
//!                [--respond FILE]
//!
//! `--dir` holds Pingora's pid file and upgrade socket (default /tmp).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    upstream: SocketAddr,
    authorization: String,
    /// `--respond`: the body every request is answered with.
    respond: Option<bytes::Bytes>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(60));
        }
        session.set_read_timeout(Some(Duration::from_secs(10)));
        let Some(body) = &self.respond else {
            return Ok(false);
        };
        let mut h = pingora::http::ResponseHeader::build(200, Some(4))?;
        h.insert_header("Content-Type", "application/json")?;
        h.insert_header("Content-Length", body.len())?;
        h.insert_header("Age", 1)?;
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(body.clone()), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(Duration::from_secs(2));
        o.total_connection_timeout = Some(Duration::from_secs(4));
        o.read_timeout = Some(Duration::from_secs(10));
        o.write_timeout = Some(Duration::from_secs(10));
        o.idle_timeout = Some(Duration::from_secs(55));
        Ok(Box::new(peer))
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
        "usage: bare_pingora --listen ADDR --upstream HOST:PORT [--token T] [--threads N] [--dir DIR] [--respond FILE]\n\
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
    let mut respond = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(val()),
            "--upstream" => upstream = Some(val()),
            "--token" => token = Some(val()),
            "--threads" => threads = val().parse().unwrap_or_else(|_| usage()),
            "--dir" => dir = val().into(),
            "--respond" => {
                let f = val();
                respond = Some(std::fs::read(&f).unwrap_or_else(|e| {
                    eprintln!("cannot read {f}: {e}");
                    std::process::exit(2)
                }));
            }
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
            respond: respond.map(bytes::Bytes::from),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
