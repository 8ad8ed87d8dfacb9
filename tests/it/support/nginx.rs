//! A real nginx (Debian's `nginx-light`) the tests start in a temp dir on
//! a port of [`super::free_port`]: in front of graceway
//! (`tests/it/nginx.rs`, the shipped snippet) or as the vendor itself
//! (`tests/it/h2.rs`, HTTP/2 over TLS). Killed when dropped; a failing
//! test prints its error log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const NGINX: &str = "/usr/sbin/nginx";

pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Nginx {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Writes `nginx.conf` around `http` (the `http {}` block's content;
    /// `{port}` in it is this nginx's port), checks it with `nginx -t`,
    /// starts nginx and waits until the port accepts connections.
    pub async fn start(dir: &Path, http: &str) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run ./dev test (it installs nginx-light) to run this test"
        );
        let port = super::free_port();
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    access_log {d}/access.log;
{}
}}
"#,
                http.replace("{port}", &port.to_string())
            ),
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut c = Command::new(NGINX);
            c.args(extra)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null());
            c
        };
        let t = args(&["-t"]).output().expect("run nginx -t");
        assert!(
            t.status.success(),
            "nginx -t refused the config:\n{}\n{}",
            String::from_utf8_lossy(&t.stderr),
            std::fs::read_to_string(&conf).unwrap()
        );
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = args(&[])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return nginx;
            }
            if let Ok(Some(st)) = nginx.child.try_wait() {
                panic!(
                    "nginx exited with {st}:\n{}\n{}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default(),
                    nginx.error_log()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- nginx error.log ---\n{}", self.error_log());
        }
    }
}
