//! nginx from Debian's package, as a real server for the tests, with a config of its own: every
//! path it writes is in a temporary directory. A second server block on a port of its own
//! serves stub_status, whose `accepts` is the ground truth for the connections nginx accepted.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::{child::Guarded, sandbox::TempDir, scrape::http_get};

/// How an nginx is set up. The tests take the default; the bench runs several workers with
/// many connections each, and `reuseport` to spread them.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub workers: usize,
    pub connections: usize,
    pub reuseport: bool,
    /// Ports below the ephemeral range (see `free_ports_below_ephemeral`), not any free port.
    pub low_ports: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: 1,
            connections: 1024,
            reuseport: false,
            low_ports: false,
        }
    }
}

pub struct Nginx {
    proc: Guarded,
    _dir: TempDir,
    /// The port it serves `ok` on, at 127.0.0.1.
    pub port: u16,
    status: SocketAddr,
}

impl Nginx {
    /// One worker, on two free loopback ports. Panics with nginx's error log if it does not
    /// come up.
    pub fn start() -> Nginx {
        Self::try_start(&Options::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Started as `options` say; Err with nginx's error log if it does not come up.
    pub fn try_start(options: &Options) -> Result<Nginx, String> {
        // A free port can be taken between our look and nginx's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::start_once(options) {
                Ok(n) => return Ok(n),
                Err(e) => last = e,
            }
        }
        Err(format!("nginx did not start: {last}"))
    }

    fn start_once(options: &Options) -> Result<Nginx, String> {
        let dir = TempDir::new("nginx");
        let [port, status_port] = if options.low_ports {
            crate::net::free_ports_below_ephemeral()?
        } else {
            free_ports()
        };
        let status = SocketAddr::from((Ipv4Addr::LOCALHOST, status_port));
        let conf = dir.path.join("nginx.conf");
        std::fs::write(&conf, config(&dir.path, options, port, status))
            .map_err(|e| e.to_string())?;
        let error_log = dir.path.join("error.log");
        let mut proc = Guarded::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-p")
                .arg(&dir.path)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&error_log)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .map_err(|e| e.to_string())?;
        let main = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let up = crate::wait_for(Duration::from_secs(10), || {
            if let Ok(Some(s)) = proc.poll() {
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
                proc,
                _dir: dir,
                port,
                status,
            }),
            // Dropping `proc` stops what started.
            other => Err(
                other.map_or("nginx did not listen within 10 s".into(), |r| {
                    r.unwrap_err()
                }),
            ),
        }
    }

    /// Connections nginx has accepted since it started, on both ports, this reading's own
    /// included.
    pub fn accepts(&self) -> u64 {
        self.try_accepts().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same, for callers that report errors rather than panic (the bench).
    pub fn try_accepts(&self) -> Result<u64, String> {
        let body = http_get(self.status, "/").map_err(|e| format!("nginx's stub_status: {e}"))?;
        accepts(&body).ok_or_else(|| format!("no accepts in stub_status: {body}"))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGTERM to the master: it stops its workers and exits (SIGKILL to the group after 10 s).
    pub fn stop(mut self) -> std::io::Result<ExitStatus> {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(10))
    }
}

/// Two loopback ports free at the time of asking.
fn free_ports() -> [u16; 2] {
    let a = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    [a, b].map(|l| l.local_addr().expect("local address").port())
}

fn config(dir: &Path, o: &Options, port: u16, status: SocketAddr) -> String {
    let d = dir.display();
    let (workers, connections) = (o.workers, o.connections);
    let reuseport = if o.reuseport { " reuseport" } else { "" };
    format!(
        r#"# Written by the observer tests (or the bench). Every path is under {d}.
worker_processes {workers};
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # Connections held open without a request (the bench's) stay past the default 60 s.
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
    use super::*;

    #[test]
    fn the_config_has_the_options() {
        let status = SocketAddr::from((Ipv4Addr::LOCALHOST, 2));
        let dir = Path::new("/tmp/x");
        let plain = super::config(dir, &Options::default(), 1, status);
        assert!(plain.contains("worker_processes 1;"));
        assert!(plain.contains("listen 127.0.0.1:1 backlog=4096;"));
        assert!(plain.contains("listen 127.0.0.1:2;"));
        let options = Options {
            workers: 8,
            connections: 19_000,
            reuseport: true,
            low_ports: true,
        };
        let bench = super::config(dir, &options, 1, status);
        assert!(bench.contains("worker_processes 8;"));
        assert!(bench.contains("worker_connections 19000;"));
        assert!(bench.contains("listen 127.0.0.1:1 backlog=4096 reuseport;"));
    }

    #[test]
    fn reads_accepts_from_stub_status() {
        let page = "Active connections: 1 \nserver accepts handled requests\n 17 17 20 \nReading: 0 Writing: 1 Waiting: 0 \n";
        assert_eq!(super::accepts(page), Some(17));
        assert_eq!(super::accepts("Active connections: 1\n"), None);
    }
}
