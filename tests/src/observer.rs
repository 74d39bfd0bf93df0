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
    thread::JoinHandle,
    time::{Duration, Instant},
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
    /// Its stdout's lines, with `Stdout::Kept`.
    stdout: Arc<Mutex<Vec<String>>>,
    /// The threads that read its stderr (and kept stdout): they end when it exits.
    readers: Vec<JoinHandle<()>>,
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
    /// Through a command that execs the binary under test, which it is given after these
    /// words (the VM guest's own as-user: it has no setpriv).
    Via(&'a [&'a str]),
}

/// RLIMIT_MEMLOCK (soft and hard) of `Launch::AsUser`: a host's default, the kernel's before
/// 5.16 (Debian 11, Amazon Linux 2); systemd's for services from v253 is 8 MiB.
pub const HOST_MEMLOCK: u64 = 64 * 1024;

/// The names observer's programs have in the kernel: two on the tracepoint, two iterators, two
/// on the request socket destructors.
pub const PROGRAM_NAMES: [&str; 6] = [
    "observer_main",
    "observer_backup",
    "observer_sweep",
    "observer_reap",
    "observer_req4",
    "observer_req6",
];

/// How to wire the child's stdout.
#[derive(Clone, Copy)]
pub enum Stdout {
    /// Lines, read by a thread into a channel.
    Lines,
    /// Lines, kept by a thread for `stdout_lines` (read as often as a test likes).
    Kept,
    /// A pipe nobody reads (to make the event stream fall behind).
    Stuck,
    /// A pipe whose read end the test holds (`take_stdout`), to close it.
    Pipe,
    /// /dev/full: every write fails with ENOSPC.
    Full,
    Null,
}

/// How to start observer, but for its arguments.
#[derive(Clone, Copy)]
pub struct Start<'a> {
    pub launch: Launch<'a>,
    /// Variables added to its environment.
    pub env: &'a [(&'a str, &'a str)],
    pub stdout: Stdout,
    /// How long loading may take before it says it is ready (the verifier is slow under the
    /// VM test's emulation).
    pub ready_timeout: Duration,
}

