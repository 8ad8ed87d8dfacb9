//! Real `redis-server` processes for the fleet-tier tests, on ports from
//! [`super::free_port`], in a temp folder, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for, TestDir};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    pub dir: TestDir,
    /// `redis-cli` arguments that reach this server (port, TLS, password).
    cli: Vec<String>,
}

impl Redis {
    /// A plain server; `extra` are more `redis-server` arguments.
    pub fn start(extra: &[&str]) -> Redis {
        let port = free_port();
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let cli = vec!["-p".to_string(), port.to_string()];
        Redis::launch(port, args, cli)
    }

    /// A TLS-only server with the fixture's certificate.
    pub fn start_tls(fx: &crate::support::mock::TlsFixture) -> Redis {
        let dir = TestDir::new();
        let cert = dir.write("cert.pem", &fx.cert_pem);
        let key = dir.write("key.pem", &fx.key_pem);
        let ca = dir.write("ca.pem", &fx.ca_pem);
        let port = free_port();
        let p = |x: &PathBuf| x.display().to_string();
        let args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            p(&cert),
            "--tls-key-file".into(),
            p(&key),
            "--tls-ca-cert-file".into(),
            p(&ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--save".into(),
            "".into(),
        ];
        let cli = vec![
            "-p".into(),
            port.to_string(),
            "--tls".into(),
            "--cacert".into(),
            p(&ca),
        ];
        let mut r = Redis::launch(port, args, cli);
        r.dir = dir;
        r
    }

    fn launch(port: u16, args: Vec<String>, cli: Vec<String>) -> Redis {
        let mut r = Redis {
            port,
            child: None,
            args,
            dir: TestDir::new(),
            cli,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server; ./dev test installs it)");
        let pid = child.id();
        self.child = Some(child);
        wait_for("redis-server to answer", Duration::from_secs(10), || {
            let out = self.cli_output(&["PING"]);
            // A server with a password answers NOAUTH: it is up.
            (out.contains("PONG") || out.contains("NOAUTH")).then_some(())
        });
        // The server that answers is this one, not another test run's
        // that took the port between the check and this server's bind (a
        // test run side by side on the same machine): this one would have
        // exited, and the test would have run against a stranger.
        let info = self.cli_output(&["INFO", "server"]);
        if let Some(answering) = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("process_id:"))
        {
            assert_eq!(
                answering.trim(),
                pid.to_string(),
                "port {} is held by another redis-server (another test run?)",
                self.port
            );
        }
    }

    /// Runs `redis-cli` against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        self.run_cli(args).0
    }

    /// stdout and stderr of `redis-cli`, for readiness checks.
    fn cli_output(&self, args: &[&str]) -> String {
        let (out, err) = self.run_cli(args);
        out + &err
    }

    fn run_cli(&self, args: &[&str]) -> (String, String) {
        let out = Command::new("redis-cli")
            .args(&self.cli)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Adds `-a password` / `--user` to the CLI's arguments.
    pub fn cli_auth(&mut self, args: &[&str]) {
        self.cli.extend(args.iter().map(|s| s.to_string()));
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A Redis Cluster of `n` masters, slots assigned and `cluster_state:ok`;
/// the nodes and their addresses (`127.0.0.1:port`).
pub fn cluster(n: usize) -> (Vec<Redis>, Vec<String>) {
    let nodes: Vec<Redis> = (0..n)
        .map(|_| {
            // The bus port too (default: port + 10000, which another test
            // may hold).
            let bus = free_port().to_string();
            Redis::start(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                &bus,
            ])
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_for("the cluster to be ok", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            .then_some(())
    });
    (nodes, addrs)
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
