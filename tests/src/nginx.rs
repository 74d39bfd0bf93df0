//! nginx from Debian's package, as a real server for the tests, with a config of its own: every
//! path it writes is in a temporary directory. A second server block on a port of its own
//! serves stub_status, whose `accepts` is the ground truth for the connections nginx accepted.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{sandbox::TempDir, scrape::http_get};

pub struct Nginx {
    child: Child,
    _dir: TempDir,
    /// The port it serves `ok` on, at 127.0.0.1.
    pub port: u16,
    status: SocketAddr,
}

impl Nginx {
    /// One worker, on two free loopback ports. Panics with nginx's error log if it does not
    /// come up.
    pub fn start() -> Nginx {
        // A free port can be taken between our look and nginx's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start() {
                Ok(n) => return n,
                Err(e) => last = e,
            }
        }
        panic!("nginx did not start: {last}");
    }

    fn try_start() -> Result<Nginx, String> {
        let dir = TempDir::new("nginx");
        let [port, status_port] = free_ports();
        let status = SocketAddr::from((Ipv4Addr::LOCALHOST, status_port));
        let conf = dir.path.join("nginx.conf");
        std::fs::write(&conf, config(&dir.path, port, status)).map_err(|e| e.to_string())?;
        let error_log = dir.path.join("error.log");
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting nginx: {e}"))?;
        let main = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let up = crate::wait_for(Duration::from_secs(10), || {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(Err(format!(
                    "nginx exited ({s}): {}",
                    std::fs::read_to_string(&error_log)
                        .unwrap_or_default()
                        .trim()
                )));
            }
            let open = |a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok();
            (open(&main) && open(&status)).then_some(Ok(()))
        });
        match up {
            Some(Ok(())) => Ok(Nginx {
                child,
                _dir: dir,
                port,
                status,
            }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(
                    other.map_or("nginx did not listen within 10 s".into(), |r| {
                        r.unwrap_err()
                    }),
                )
            }
        }
    }

    /// Connections nginx has accepted since it started, on both ports, this reading's own
    /// included.
    pub fn accepts(&self) -> u64 {
        let body = http_get(self.status, "/").expect("nginx's stub_status");
        accepts(&body).unwrap_or_else(|| panic!("no accepts in stub_status: {body}"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master: it stops its worker and exits.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let stopped = crate::wait_for(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        if stopped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two loopback ports free at the time of asking.
fn free_ports() -> [u16; 2] {
    let a = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    [a, b].map(|l| l.local_addr().expect("local address").port())
}

fn config(dir: &Path, port: u16, status: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"# Written by the observer tests. Every path is under {d}.
worker_processes 1;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
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

/// `accepts` in a stub_status page:
/// "Active connections: 1 \nserver accepts handled requests\n 5 5 5 \nReading: ...".
pub fn accepts(body: &str) -> Option<u64> {
    body.lines()
        .skip_while(|l| !l.contains("accepts"))
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_accepts_from_stub_status() {
        let page = "Active connections: 1 \nserver accepts handled requests\n 17 17 20 \nReading: 0 Writing: 1 Waiting: 0 \n";
        assert_eq!(super::accepts(page), Some(17));
        assert_eq!(super::accepts("Active connections: 1\n"), None);
    }
}