impl Default for Start<'_> {
    fn default() -> Self {
        Start {
            launch: Launch::Direct,
            env: &[],
            stdout: Stdout::Null,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// Why observer did not get to its ready line. Each carries its stderr, line by line.
#[derive(Debug)]
pub enum StartError {
    /// It could not be run at all.
    Spawn(String),
    /// It exited first, `after` its start.
    Exited {
        status: ExitStatus,
        after: Duration,
        stderr: Vec<String>,
    },
    /// It was still loading after the ready timeout (and was killed).
    NotReady {
        timeout: Duration,
        stderr: Vec<String>,
    },
}

impl StartError {
    pub fn stderr(&self) -> &[String] {
        match self {
            StartError::Spawn(_) => &[],
            StartError::Exited { stderr, .. } | StartError::NotReady { stderr, .. } => stderr,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Spawn(e) => write!(f, "{e}"),
            StartError::Exited { status, after, .. } => write!(
                f,
                "exited ({status}) before ready after {:.1} s",
                after.as_secs_f64()
            ),
            StartError::NotReady { timeout, .. } => {
                write!(f, "no ready line within {} s", timeout.as_secs())
            }
        }
    }
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
        Self::spawn_with(
            Start {
                stdout,
                ..Start::default()
            },
            args,
        )
    }

    /// `start_with_events`, with variables added to observer's environment.
    pub fn start_with_env(env: &[(&str, &str)], args: &[&str]) -> (Observer, Receiver<String>) {
        let (o, rx) = Self::spawn_with(
            Start {
                env,
                stdout: Stdout::Lines,
                ..Start::default()
            },
            args,
        );
        (o, rx.expect("lines"))
    }

    /// Runs as user nobody with only the capabilities `caps` (`["bpf", "perfmon"]`), ambient,
    /// under a host's memlock limit (`HOST_MEMLOCK`).
    pub fn start_with_caps(caps: &[&str], args: &[&str]) -> Observer {
        Self::spawn_with(
            Start {
                launch: Launch::AsUser(caps),
                ..Start::default()
            },
            args,
        )
        .0
    }

    /// Runs in a container (see `Launch::Container`).
    pub fn start_in_container(image: &str, caps: &[&str], args: &[&str]) -> Observer {
        Self::spawn_with(
            Start {
                launch: Launch::Container { image, caps },
                ..Start::default()
            },
            args,
        )
        .0
    }

    /// `try_start`, panicking with observer's stderr if it does not get to ready.
    fn spawn_with(start: Start, args: &[&str]) -> (Observer, Option<Receiver<String>>) {
        Self::try_start(start, args).unwrap_or_else(|e| {
            panic!(
                "observer {args:?} did not become ready: {e}:\n{}",
                e.stderr().join("\n")
            )
        })
    }

    /// Starts observer as `start` says, with `args` (plus `--metrics-addr 127.0.0.1:0` unless
    /// given), and waits until it says it is ready, it exits, or the ready timeout passes.
    pub fn try_start(
        start: Start,
        args: &[&str],
    ) -> Result<(Observer, Option<Receiver<String>>), StartError> {
        let began = Instant::now();
        let container = match start.launch {
            Launch::Container { .. } => Some(format!(
                "observer-test-{}-{}",
                std::process::id(),
                CONTAINERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
            _ => None,
        };
        let (child, lines) = Self::launch(start, container.as_deref(), args)?;
        let mut o = Observer {
            child,
            metrics: None,
            stderr: Arc::default(),
            stdout: Arc::default(),
            readers: Vec::new(),
            container,
        };
        let ready = o.read_output(start.stdout);
        loop {
            if let Ok(line) = ready.recv_timeout(Duration::from_millis(100)) {
                o.metrics = metrics_addr(&line);
                return Ok((o, lines));
            }
            if let Ok(Some(status)) = o.child.try_wait() {
                o.join_readers();
                return Err(StartError::Exited {
                    status,
                    after: began.elapsed(),
                    stderr: o.stderr_lines(),
                });
            }
            if began.elapsed() > start.ready_timeout {
                let _ = o.child.kill();
                let _ = o.child.wait();
                o.join_readers();
                return Err(StartError::NotReady {
                    timeout: start.ready_timeout,
                    stderr: o.stderr_lines(),
                });
            }
        }
    }

    /// Spawns it, with its stdout's lines in a channel when asked.
    fn launch(
        start: Start,
        container: Option<&str>,
        args: &[&str],
    ) -> Result<(Child, Option<Receiver<String>>), StartError> {
        let mut all: Vec<&str> = args.to_vec();
        if !args
            .iter()
            .any(|a| *a == "--metrics-addr" || *a == "--no-metrics")
        {
            all.extend(["--metrics-addr", "127.0.0.1:0"]);
        }
        let mut command = match start.launch {
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
            Launch::Via(words) => {
                let (program, rest) = words.split_first().expect("a command to run observer");
                let mut c = Command::new(program);
                c.args(rest).arg(binary());
                c
            }
        };
        let mut child = command
            .args(&all)
            .envs(start.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(match start.stdout {
                Stdout::Null => Stdio::null(),
                Stdout::Lines | Stdout::Kept | Stdout::Stuck | Stdout::Pipe => Stdio::piped(),
                Stdout::Full => std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .map_err(|e| StartError::Spawn(format!("/dev/full: {e}")))?
                    .into(),
            })
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StartError::Spawn(format!("starting observer: {e}")))?;
        let lines = matches!(start.stdout, Stdout::Lines)
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
        if let Stdout::Stuck = start.stdout {
            // Keep the read end open and unread for the child's whole life.
            let out = child.stdout.take();
            std::thread::spawn(move || {
                let _keep = out;
                std::thread::sleep(Duration::from_secs(3600));
            });
        }
        Ok((child, lines))
    }

    /// Starts the threads that keep its stderr (and its stdout, with `Stdout::Kept`); the
    /// receiver gets the ready line.
    fn read_output(&mut self, stdout: Stdout) -> Receiver<String> {
        let (ready_tx, ready) = mpsc::channel();
        let err = self.child.stderr.take().expect("stderr");
        let sink = self.stderr.clone();
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // Kept before the ready line is handed on: a test that reads stderr as soon as
                // observer is ready must find that line there.
                let ready = line.starts_with("observer: ready").then(|| line.clone());
                sink.lock().unwrap().push(line);
                if let Some(line) = ready {
                    let _ = ready_tx.send(line);
                }
            }
        }));
        if let (Stdout::Kept, Some(out)) = (stdout, self.child.stdout.take()) {
            let sink = self.stdout.clone();
            self.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            }));
        }
        ready
    }

    /// Waits (5 s at most) for the output readers, which end when the pipes close: after an
    /// exit, every line it wrote is kept.
    fn join_readers(&mut self) {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && self.readers.iter().any(|r| !r.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The read end of its stdout (with `Stdout::Pipe`).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn stderr(&self) -> String {
        self.stderr_lines().join("\n")
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Its stdout so far (with `Stdout::Kept`).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn scrape(&self) -> Scrape {
        self.try_scrape()
            .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", self.stderr()))
    }

    /// One scrape of /metrics, or why it failed.
    pub fn try_scrape(&self) -> Result<Scrape, String> {
        let addr = self.metrics.ok_or("observer serves no metrics")?;
        http_get(addr, "/metrics")
            .map(|text| Scrape { text })
            .map_err(|e| format!("scraping {addr}: {e}"))
    }

    /// Scrapes until `check` holds (a close lands in the kernel a moment after the client's
    /// close() returns) and returns that scrape; panics with the last scrape otherwise.
    pub fn settle(&self, what: &str, check: impl FnMut(&Scrape) -> bool) -> Scrape {
        self.try_settle(Duration::from_secs(30), check)
            .unwrap_or_else(|last| {
                panic!("{what}: never reached; {last}\nstderr:\n{}", self.stderr())
            })
    }

    /// Scrapes until `check` holds or `timeout` passes: that scrape, or the last one (or why
    /// the last one failed).
    pub fn try_settle(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Scrape) -> bool,
    ) -> Result<Scrape, String> {
        let mut last = String::new();
        crate::wait_for(timeout, || match self.try_scrape() {
            Ok(s) if check(&s) => Some(s),
            Ok(s) => {
                last = format!("last scrape:\n{}", s.text);
                None
            }
            Err(e) => {
                last = e;
                None
            }
        })
        .ok_or(last)
    }

    /// A scrape with a fresh census and an oracle's figure at that moment: the oracle is read
    /// before and after the scrape, and the two must agree (a socket that changed state in
    /// between, a TIME_WAIT expiring or a handshake given up, makes them differ: then it is read
    /// again). The census runs at most once a second, so each try waits a little longer first.
    pub fn scrape_with_oracle<T: PartialEq>(&self, oracle: impl Fn() -> T) -> (T, Scrape) {
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(1100));
            let before = oracle();
            let s = self.scrape();
            if oracle() == before {
                return (before, s);
            }
        }
        panic!("the oracle never held still over a scrape");
    }

    /// IDs of the eBPF programs this observer has loaded.
    pub fn program_ids(&self) -> Vec<u64> {
        programs_of(self.pid())
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.try_stop(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}:\n{}", self.stderr()))
    }

    /// SIGTERM (unless it has exited), then waits up to `timeout` for the exit; after that it is
    /// killed, and that is an error. Again after an exit, the same status.
    pub fn try_stop(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        self.signal(libc::SIGTERM);
        self.try_wait_for(timeout).ok_or_else(|| {
            format!(
                "observer did not exit within {} s of SIGTERM (killed)",
                timeout.as_secs()
            )
        })
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
        self.try_wait_for(timeout).unwrap_or_else(|| {
            panic!(
                "observer did not exit within {timeout:?}:\n{}",
                self.stderr()
            )
        })
    }

    /// Waits for the child to exit, and for its last output; None (and killed) after
    /// `timeout`.
    fn try_wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let exited = crate::wait_for(timeout, || self.child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.join_readers();
        exited
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

/// IDs of the eBPF programs process `pid` holds, each once.
pub fn programs_of(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = prog_fds(pid).iter().map(|p| p.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A BPF program a process holds an fd of, as its fdinfo tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgFd {
    pub id: u64,
    /// What the kernel charges for the program (`memlock:`), bytes.
    pub memlock: u64,
    /// Runs the kernel skipped because the program was running on that CPU already (from
    /// 5.12; None before).
    pub recursion_misses: Option<u64>,
}

/// The BPF programs process `pid` holds fds of, one per fd (`anon_inode:bpf-prog`).
pub fn prog_fds(pid: u32) -> Vec<ProgFd> {
    fds_of(pid, "anon_inode:bpf-prog", prog_fd)
}

/// The programs process `pid` attached to the TCP tracepoint: the `prog_id:` of each of its
/// link fds whose fdinfo names `inet_sock_set_state` (`tp_name:`, from 5.8).
pub fn tracepoint_links(pid: u32) -> Vec<u64> {
    fds_of(pid, "anon_inode:bpf_link", |info| {
        let on_tracepoint = info
            .lines()
            .any(|l| l.strip_prefix("tp_name:").map(str::trim) == Some("inet_sock_set_state"));
        on_tracepoint
            .then(|| fdinfo_field(info, "prog_id:"))
            .flatten()
    })
}

/// The program an fd's fdinfo describes, if it is a BPF program's.
pub fn prog_fd(fdinfo: &str) -> Option<ProgFd> {
    Some(ProgFd {
        id: fdinfo_field(fdinfo, "prog_id:")?,
        memlock: fdinfo_field(fdinfo, "memlock:")?,
        recursion_misses: fdinfo_field(fdinfo, "recursion_misses:"),
    })
}

/// Each fd of process `pid` that is a `target` (readlink of /proc/PID/fd/N), as `parse` reads
/// its fdinfo; an fd that closes while it is read is left out.
fn fds_of<T>(pid: u32, target: &str, parse: fn(&str) -> Option<T>) -> Vec<T> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == target))
        .filter_map(|fd| {
            let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            parse(&std::fs::read_to_string(info).ok()?)
        })
        .collect()
}

