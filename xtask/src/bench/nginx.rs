//! nginx, the server under load.
use std::{
    fs::{self, File},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    START_TIMEOUT,
    interrupt::wait_until,
    net::{free_ports, http_get},
    process::Proc,
};

/// nginx from Debian's package, with a config of the bench's: every path it writes is in the
/// temporary directory. A second server block on a port of its own serves stub_status, whose
/// `accepts` is the ground truth for the number of connections.
pub(super) struct Nginx {
    pub(super) proc: Proc,
    pub(super) port: u16,
    pub(super) status: SocketAddr,
}

impl Nginx {
    pub(super) fn start(
        dir: &Path,
        name: &str,
        workers: usize,
        connections: usize,
        reuseport: bool,
    ) -> Result<Nginx> {
        let [port, status_port] = free_ports()?;
        let status = SocketAddr::from((Ipv4Addr::LOCALHOST, status_port));
        let temp = dir.join(format!("{name}-temp"));
        fs::create_dir_all(&temp).with_context(|| format!("creating {}", temp.display()))?;
        let conf = dir.join(format!("{name}.conf"));
        let conf_text = nginx_conf(dir, name, workers, connections, port, status, reuseport);
        fs::write(&conf, conf_text).with_context(|| format!("writing {}", conf.display()))?;
        let error_log = dir.join(format!("{name}.error.log"));
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join(format!("{name}.stderr")))?);
        let mut proc = Proc::spawn("nginx", &mut cmd)?;
        let main = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_until(
            "nginx to listen",
            START_TIMEOUT,
            Duration::from_millis(20),
            || {
                if let Some(s) = proc.poll()? {
                    let log = fs::read_to_string(&error_log).unwrap_or_default();
                    bail!("nginx exited ({s}): {}", log.trim());
                }
                let up = |a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok();
                Ok((up(&main) && up(&status)).then_some(()))
            },
        )?;
        Ok(Nginx { proc, port, status })
    }

    /// Connections nginx has accepted since it started, this reading's own included.
    pub(super) fn accepts(&self) -> Result<u64> {
        let body = http_get(self.status, "/")?;
        observer_tests::nginx::accepts(&body)
            .ok_or_else(|| anyhow!("no accepts in nginx's stub_status: {body}"))
    }

    pub(super) fn stop(mut self) -> Result<()> {
        self.proc.stop(libc::SIGTERM).map(|_| ())
    }
}

pub(super) fn nginx_conf(
    dir: &Path,
    name: &str,
    workers: usize,
    connections: usize,
    port: u16,
    status: SocketAddr,
    reuseport: bool,
) -> String {
    let d = dir.display();
    let reuseport = if reuseport { " reuseport" } else { "" };
    format!(
        r#"# Written by `cargo xtask bench`. Every path is under {d}: nothing in /etc, /var or /run.
worker_processes {workers};
pid {d}/{name}.pid;
lock_file {d}/{name}.lock;
error_log {d}/{name}.error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {d}/{name}-temp/body;
    proxy_temp_path {d}/{name}-temp/proxy;
    fastcgi_temp_path {d}/{name}-temp/fastcgi;
    uwsgi_temp_path {d}/{name}-temp/uwsgi;
    scgi_temp_path {d}/{name}-temp/scgi;
    # Held connections never send a request: keep them past the default 60 s.
    client_header_timeout 600s;
    server {{
        listen 127.0.0.1:{port} backlog=4096{reuseport};
        location / {{ return 200 "ok\n"; }}
    }}
    server {{
        listen {status};
        location / {{ stub_status; }}
    }}
}}
"#
    )
}
