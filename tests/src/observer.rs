//! The observer binary as a child process.
use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver},
    },
    time::Duration,
};

use crate::scrape::{Scrape, http_get};

/// The observer binary to test: the one `cargo xtask test` built and names in OBSERVER_BIN (the
/// VM test and a dist build can name another), else the workspace's debug build.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("OBSERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/observer")
        });
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p observer`, or run `cargo xtask test`)",
        path.display()
    );
    path
}

/// A running observer. Killed on drop if still running.
pub struct Observer {
    child: Child,
    pub metrics: Option<SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The podman container it runs in, if it does: removed on drop.
    container: Option<String>,
}

/// How observer is started.
#[derive(Clone, Copy)]
pub enum Launch<'a> {
    /// The binary under test, as this (root) process.
    Direct,
    /// As user nobody with only these capabilities (`["bpf", "perfmon"]`), ambient, under a
    /// host's memlock limit (`HOST_MEMLOCK`).
    AsUser(&'a [&'a str]),
    /// In a podman container of `image`, in the host's network and PID namespaces, with only
    /// these capabilities (`["BPF", "PERFMON"]`): as a Kubernetes DaemonSet runs it.
    Container { image: &'a str, caps: &'a [&'a str] },
}

/// RLIMIT_MEMLOCK (soft and hard) of `Launch::AsUser`: a host's default, the kernel's before
/// 5.16 (Debian 11, Amazon Linux 2); systemd's for services from v253 is 8 MiB.
pub const HOST_MEMLOCK: u64 = 64 * 1024;

/// How to wire the child's stdout.
pub enum Stdout {
    /// Lines, read by a thread into a channel.
    Lines,
    /// A pipe nobody reads (to make the event stream fall behind).
    Stuck,
    /// A pipe whose read end the test holds (`take_stdout`), to close it.
    Pipe,
    /// /dev/full: every write fails with ENOSPC.
    Full,
    Null,
}

impl Observer {
    /// Starts observer with `args` (plus `--metrics-addr 127.0.0.1:0` unless given) and waits
    /// until it says it is ready. Panics with its stderr if it does not get there.
    pub fn start(args: &[&str]) -> Observer {
        Self::spawn(args, Stdout::Null).0
    }

    /// The same, with its stdout as a stream of lines.
    pub fn start_with_events(args: &[&str]) -> (Observer, Receiver<String>) {
        let (o, rx) = Self::spawn(args, Stdout::Lines);
        (o, rx.expect("lines"))
    }

    pub fn spawn(args: &[&str], stdout: Stdout) -> (Observer, Option<Receiver<String>>) {
        Self::spawn_as(Launch::Direct, &[], args, stdout)
    }

    /// `start_with_events`, with variables added to observer's environment.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> (Observer, Receiver<String>) {
        let (o, rx) = Self::spawn_as(Launch::Direct, env, args, Stdout::Lines);
        (o, rx.expect("lines"))
    }

    /// Runs as user nobody with only the capabilities `caps` (`["bpf", "perfmon"]`), ambient,
    /// under a host's memlock limit (`HOST_MEMLOCK`).
    pub fn start_with_caps(caps: &[&str], args: &[&str]) -> Observer {
        Self::spawn_as(Launch::AsUser(caps), &[], args, Stdout::Null).0
    }

    /// Runs in a container (see `Launch::Container`).
    pub fn start_in_container(image: &str, caps: &[&str], args: &[&str]) -> Observer {
        Self::spawn_as(Launch::Container { image, caps }, &[], args, Stdout::Null).0
    }

    fn spawn_as(
        launch: Launch,
        env: &[(&str, &str)],
        args: &[&str],
        stdout: Stdout,
    ) -> (Observer, Option<Receiver<String>>) {
        let read_lines = matches!(stdout, Stdout::Lines);
        let container = match launch {
            Launch::Container { .. } => Some(format!(
                "observer-test-{}-{}",
                std::process::id(),
                CONTAINERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
            _ => None,
        };
        let (mut child, stderr, ready) =
            Self::launch(launch, container.as_deref(), env, args, stdout);
        let lines = read_lines
            .then(|| child.stdout.take())
            .flatten()
            .map(|out: ChildStdout| {
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
                rx
            });
        let metrics = match ready.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => metrics_addr(&line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                if let Some(name) = &container {
                    remove_container(name);
                }
                panic!(
                    "observer {args:?} did not become ready:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        (
            Observer {
                child,
                metrics,
                stderr,
                container,
            },
            lines,
        )
    }

    /// Spawns with stdout kept as a raw pipe when asked (`Stuck` keeps it unread).
    fn launch(
        launch: Launch,
        container: Option<&str>,
        env: &[(&str, &str)],
        args: &[&str],
        stdout: Stdout,
    ) -> (Child, Arc<Mutex<Vec<String>>>, Receiver<String>) {
        let mut all: Vec<&str> = args.to_vec();
        if !args
            .iter()
            .any(|a| *a == "--metrics-addr" || *a == "--no-metrics")
        {
            all.extend(["--metrics-addr", "127.0.0.1:0"]);
        }
        let mut command = match launch {
            Launch::Direct => Command::new(binary()),
            Launch::Container { image, caps } => {
                let mut c = Command::new("podman");
                // runc: podman's default crun fails on this host's cgroups. Root here cannot
                // raise rlimits, so the container asks for what it already has.
                c.args(["--runtime", "runc", "run", "--rm", "--name"])
                    .arg(container.expect("a container name"))
                    .args(["--network=host", "--pid=host", "--cap-drop=all"])
                    .arg(format!("--cap-add={}", caps.join(",")))
                    .args([
                        "--ulimit",
                        "nofile=1024:1024",
                        "--ulimit",
                        "nproc=1024:1024",
                    ])
                    .arg(image);
                c
            }
            Launch::AsUser(caps) => {
                let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
                let mut c = Command::new("prlimit");
                c.arg(format!("--memlock={HOST_MEMLOCK}:{HOST_MEMLOCK}"))
                    .arg("setpriv")
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(format!("--inh-caps={}", set.join(",")))
                    .arg(format!("--ambient-caps={}", set.join(",")))
                    .arg(binary());
                c
            }
        };
        let mut child = command
            .args(&all)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(match stdout {
                Stdout::Null => Stdio::null(),
                Stdout::Lines | Stdout::Stuck | Stdout::Pipe => Stdio::piped(),
                Stdout::Full => std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .expect("/dev/full")
                    .into(),
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting observer");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // Kept before the ready line is handed on: a test that reads stderr as soon as
                // observer is ready must find that line there.
                let ready = line.starts_with("observer: ready").then(|| line.clone());
                sink.lock().unwrap().push(line);
                if let Some(line) = ready {
                    let _ = ready_tx.send(line);
                }
            }
        });
        if let Stdout::Stuck = stdout {
            // Keep the read end open and unread for the child's whole life.
            let out = child.stdout.take();
            std::thread::spawn(move || {
                let _keep = out;
                std::thread::sleep(Duration::from_secs(3600));
            });
        }
        (child, stderr, ready)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The read end of its stdout (with `Stdout::Pipe`).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn scrape(&self) -> Scrape {
        let addr = self.metrics.expect("observer serves metrics");
        let text = http_get(addr, "/metrics")
            .unwrap_or_else(|e| panic!("scraping {addr}: {e}\nstderr:\n{}", self.stderr()));
        Scrape { text }
    }

    /// Scrapes until `check` holds (a close lands in the kernel a moment after the client's
    /// close() returns) and returns that scrape; panics with the last scrape otherwise.
    pub fn settle(&self, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
        let mut last = None;
        crate::wait_for(Duration::from_secs(30), || {
            let s = self.scrape();
            let ok = check(&s);
            last = Some(s.clone());
            ok.then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: never reached; last scrape:\n{}\nstderr:\n{}",
                last.map(|s| s.text).unwrap_or_default(),
                self.stderr()
            )
        })
    }

    /// IDs of the eBPF programs this observer has loaded.
    pub fn program_ids(&self) -> Vec<u64> {
        programs_of(self.pid())
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(20))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for observer")
    }

    /// Waits for the child to exit on its own; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for observer") {
                return status;
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "observer did not exit within {timeout:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Killing podman's client leaves the container running.
        if let Some(name) = &self.container {
            remove_container(name);
        }
    }
}

static CONTAINERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn remove_container(name: &str) {
    let _ = Command::new("podman")
        .args(["rm", "--force", "--time", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs observer to completion (for bad-input cases): (exit code, stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running observer");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The metrics address in observer's ready line: "... metrics at http://ADDR/metrics", or
/// https:// with a web config's TLS.
pub fn metrics_addr(ready_line: &str) -> Option<SocketAddr> {
    ready_line
        .split("metrics at ")
        .nth(1)
        .and_then(|s| s.split_once("://"))
        .and_then(|(_, s)| s.split('/').next())
        .and_then(|a| a.parse().ok())
}

/// IDs of the eBPF programs process `pid` holds, from the `prog_id:` lines of its fdinfo.
pub fn programs_of(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| prog_id(&info))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The program an fd's fdinfo describes, if it is a BPF program's.
fn prog_id(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A BPF map a process holds an fd of, as its fdinfo tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFd {
    pub id: u64,
    pub max_entries: u64,
    /// What the kernel charges for the map (`memlock:`), bytes.
    pub memlock: u64,
}

/// The BPF maps process `pid` holds fds of (`anon_inode:bpf-map` in /proc/PID/fd); an fd that
/// closes while it is read is left out.
pub fn map_fds(pid: u32) -> Vec<MapFd> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map")
        })
        .filter_map(|fd| {
            let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            map_fd(&std::fs::read_to_string(info).ok()?)
        })
        .collect()
}

/// The map an fd's fdinfo describes, if it is a BPF map's.
pub fn map_fd(fdinfo: &str) -> Option<MapFd> {
    let field = |name: &str| {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(MapFd {
        id: field("map_id:")?,
        max_entries: field("max_entries:")?,
        memlock: field("memlock:")?,
    })
}

/// Whether a program with this ID is still loaded.
pub fn program_loaded(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether every program of `ids` is gone within a few seconds. The kernel releases a program
/// after its last reference, the attachment, goes away, which it does asynchronously (after an
/// RCU grace period): tens of milliseconds after the process that held it has exited.
pub fn programs_released(ids: &[u64]) -> bool {
    crate::wait_for(Duration::from_secs(5), || {
        (!ids.iter().any(|id| program_loaded(*id))).then_some(())
    })
    .is_some()
}

/// The IDs of the observer main programs loaded on this machine (any instance), from bpftool.
/// A set, not a count: one that an exited observer leaves to be released (asynchronously) can
/// be told from one a new observer loaded.
pub fn loaded_program_ids() -> std::collections::BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "observer_main")
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// How many observer programs are loaded on this machine (any instance), from bpftool.
pub fn loaded_programs() -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout)
        .matches("name observer_main")
        .count()
}

/// Part of the warning observer gives where the kernel lets no program attach to the request
/// socket destructors (this development machine's kernel forbids function tracing): failed
/// handshakes that were still request sockets are then not counted, and observer says so.
pub const NO_REQUEST_PROGRAMS: &str = "(request sockets) will not be counted as failed";

/// The warnings among observer's stderr lines, but the one this kernel causes at every start
/// (`NO_REQUEST_PROGRAMS`), which is not the test's doing.
pub fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("warning") && !l.contains(NO_REQUEST_PROGRAMS))
        .collect()
}

impl Observer {
    /// Whether this observer counts the inbound handshakes that fail as request sockets (it
    /// said otherwise on stderr at start, see `NO_REQUEST_PROGRAMS`).
    pub fn counts_request_sockets(&self) -> bool {
        !self.stderr().contains(NO_REQUEST_PROGRAMS)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_metrics_address_of_the_ready_line() {
        let ready = "observer: ready: watching inbound port 19100; 0 existing connections counted; metrics at http://127.0.0.1:19102/metrics";
        assert_eq!(
            super::metrics_addr(ready),
            Some("127.0.0.1:19102".parse().unwrap())
        );
        let tls = "observer: ready: watching inbound port 443; 0 existing connections counted; metrics at https://[::1]:9100/metrics";
        assert_eq!(
            super::metrics_addr(tls),
            Some("[::1]:9100".parse().unwrap())
        );
        assert_eq!(
            super::metrics_addr(
                "observer: ready: watching inbound port 80; 0 existing connections counted"
            ),
            None
        );
    }

    #[test]
    fn reads_the_program_of_an_fdinfo() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\t6f0c5b7b0b3e1c2a\nmemlock:\t8192\nprog_id:\t3109\n";
        assert_eq!(super::prog_id(prog), Some(3109));
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmap_id:\t10538\n";
        assert_eq!(super::prog_id(map), None);
    }

    #[test]
    fn reads_the_map_of_an_fdinfo() {
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nkey_size:\t8\nvalue_size:\t56\nmax_entries:\t65536\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t8390016\nmap_id:\t10538\nfrozen:\t0\n";
        assert_eq!(
            super::map_fd(map),
            Some(super::MapFd {
                id: 10538,
                max_entries: 65536,
                memlock: 8_390_016
            })
        );
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nmemlock:\t8192\nprog_id:\t3109\n";
        assert_eq!(super::map_fd(prog), None);
    }
}