/// The number after `name` (`memlock:`) in an fdinfo.
fn fdinfo_field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(name))
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

/// The BPF maps process `pid` holds fds of (`anon_inode:bpf-map`), one per fd.
pub fn map_fds(pid: u32) -> Vec<MapFd> {
    fds_of(pid, "anon_inode:bpf-map", map_fd)
}

/// The map an fd's fdinfo describes, if it is a BPF map's.
pub fn map_fd(fdinfo: &str) -> Option<MapFd> {
    Some(MapFd {
        id: fdinfo_field(fdinfo, "map_id:")?,
        max_entries: fdinfo_field(fdinfo, "max_entries:")?,
        memlock: fdinfo_field(fdinfo, "memlock:")?,
    })
}

/// What the kernel charges for the maps and programs process `pid` holds, bytes: the
/// `memlock:` of each fd (what kernels before 5.11 charge to RLIMIT_MEMLOCK).
pub fn bpf_memory(pid: u32) -> u64 {
    let maps: u64 = map_fds(pid).iter().map(|m| m.memlock).sum();
    maps + prog_fds(pid).iter().map(|p| p.memlock).sum::<u64>()
}

/// Every program loaded in the kernel, as (id, name), read with bpf(2) (no bpftool: the VM
/// guest has none). A program unloaded while the list is read is left out.
pub fn kernel_programs() -> Result<Vec<(u64, String)>, String> {
    let mut out = Vec::new();
    for p in aya::programs::loaded_programs() {
        match p {
            Ok(p) => out.push((
                u64::from(p.id()),
                String::from_utf8_lossy(p.name()).into_owned(),
            )),
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(format!("listing the kernel's programs: {e}")),
        }
    }
    Ok(out)
}

/// The loaded programs named like observer's (`PROGRAM_NAMES`), any instance's, as (id, name).
pub fn observer_programs() -> Result<Vec<(u64, String)>, String> {
    Ok(kernel_programs()?
        .into_iter()
        .filter(|(_, n)| PROGRAM_NAMES.contains(&n.as_str()))
        .collect())
}

fn kernel_programs_or_panic() -> Vec<(u64, String)> {
    kernel_programs().unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a program with this ID is still loaded.
pub fn program_loaded(id: u64) -> bool {
    kernel_programs_or_panic().iter().any(|(p, _)| *p == id)
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

/// The IDs of the observer main programs loaded on this machine (any instance). A set, not a
/// count: one that an exited observer leaves to be released (asynchronously) can be told from
/// one a new observer loaded.
pub fn loaded_program_ids() -> std::collections::BTreeSet<u64> {
    kernel_programs_or_panic()
        .into_iter()
        .filter(|(_, n)| n == "observer_main")
        .map(|(id, _)| id)
        .collect()
}

/// How many observer main programs are loaded on this machine (any instance).
pub fn loaded_programs() -> usize {
    loaded_program_ids().len()
}

/// observer's stderr on one line: its own first lines (what went wrong; a verifier log comes
/// before them), else the first lines, and the verifier's complaint if there is one.
pub fn stderr_summary(lines: &[String]) -> String {
    let own: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("observer:"))
        .collect();
    let first = if own.is_empty() {
        lines.iter().filter(|l| !l.trim().is_empty()).collect()
    } else {
        own
    };
    let mut head: Vec<String> = first.iter().take(3).map(|l| truncate(l, 300)).collect();
    if let Some(v) = verifier_message(lines) {
        head.push(format!("verifier: {}", truncate(&v, 300)));
    }
    head.join(" / ")
}

/// The verifier's own complaint in a log: the last line that is neither a register dump, an
/// instruction, nor a statistic.
pub fn verifier_message(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("observer:")
                && !l.starts_with(';')
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("last_idx")
                && !l.starts_with("regs=")
                && !l.starts_with("parent ")
                && !l.starts_with("frame")
                && !l.starts_with("from ")
                && !l.starts_with("mark_precise")
                && !l.starts_with("func#")
                && !l.starts_with("Func#")
                && *l != "caller:"
                && *l != "callee:"
                && !is_register_state(l)
                && !l
                    .split_once(':')
                    .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

/// `R1=ctx(...)`, `R6_w=0 R7=0 ...`: the verifier's register states (not `R6 !read_ok`).
fn is_register_state(l: &str) -> bool {
    l.strip_prefix('R').is_some_and(|r| {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0
            && r[digits..]
                .split('=')
                .next()
                .is_some_and(|m| m.is_empty() || m == "_w")
    })
}

/// At most `n` bytes of `s` (on a character boundary), with `...` when cut.
fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
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
        assert_eq!(
            super::prog_fd(prog),
            Some(super::ProgFd {
                id: 3109,
                memlock: 8192,
                recursion_misses: None
            })
        );
        let newer = format!("{prog}run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t7\n");
        assert_eq!(
            super::prog_fd(&newer).and_then(|p| p.recursion_misses),
            Some(7)
        );
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmap_id:\t10538\n";
        assert_eq!(super::prog_fd(map), None);
    }

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_verifier_complaint_is_found_under_its_statistics() {
        let log = lines(
            "\
4106: (bf) r1 = r6
R6 !read_ok
verification time 3353832 usec
stack depth 336+0+8
processed 131204 insns (limit 1000000) max_states_per_insn 14

observer: the kernel refused the eBPF program observer_main (Permission denied (os error 13))",
        );
        assert_eq!(
            super::verifier_message(&log).as_deref(),
            Some("R6 !read_ok")
        );
        assert_eq!(
            super::stderr_summary(&log),
            "observer: the kernel refused the eBPF program observer_main (Permission denied (os error 13)) / verifier: R6 !read_ok"
        );
        let log = lines(
            "\
; T::from_register(unsafe { *ptr as u64 })
invalid read from stack R10 off=-312 size=8
processed 5 insns
observer: refused",
        );
        assert_eq!(
            super::verifier_message(&log).as_deref(),
            Some("invalid read from stack R10 off=-312 size=8")
        );
        let log = lines("callee:\n frame1: R1_w=map_value(off=0) R10=fp0\nR1=ctx() R10=fp0\n");
        assert_eq!(super::verifier_message(&log), None);
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
