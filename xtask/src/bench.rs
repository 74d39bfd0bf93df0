//! `cargo xtask bench [--quick]`: measures observer next to the tools people use today, on a real
//! server (nginx) under a real load generator (ab), and writes BENCHMARKS.md.
//!
//! Every comparison alternates a run without the tool and a run with it (A B A B ...) and reports
//! the median of the pairs with their min and max. All traffic stays on loopback. Every process
//! the bench starts runs in a process group of its own under a guard that stops the group on drop
//! (so a failure halfway leaves nothing running), and dies with the bench (PR_SET_PDEATHSIG).
//! Every wait is bounded. Nothing asserts on time: a figure that misses its goal is reported as
//! missed. The bench is only run by hand (`cargo xtask bench`), never by `cargo test` or CI.
use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::setup;

/// `bench --hold DST SRC N`: the connection holder, a child process of the bench (see `hold`).
const HOLD_ARG: &str = "--hold";

/// Two ab processes at once: one ab is single-threaded and saturates one core, not the server.
const AB_CLIENTS: u64 = 2;
/// Connections in flight per ab process (32 in all).
const AB_CONCURRENCY: u64 = 16;
/// Requests per ab process in each warm-up run, which also measures the rate that sizes the rest.
const WARMUP_PER_CLIENT: u64 = 20_000;
const NGINX_WORKERS: usize = 2;
/// The hard RLIMIT_NOFILE can be as low as 20,000 with no CAP_SYS_RESOURCE to raise it (it is,
/// on the machine this was written on): holding 100,000 connections takes several nginx workers
/// (reuseport spreads connections evenly over them) and several holder processes.
const HOLD_WORKERS: usize = 8;
const HOLD_WORKER_CONNECTIONS: usize = 19_000;
/// Connections per holder process, each from a source address of its own: well below the
/// ephemeral port range, so that bind() finds ports fast even while an earlier run's ports are
/// still in TIME_WAIT. (SO_REUSEADDR would let it reuse those, but makes bind() search slowly.)
const PER_HOLDER: usize = 10_000;
/// The small level of held connections.
const FEW_HELD: usize = 100;

/// After a run of load, until the last transitions and events have been processed (observer's
/// event reader wakes at least every 50 ms).
const SETTLE: Duration = Duration::from_millis(300);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
const HOLD_TIMEOUT: Duration = Duration::from_secs(180);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// `newstate` of a transition into ESTABLISHED, as bpftrace prints it.
const TCP_ESTABLISHED: &str = "1";
const MIB: f64 = 1024.0 * 1024.0;

/// bpftrace finds tracepoints in tracefs, which a fresh machine of this kind does not mount
/// (observer itself attaches by BTF and needs none).
fn mount_tracefs() -> Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mounting tracefs on {TRACEFS} for bpftrace failed ({status})");
    }
    Ok(())
}

pub fn run(quick: bool) -> Result<()> {
    let plan = Plan::new(quick);
    let started = Instant::now();
    say(format_args!(
        "building observer; then {} pairs per tool, {} s of load per run, {} connections held",
        plan.pairs, plan.load_secs, plan.held
    ));
    crate::cargo(&["build", "--release", "--package", "observer"])?;
    mount_tracefs()?;
    catch_signals();
    let machine = Machine::read()?;
    let results = measure(&plan)?;
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let report = render(command, &plan, &machine, &results, started.elapsed());
    println!("{report}");
    if plan.quick {
        eprintln!("bench: a --quick run; BENCHMARKS.md is left as it is");
        return Ok(());
    }
    let path = setup::workspace().join("BENCHMARKS.md");
    fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

/// How much to measure: the full run writes BENCHMARKS.md; `--quick` is for trying changes.
struct Plan {
    quick: bool,
    /// A/B pairs per tool for the overhead, kernel-cost and own-cost figures.
    pairs: usize,
    /// Seconds of load per run.
    load_secs: f64,
    /// Rounds per tool of the completeness check of printed events.
    checks: usize,
    /// Rounds per tool of the CPU profile.
    profiles: usize,
    /// The large level of held connections.
    held: usize,
    /// Scrape / ss pairs per level of held connections.
    reading_pairs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        match quick {
            false => Plan {
                quick: false,
                pairs: 7,
                load_secs: 3.0,
                checks: 3,
                profiles: 3,
                held: 100_000,
                reading_pairs: 9,
            },
            true => Plan {
                quick: true,
                pairs: 2,
                load_secs: 1.0,
                checks: 1,
                profiles: 1,
                held: 5_000,
                reading_pairs: 5,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Interruption: Ctrl-C must still run the guards, so signals only set a flag that every wait
// checks.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler) };
    }
}

/// A progress line on stderr, with the time since the bench started.
fn say(what: std::fmt::Arguments) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("bench [{}:{:02}] {what}", t / 60, t % 60);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking up early on an interruption.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        check_interrupt()?;
        thread::sleep(left.min(Duration::from_millis(20)));
    }
    check_interrupt()
}

/// Calls `probe` every `every` until it gives a value, for at most `timeout`.
fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        pause(every)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Guards: child processes, the temporary directory, the BPF statistics switch.

/// A child process in a process group of its own. Dropping it stops the whole group (nginx's
/// workers too); PR_SET_PDEATHSIG stops it should the bench itself be killed.
struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and changes only the new process.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            status: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn poll(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_for(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            check_interrupt()?;
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Signals the process group, as long as its leader has not been reaped (its ID cannot have
    /// been reused before that).
    fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(self.pid() as libc::pid_t), sig) };
        }
    }

    /// Sends `sig` and waits for the exit; SIGKILL after STOP_GRACE.
    fn stop(&mut self, sig: libc::c_int) -> Result<ExitStatus> {
        self.signal(sig);
        if let Some(status) = self.wait_for(STOP_GRACE)? {
            return Ok(status);
        }
        eprintln!("bench: {} ignored signal {sig}; killing it", self.name);
        self.signal(libc::SIGKILL);
        let status = self.child.wait().context("waiting for a killed child")?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A directory for configs, logs and captured output, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("observer-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `sysctl -w kernel.bpf_stats_enabled=1` for the bench (the kernel counts run_time_ns and
/// run_cnt only then); the previous value comes back on drop.
struct BpfStats {
    previous: String,
}

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_string();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.previous) {
            eprintln!(
                "bench: could not restore {BPF_STATS} to {}: {e}",
                self.previous
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands.

/// What a finished command printed; `ended` is when it closed its stdout (normally: when it
/// exited), which times it more finely than polling for its exit.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    ended: Instant,
}

impl Output {
    fn checked(self, name: &str) -> Result<Output> {
        ensure!(
            self.status.success(),
            "{name} failed ({}): {}",
            self.status,
            self.stderr.trim()
        );
        Ok(self)
    }
}

/// A command running with its output captured.
struct Running {
    name: String,
    proc: Proc,
    stdout: thread::JoinHandle<(String, Instant)>,
    stderr: thread::JoinHandle<(String, Instant)>,
}

impl Running {
    fn start(name: &str, cmd: &mut Command) -> Result<Running> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(name, cmd)?;
        let stdout = read_in_background(proc.child.stdout.take());
        let stderr = read_in_background(proc.child.stderr.take());
        Ok(Running {
            name: name.to_string(),
            proc,
            stdout,
            stderr,
        })
    }

    fn finish(mut self, timeout: Duration) -> Result<Output> {
        let status = self
            .proc
            .wait_for(timeout)?
            .ok_or_else(|| anyhow!("{} did not finish within {timeout:?}", self.name))?;
        let joined = |h: thread::JoinHandle<(String, Instant)>| {
            h.join()
                .map_err(|_| anyhow!("reading the output of {}", self.name))
        };
        let (stdout, ended) = joined(self.stdout)?;
        let (stderr, _) = joined(self.stderr)?;
        Ok(Output {
            status,
            stdout,
            stderr,
            ended,
        })
    }
}

fn read_in_background(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> thread::JoinHandle<(String, Instant)> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        (String::from_utf8_lossy(&buf).into_owned(), Instant::now())
    })
}

fn run_bounded(name: &str, cmd: &mut Command, timeout: Duration) -> Result<Output> {
    Running::start(name, cmd)?.finish(timeout)?.checked(name)
}

/// A command's output, for the machine description.
fn capture(program: &str, args: &[&str]) -> Result<String> {
    let out = run_bounded(program, Command::new(program).args(args), TOOL_TIMEOUT)?;
    Ok(format!("{}{}", out.stdout, out.stderr).trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Loopback helpers.

/// `N` free ports below the ephemeral range. A client's ephemeral port then never equals a
/// server port: a holder bound to 127.0.0.3 could otherwise get the watched port number as its
/// own, and its outbound socket would count as a connection to that port (for ss and observer).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let range = fs::read_to_string(RANGE).with_context(|| format!("reading {RANGE}"))?;
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no range in {RANGE}: {range}"))?;
    // Held until all N are chosen, so that they differ.
    let listeners: Vec<TcpListener> = (low.saturating_sub(10_000)..low)
        .filter_map(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).ok())
        .take(N)
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<Result<_>>()?;
    ports
        .try_into()
        .map_err(|_| anyhow!("no {N} free ports below {low}"))
}

/// GET `path` over a new connection (HTTP/1.0: the server closes it); returns the 200 body.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .with_context(|| format!("reading http://{addr}{path}"))?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("http://{addr}{path}: no HTTP header"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "http://{addr}{path}: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_string())
}

/// A listener of the bench's own. A connection to it fires the tracepoint without touching the
/// watched port, which shows that a tracer's program is attached.
struct Poker(TcpListener);

impl Poker {
    fn new() -> Result<Poker> {
        Ok(Poker(
            TcpListener::bind("127.0.0.1:0").context("binding the poke listener")?,
        ))
    }

    fn poke(&self) -> Result<()> {
        let addr = self.0.local_addr()?;
        let client = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        let (server, _) = self.0.accept()?;
        drop((client, server));
        Ok(())
    }
}

/// `ss` counting the established connections of a local port, as a collector would poll it;
/// returns the count and the time from spawn to the end of its output.
fn ss_established(port: u16) -> Result<(usize, f64)> {
    let filter = format!("( sport = :{port} )");
    let start = Instant::now();
    let out = run_bounded(
        "ss",
        Command::new("ss").args(["-Htan", "state", "established", &filter]),
        TOOL_TIMEOUT,
    )?;
    Ok((out.stdout.lines().count(), ms(out.ended - start)))
}

// ---------------------------------------------------------------------------------------------
// nginx.

/// nginx from Debian's package, with a config of the bench's: every path it writes is in the
/// temporary directory. A second server block on a port of its own serves stub_status, whose
/// `accepts` is the ground truth for the number of connections.
struct Nginx {
    proc: Proc,
    port: u16,
    status: SocketAddr,
}

impl Nginx {
    fn start(
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
    fn accepts(&self) -> Result<u64> {
        let body = http_get(self.status, "/")?;
        let mut lines = body.lines().skip_while(|l| !l.contains("accepts"));
        lines
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no accepts in nginx's stub_status: {body}"))
    }

    fn stop(mut self) -> Result<()> {
        self.proc.stop(libc::SIGTERM).map(|_| ())
    }
}

fn nginx_conf(
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

// ---------------------------------------------------------------------------------------------
// The load generator.

#[derive(Clone, Copy, Debug, Default)]
struct Load {
    /// Responses ab received ("Complete requests", summed over the ab processes).
    completed: u64,
    /// ab's "Failed requests".
    failed: u64,
    secs: f64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.completed as f64 / self.secs
    }
}

/// AB_CLIENTS ab processes at once, each making `per_client` requests over a new connection each
/// (no -k), AB_CONCURRENCY at a time.
fn load(port: u16, per_client: u64) -> Result<Load> {
    let url = format!("http://127.0.0.1:{port}/");
    let (n, c) = (per_client.to_string(), AB_CONCURRENCY.to_string());
    let start = Instant::now();
    let runs = (0..AB_CLIENTS)
        .map(|_| {
            Running::start(
                "ab",
                Command::new("ab").args(["-q", "-r", "-n", &n, "-c", &c, &url]),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = Load::default();
    for run in runs {
        let out = run.finish(LOAD_TIMEOUT)?.checked("ab")?;
        total.completed += ab_field(&out.stdout, "Complete requests:")?;
        total.failed += ab_field(&out.stdout, "Failed requests:")?;
        total.secs = total.secs.max((out.ended - start).as_secs_f64());
    }
    Ok(total)
}

fn ab_field(report: &str, field: &str) -> Result<u64> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no `{field}` in ab's report:\n{report}"))
}

// ---------------------------------------------------------------------------------------------
// BPF programs: which ones a process holds, and what the kernel measured of their runs.

/// run_time_ns and run_cnt of one program (counted while kernel.bpf_stats_enabled=1).
#[derive(Clone, Copy, Debug, Default)]
struct RunStats {
    ns: u64,
    runs: u64,
}

impl RunStats {
    fn since(self, before: RunStats) -> RunStats {
        RunStats {
            ns: self.ns.saturating_sub(before.ns),
            runs: self.runs.saturating_sub(before.runs),
        }
    }

    fn ns_per_run(self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

/// `bpftool prog show ... --json`.
fn bpftool_progs(id: Option<u32>) -> Result<Value> {
    let mut cmd = Command::new("bpftool");
    cmd.args(["prog", "show"]);
    if let Some(id) = id {
        cmd.args(["id", &id.to_string()]);
    }
    let out = run_bounded("bpftool", cmd.arg("--json"), TOOL_TIMEOUT)?;
    serde_json::from_str(&out.stdout).context("parsing bpftool's JSON")
}

fn run_stats(id: u32) -> Result<RunStats> {
    let prog = bpftool_progs(Some(id))?;
    let field = |name: &str| prog[name].as_u64().unwrap_or(0);
    Ok(RunStats {
        ns: field("run_time_ns"),
        runs: field("run_cnt"),
    })
}

/// The programs a process holds (id, name, type), from the `prog_id:` lines of its fdinfo
/// (this bpftool does not show PIDs).
fn progs_of(pid: u32) -> Result<Vec<(u32, String, String)>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        // An fd may close while we read: skip it.
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    ids.into_iter()
        .map(|id| {
            let prog = bpftool_progs(Some(id))?;
            let field = |k: &str| prog[k].as_str().unwrap_or_default().to_string();
            Ok((id, field("name"), field("type")))
        })
        .collect()
}

/// Programs on sock:inet_sock_set_state that are not the bench's (another user's tracers, or
/// another observer).
fn foreign_tracers(ours: &BTreeSet<u32>) -> Result<Vec<String>> {
    let all = bpftool_progs(None)?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            let id = p["id"].as_u64().unwrap_or(0);
            let name = p["name"].as_str().unwrap_or_default();
            // bpftrace names a tracepoint's program after it; observer names its own.
            let on_tracepoint = name.starts_with("inet_sock_set") || name.starts_with("observer_");
            on_tracepoint && !ours.contains(&(id as u32))
        })
        .map(|p| {
            let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            format!("`{}` ({})", field("name"), field("type"))
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// perf: where the CPU goes.

/// Connections open on the watched port when the `ObserverOpen` rounds start observer.
const OPEN_AT_START: usize = 100;

/// The tools profiled (the printing script's cost is mostly in userspace: section 1 shows it).
const PROFILED: [Tool; 4] = [
    Tool::Observer,
    Tool::ObserverEvents,
    Tool::BpftraceEmpty,
    Tool::BpftraceCount,
];

/// Kernel functions that run for a hit of the tracepoint, up to and inside the programs: the
/// tracepoint's iterator, perf's tracepoint hook (classic interface), the BPF trampoline of a
/// BTF or raw tracepoint, the programs and the helpers and maps they call.
const TRACING_SYMBOLS: &[&str] = &[
    "bpf_prog_",
    "__traceiter_inet_sock_set_state",
    "perf_trace_",
    "trace_call_bpf",
    "bpf_trace_run",
    "__bpf_trace_",
    "__bpf_prog_enter",
    "__bpf_prog_exit",
    "htab_",
    "__htab_",
    "bpf_map_",
    "bpf_ringbuf_",
    "bpf_probe_read",
    "bpf_ktime_get",
    "ktime_get_mono_fast_ns",
    "bpf_get_current",
    "percpu_array_",
    "array_map_",
];

fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One profiled run: the share of all CPU samples (every CPU) spent on the tracepoint's path.
#[derive(Clone, Debug)]
struct Profile {
    tool: Tool,
    /// Percent of all samples.
    share: f64,
    /// The largest of those functions, with their percent.
    top: Vec<(String, f64)>,
}

impl Profile {
    /// From `perf report --stdio --sort sym -q`: lines like `   4.40%  [k] trace_call_bpf`.
    fn of(tool: Tool, report: &str) -> Profile {
        let mut hits: Vec<(String, f64)> = report
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let pct = words.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
                let sym = words.nth(1)?;
                let ours = TRACING_SYMBOLS.iter().any(|p| sym.starts_with(p));
                ours.then(|| (sym.to_string(), pct))
            })
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        Profile {
            tool,
            share: hits.iter().map(|(_, p)| p).sum(),
            top: hits.into_iter().take(4).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// observer.

/// A running observer, watching inbound connections to one port.
struct Observer {
    proc: Proc,
    metrics: SocketAddr,
    /// The main program and the backup.
    main: u32,
    backup: u32,
    ready_line: String,
    ready_ms: f64,
    stderr: mpsc::Receiver<String>,
}

/// What one scrape of observer and the kernel's program statistics said.
#[derive(Clone, Copy, Debug)]
struct ObserverReading {
    opened: f64,
    /// utime + stime from /proc/PID/stat (clock ticks, 10 ms).
    cpu_secs: f64,
    /// observer's own process_cpu_seconds_total (to the clock tick).
    cpu_metric: f64,
    dropped: f64,
    lost: f64,
    retired: f64,
    backup_counted: f64,
    main: RunStats,
    backup: RunStats,
}

impl Observer {
    fn start(bin: &Path, port: u16, events: Option<Stdio>) -> Result<Observer> {
        Self::start_with(bin, port, events, &[])
    }

    /// The same with more flags.
    fn start_with(
        bin: &Path,
        port: u16,
        events: Option<Stdio>,
        extra: &[&str],
    ) -> Result<Observer> {
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--metrics-addr", "127.0.0.1:0"]);
        cmd.args(extra);
        match events {
            Some(out) => cmd.args(["--events", "json"]).stdout(out),
            None => cmd.stdout(Stdio::null()),
        };
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut proc = Proc::spawn("observer", &mut cmd)?;
        let stderr = lines_in_background(proc.child.stderr.take());
        let ready_line = wait_ready(&mut proc, &stderr)?;
        let ready_ms = ms(start.elapsed());
        let metrics = ready_line
            .split("metrics at http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| anyhow!("no metrics address in `{ready_line}`"))?;
        let progs = progs_of(proc.pid())?;
        let find = |name: &str| {
            progs
                .iter()
                .find(|(_, n, _)| n == name)
                .map(|(id, _, _)| *id)
                .ok_or_else(|| anyhow!("observer holds no program {name}: {progs:?}"))
        };
        Ok(Observer {
            main: find("observer_main")?,
            backup: find("observer_backup")?,
            proc,
            metrics,
            ready_line,
            ready_ms,
            stderr,
        })
    }

    fn scrape(&self) -> Result<Metrics> {
        Ok(Metrics(http_get(self.metrics, "/metrics")?))
    }

    fn read(&self, port: u16) -> Result<ObserverReading> {
        let m = self.scrape()?;
        let conn = [("direction", "inbound"), ("port", &port.to_string())];
        let error = |reason| m.value("observer_kernel_errors_total", &[("reason", reason)]);
        Ok(ObserverReading {
            opened: m.value("observer_tcp_connections_opened_total", &conn),
            cpu_secs: cpu_secs(self.proc.pid())?,
            cpu_metric: m.value("process_cpu_seconds_total", &[]),
            dropped: m.value("observer_events_dropped_total", &[]),
            lost: error("lost_transition"),
            retired: error("stale_socket_retired"),
            backup_counted: m.value("observer_kernel_backup_transitions_total", &[]),
            main: run_stats(self.main)?,
            backup: run_stats(self.backup)?,
        })
    }

    fn established(&self, port: u16) -> Result<f64> {
        let port = port.to_string();
        Ok(self.scrape()?.value(
            "observer_tcp_connections",
            &[
                ("direction", "inbound"),
                ("port", &port),
                ("state", "established"),
            ],
        ))
    }

    /// Peak and current resident set size (VmHWM, VmRSS), KiB.
    fn memory_kib(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.proc.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no {name} in {path}"))
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// SIGTERM: observer detaches and exits 0. Returns a complaint when it did not.
    fn stop(mut self) -> Result<Option<String>> {
        let status = self.proc.stop(libc::SIGTERM)?;
        if status.success() {
            return Ok(None);
        }
        let said: Vec<String> = self.stderr.try_iter().collect();
        Ok(Some(format!(
            "observer exited with {status} on SIGTERM: {}",
            said.join(" / ")
        )))
    }
}

/// CPU seconds (user + system, all threads) a process has used, from /proc/PID/stat.
fn cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are fields 14 and 15 of the line, 12th and 13th after the name.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("unexpected {path}: {stat}"))
    };
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / per_sec)
}

fn lines_in_background(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = pipe {
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits for observer's `observer: ready:` line, which it prints once attached.
fn wait_ready(proc: &mut Proc, stderr: &mpsc::Receiver<String>) -> Result<String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut said = Vec::new();
    while Instant::now() < deadline {
        check_interrupt()?;
        match stderr.recv_timeout(Duration::from_millis(50)) {
            Ok(line) if line.starts_with("observer: ready:") => return Ok(line),
            Ok(line) => said.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if proc.poll()?.is_some() {
            break;
        }
    }
    bail!("observer did not get ready: {}", said.join(" / "))
}

/// A Prometheus text exposition.
struct Metrics(String);

impl Metrics {
    /// The samples of `name`: their labels (`k="v",...`) and values.
    fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(move |(series, value)| {
                let (n, labels) = series.split_once('{').unwrap_or((series, ""));
                let value = value.parse().ok()?;
                (n == name).then_some((labels.trim_end_matches('}'), value))
            })
    }

    /// The first sample of `name` whose labels include `labels`; 0 when there is none (a counter
    /// that has not counted anything yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .find(|(have, _)| {
                let have: Vec<&str> = have.split(',').collect();
                labels
                    .iter()
                    .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
            })
            .map_or(0.0, |(_, v)| v)
    }

    fn sum(&self, name: &str) -> f64 {
        self.samples(name).map(|(_, v)| v).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// bpftrace.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    /// Does nothing: the floor, what any program on this tracepoint costs.
    Empty,
    /// Counts transitions per new state in the kernel; prints the map at exit.
    Count,
    /// Prints every transition.
    Print,
}

/// The same tracepoint and the same filter as `observer --port`: the socket's local port.
fn bpftrace_script(script: Script, port: impl std::fmt::Display) -> String {
    let probe = format!("tracepoint:sock:inet_sock_set_state /args->sport == {port}/");
    match script {
        Script::Empty => "tracepoint:sock:inet_sock_set_state { }".to_string(),
        Script::Count => format!("{probe} {{ @[args->newstate] = count(); }}"),
        Script::Print => format!(
            "{probe} {{ printf(\"%s:%d %s:%d %d %d\\n\", ntop(args->saddr), args->sport, \
             ntop(args->daddr), args->dport, args->oldstate, args->newstate); }}"
        ),
    }
}

struct Bpftrace {
    proc: Proc,
    prog: u32,
}

impl Bpftrace {
    /// Starts bpftrace and waits until its program runs (a poke makes a transition).
    fn start(script: Script, port: u16, out: &Path, err: &Path, poker: &Poker) -> Result<Bpftrace> {
        let mut cmd = Command::new("bpftrace");
        cmd.args(["-e", &bpftrace_script(script, port)])
            .stdin(Stdio::null())
            .stdout(File::create(out).with_context(|| format!("creating {}", out.display()))?)
            .stderr(File::create(err).with_context(|| format!("creating {}", err.display()))?);
        let mut proc = Proc::spawn("bpftrace", &mut cmd)?;
        let prog = wait_until(
            "bpftrace to attach",
            START_TIMEOUT,
            Duration::from_millis(50),
            || {
                if let Some(status) = proc.poll()? {
                    let said = fs::read_to_string(err).unwrap_or_default();
                    bail!("bpftrace exited ({status}): {}", said.trim());
                }
                for (id, _, _) in progs_of(proc.pid())?
                    .iter()
                    .filter(|(_, _, k)| k == "tracepoint")
                {
                    poker.poke()?;
                    if run_stats(*id)?.runs > 0 {
                        return Ok(Some(*id));
                    }
                }
                Ok(None)
            },
        )?;
        Ok(Bpftrace { proc, prog })
    }

    /// SIGINT, as at a terminal: bpftrace prints its maps and exits.
    fn stop(mut self) -> Result<ExitStatus> {
        self.proc.stop(libc::SIGINT)
    }
}

/// The `@[1]: N` line of the counting script's output: transitions into ESTABLISHED.
fn counted_established(output: &str) -> Option<u64> {
    let key = format!("@[{TCP_ESTABLISHED}]:");
    output
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
}

/// Lines of the printing script that are transitions into ESTABLISHED.
fn printed_established(output: &str) -> u64 {
    output
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() == 4 && fields[3] == TCP_ESTABLISHED
        })
        .count() as u64
}

/// bpftrace's "Lost N events" reports (perf buffer overruns).
fn lost_events(output: &str) -> u64 {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Lost "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The measurements.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Observer,
    ObserverEvents,
    BpftraceEmpty,
    BpftraceCount,
    BpftracePrint,
    /// Metrics only, started while connections are open on the port: as in production, where
    /// the start-up snapshot hands the kernel its seeds.
    ObserverOpen,
}

impl Tool {
    const ALL: [Tool; 6] = [
        Tool::Observer,
        Tool::ObserverOpen,
        Tool::ObserverEvents,
        Tool::BpftraceEmpty,
        Tool::BpftraceCount,
        Tool::BpftracePrint,
    ];

    fn label(self) -> &'static str {
        match self {
            Tool::Observer => "observer (metrics only)",
            Tool::ObserverOpen => "observer (metrics only), started with 100 connections open",
            Tool::ObserverEvents => "observer `--events json > /dev/null`",
            Tool::BpftraceEmpty => "bpftrace, empty program (the floor)",
            Tool::BpftraceCount => "bpftrace, counting in the kernel",
            Tool::BpftracePrint => "bpftrace, `printf` per event `> /dev/null`",
        }
    }
}

/// Which program a kernel-cost figure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Main,
    Backup,
    Bpftrace,
}

/// One A/B pair: the load without the tool, then with it.
struct Round {
    tool: Tool,
    without: Load,
    with: Load,
    /// Connections nginx accepted during the run with the tool.
    accepted: u64,
    /// What the tool counted of them: observer's opened_total, bpftrace's ESTABLISHED count.
    counted: Option<u64>,
    kernel: Vec<(Prog, RunStats)>,
    own: Option<OwnCost>,
}

/// observer's own figures over a run with load.
struct OwnCost {
    cpu_secs: f64,
    cpu_metric: f64,
    peak_rss_kib: u64,
    rss_kib: u64,
    dropped: f64,
    lost: f64,
    retired: f64,
    backup_counted: f64,
}

/// A completeness check of printed events: every connection nginx accepted, one line?
struct Check {
    what: CheckKind,
    accepted: u64,
    completed: u64,
    printed: u64,
    /// observer's opened_total over the same run.
    opened: Option<u64>,
    /// Events the tool says it did not print (observer's dropped counter, bpftrace's "Lost").
    dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckKind {
    ObserverEvents,
    BpftracePrint,
}

/// Scrape and ss timings at one level of held connections.
struct Level {
    target: usize,
    held: usize,
    gauge: f64,
    ss_count: usize,
    /// Scrapes taking turns with ss, and scrapes on their own.
    scrape_ms: Vec<f64>,
    back_to_back_ms: Vec<f64>,
    ss_ms: Vec<f64>,
    /// observer_kernel_errors_total, all reasons.
    kernel_errors: f64,
}

/// A second observer started while the large level was held: the snapshot of existing ones.
struct Startup {
    ready_ms: f64,
    ready_line: String,
    gauge: f64,
}

/// An observer with `--idle-after` started while the large level was held: the idle scan's cost.
struct IdleScan {
    held: usize,
    /// Its observer_tcp_connections_idle once every held connection was idle.
    gauge: f64,
    /// Wall and CPU time of single scans (observer_idle_scan_*_seconds), ms.
    wall_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
    /// observer's CPU time over `window_secs` without scrapes, as a share of one core; and that
    /// of the observer without `--idle-after` over the same window.
    share: f64,
    plain_share: f64,
    window_secs: f64,
}

struct Readings {
    levels: Vec<Level>,
    startup: Option<Startup>,
    idle: Option<IdleScan>,
    holders: usize,
    gauge_after_release: f64,
}

struct Results {
    per_client: u64,
    rounds: Vec<Round>,
    checks: Vec<Check>,
    /// None when perf is not installed.
    profiles: Option<Vec<Profile>>,
    readings: Readings,
    foreign: BTreeSet<String>,
    warnings: Vec<String>,
}

/// What the overhead and completeness phases share.
struct Bench<'a> {
    dir: &'a Path,
    observer: PathBuf,
    nginx: Nginx,
    poker: Poker,
    per_client: u64,
    ours: BTreeSet<u32>,
    foreign: BTreeSet<String>,
    warnings: Vec<String>,
}

fn measure(plan: &Plan) -> Result<Results> {
    let dir = TempDir::create()?;
    // Someone else's programs on the tracepoint would run in every round, with and without the
    // tool: every figure would measure them too.
    let foreign = foreign_tracers(&BTreeSet::new())?;
    if !foreign.is_empty() {
        bail!(
            "programs are already attached to {}:{} ({}); stop them first, or every figure \
             measures them too",
            "sock",
            "inet_sock_set_state",
            foreign.join(", ")
        );
    }
    let _stats = BpfStats::enable()?;
    let observer = setup::workspace().join("target/release/observer");
    let nginx = Nginx::start(&dir.0, "server", NGINX_WORKERS, 4096, false)?;
    say(format_args!(
        "nginx on 127.0.0.1:{}; warming up",
        nginx.port
    ));
    let per_client = calibrate(nginx.port, plan.load_secs)?;
    let mut bench = Bench {
        dir: &dir.0,
        observer,
        nginx,
        poker: Poker::new()?,
        per_client,
        ours: BTreeSet::new(),
        foreign: BTreeSet::new(),
        warnings: Vec::new(),
    };
    let mut rounds = Vec::new();
    for pair in 1..=plan.pairs {
        for tool in Tool::ALL {
            let round = bench.round(tool, pair)?;
            say(format_args!(
                "pair {pair}/{} {}: {:.0} -> {:.0} conn/s ({:.3})",
                plan.pairs,
                tool.label(),
                round.without.rate(),
                round.with.rate(),
                round.with.rate() / round.without.rate()
            ));
            rounds.push(round);
        }
    }
    let mut checks = Vec::new();
    for i in 1..=plan.checks {
        checks.push(bench.observer_events_check(i)?);
        checks.push(bench.bpftrace_print_check(i)?);
        say(format_args!("completeness check {i}/{} done", plan.checks));
    }
    let profiles = if perf_available() {
        let mut profiles = Vec::new();
        for i in 1..=plan.profiles {
            for tool in PROFILED {
                profiles.push(bench.profile(tool, plan.load_secs)?);
            }
            say(format_args!("profile {i}/{} done", plan.profiles));
        }
        Some(profiles)
    } else {
        bench
            .warnings
            .push("perf is not installed: no CPU profile (apt-get install linux-perf)".into());
        None
    };
    let Bench {
        nginx,
        observer,
        foreign,
        mut warnings,
        ..
    } = bench;
    // The holding phase gets the CPU to itself.
    nginx.stop()?;
    let readings = readings(&dir.0, &observer, plan, &mut warnings)?;
    Ok(Results {
        per_client,
        rounds,
        checks,
        profiles,
        readings,
        foreign,
        warnings,
    })
}

/// Warms nginx and the TCP stack up, and sizes every run to `secs` at the rate it measured.
fn calibrate(port: u16, secs: f64) -> Result<u64> {
    let mut rates = Vec::new();
    for _ in 0..2 {
        rates.push(load(port, WARMUP_PER_CLIENT)?.rate());
    }
    let rate = Spread::of(rates).map_or(0.0, |s| s.median);
    let per_client = (rate * secs / AB_CLIENTS as f64) as u64;
    Ok(per_client.clamp(1_000, 1_000_000))
}

impl Bench<'_> {
    fn load(&self) -> Result<Load> {
        load(self.nginx.port, self.per_client)
    }

    /// A run of load and SETTLE, with the connections nginx accepted meanwhile (less the
    /// connection of its second stub_status reading).
    fn counted_load(&self) -> Result<(Load, u64)> {
        let before = self.nginx.accepts()?;
        let load = self.load()?;
        pause(SETTLE)?;
        let after = self.nginx.accepts()?;
        Ok((load, (after - before).saturating_sub(1)))
    }

    fn round(&mut self, tool: Tool, pair: usize) -> Result<Round> {
        let foreign = foreign_tracers(&self.ours)?;
        self.foreign.extend(foreign);
        let without = self.load()?;
        match tool {
            Tool::Observer | Tool::ObserverOpen => self.observer_round(tool, without, false),
            Tool::ObserverEvents => self.observer_round(tool, without, true),
            Tool::BpftraceEmpty => self.bpftrace_round(tool, without, Script::Empty, pair),
            Tool::BpftraceCount => self.bpftrace_round(tool, without, Script::Count, pair),
            Tool::BpftracePrint => self.bpftrace_round(tool, without, Script::Print, pair),
        }
    }

    fn start_observer(&mut self, events: Option<Stdio>) -> Result<Observer> {
        let obs = Observer::start(&self.observer, self.nginx.port, events)?;
        self.ours.extend([obs.main, obs.backup]);
        Ok(obs)
    }

    fn stop_observer(&mut self, obs: Observer) -> Result<()> {
        if let Some(complaint) = obs.stop()? {
            self.warnings.push(complaint);
        }
        Ok(())
    }

    fn observer_round(&mut self, tool: Tool, without: Load, events: bool) -> Result<Round> {
        let port = self.nginx.port;
        // Idle connections nginx keeps (for its client_header_timeout, a minute) while observer
        // starts: the snapshot counts them.
        let open: Vec<TcpStream> = if tool == Tool::ObserverOpen {
            (0..OPEN_AT_START)
                .map(|_| {
                    TcpStream::connect_timeout(
                        &([127, 0, 0, 1], port).into(),
                        Duration::from_secs(5),
                    )
                })
                .collect::<std::io::Result<_>>()
                .context("opening the connections observer starts with")?
        } else {
            Vec::new()
        };
        let obs = self.start_observer(events.then(Stdio::null))?;
        let expected = format!("{} existing connections counted", open.len());
        if !open.is_empty() && !obs.ready_line.contains(&expected) {
            self.warnings.push(format!(
                "observer started with {} connections open said `{}`",
                open.len(),
                obs.ready_line
            ));
        }
        let before = obs.read(port)?;
        let (with, accepted) = self.counted_load()?;
        let after = obs.read(port)?;
        let (peak_rss_kib, rss_kib) = obs.memory_kib()?;
        self.stop_observer(obs)?;
        drop(open);
        Ok(Round {
            tool,
            without,
            with,
            accepted,
            counted: Some((after.opened - before.opened) as u64),
            kernel: vec![
                (Prog::Main, after.main.since(before.main)),
                (Prog::Backup, after.backup.since(before.backup)),
            ],
            own: Some(OwnCost {
                cpu_secs: after.cpu_secs - before.cpu_secs,
                cpu_metric: after.cpu_metric - before.cpu_metric,
                peak_rss_kib,
                rss_kib,
                dropped: after.dropped - before.dropped,
                lost: after.lost - before.lost,
                retired: after.retired - before.retired,
                backup_counted: after.backup_counted - before.backup_counted,
            }),
        })
    }

    fn bpftrace_round(
        &mut self,
        tool: Tool,
        without: Load,
        script: Script,
        pair: usize,
    ) -> Result<Round> {
        // The counting script prints only its map, at exit: keep it, to check its count.
        let out = match script {
            Script::Count => self.dir.join(format!("bpftrace-count-{pair}.out")),
            Script::Empty | Script::Print => PathBuf::from("/dev/null"),
        };
        let err = self.dir.join(format!("bpftrace-{script:?}-{pair}.err"));
        let bt = Bpftrace::start(script, self.nginx.port, &out, &err, &self.poker)?;
        self.ours.insert(bt.prog);
        let prog = bt.prog;
        let before = run_stats(prog)?;
        let (with, accepted) = self.counted_load()?;
        let after = run_stats(prog)?;
        self.stop_bpftrace(bt)?;
        let counted = match script {
            Script::Count => counted_established(&fs::read_to_string(&out)?),
            Script::Empty | Script::Print => None,
        };
        Ok(Round {
            tool,
            without,
            with,
            accepted,
            counted,
            kernel: vec![(Prog::Bpftrace, after.since(before))],
            own: None,
        })
    }

    /// One run of load with the tool attached, sampled by `perf record -a` in its middle.
    fn profile(&mut self, tool: Tool, load_secs: f64) -> Result<Profile> {
        let file = self.dir.join(format!("perf-{tool:?}.data"));
        let record = |file: &Path| {
            let secs = format!("{:.1}", load_secs * 0.6);
            Running::start(
                "perf record",
                Command::new("perf")
                    .args(["record", "-a", "-e", "cpu-clock", "-F", "2000", "-o"])
                    .arg(file)
                    .args(["--", "sleep", &secs]),
            )
        };
        let run = |bench: &Self| -> Result<()> {
            // As in production: no clock reads around every program run (the tool is attached
            // already; its start-up check needs the run counts).
            let set_stats =
                |v: &str| fs::write(BPF_STATS, v).with_context(|| format!("writing {BPF_STATS}"));
            set_stats("0")?;
            let perf = record(&file)?;
            let load = bench.load();
            let recorded = perf.finish(TOOL_TIMEOUT);
            set_stats("1")?;
            load?;
            recorded?.checked("perf record")?;
            Ok(())
        };
        match tool {
            Tool::Observer | Tool::ObserverEvents => {
                let obs = self.start_observer((tool == Tool::ObserverEvents).then(Stdio::null))?;
                run(self)?;
                self.stop_observer(obs)?;
            }
            Tool::BpftraceEmpty | Tool::BpftraceCount => {
                let script = if tool == Tool::BpftraceEmpty {
                    Script::Empty
                } else {
                    Script::Count
                };
                let null = PathBuf::from("/dev/null");
                let bt = Bpftrace::start(script, self.nginx.port, &null, &null, &self.poker)?;
                self.ours.insert(bt.prog);
                run(self)?;
                self.stop_bpftrace(bt)?;
            }
            Tool::BpftracePrint | Tool::ObserverOpen => bail!("{} is not profiled", tool.label()),
        }
        let report = capture(
            "perf",
            &[
                "report",
                "-i",
                &file.to_string_lossy(),
                "--stdio",
                "--sort",
                "sym",
                "-q",
                "--percent-limit",
                "0.01",
            ],
        )?;
        let _ = fs::remove_file(&file);
        Ok(Profile::of(tool, &report))
    }

    fn stop_bpftrace(&mut self, bt: Bpftrace) -> Result<()> {
        let status = bt.stop()?;
        if !status.success() {
            self.warnings
                .push(format!("bpftrace exited with {status} on SIGINT"));
        }
        Ok(())
    }

    /// observer with `--events json` into a file: one `open` event per accepted connection?
    fn observer_events_check(&mut self, i: usize) -> Result<Check> {
        let port = self.nginx.port;
        let path = self.dir.join(format!("events-{i}.json"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let obs = self.start_observer(Some(file.into()))?;
        let before = obs.read(port)?;
        let (with, accepted) = self.counted_load()?;
        let after = obs.read(port)?;
        // observer writes out what it has read when it stops.
        self.stop_observer(obs)?;
        let events = fs::read_to_string(&path)?;
        Ok(Check {
            what: CheckKind::ObserverEvents,
            accepted,
            completed: with.completed,
            printed: events
                .lines()
                .filter(|l| l.contains(r#""type":"open""#))
                .count() as u64,
            opened: Some((after.opened - before.opened) as u64),
            dropped: (after.dropped - before.dropped) as u64,
        })
    }

    /// bpftrace printing every transition into a file: one ESTABLISHED line per connection?
    fn bpftrace_print_check(&mut self, i: usize) -> Result<Check> {
        let out = self.dir.join(format!("bpftrace-print-{i}.out"));
        let err = self.dir.join(format!("bpftrace-print-{i}.err"));
        let bt = Bpftrace::start(Script::Print, self.nginx.port, &out, &err, &self.poker)?;
        self.ours.insert(bt.prog);
        let (with, accepted) = self.counted_load()?;
        self.stop_bpftrace(bt)?;
        let printed = fs::read_to_string(&out)?;
        let said = fs::read_to_string(&err)?;
        Ok(Check {
            what: CheckKind::BpftracePrint,
            accepted,
            completed: with.completed,
            printed: printed_established(&printed),
            opened: None,
            dropped: lost_events(&printed) + lost_events(&said),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The cost of a reading, with few and with many connections open.

fn readings(
    dir: &Path,
    observer: &Path,
    plan: &Plan,
    warnings: &mut Vec<String>,
) -> Result<Readings> {
    let nginx = Nginx::start(dir, "hold", HOLD_WORKERS, HOLD_WORKER_CONNECTIONS, true)?;
    let port = nginx.port;
    let obs = Observer::start(observer, port, None)?;
    let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut holders: Vec<Holder> = Vec::new();
    let mut levels = Vec::new();
    let mut startup = None;
    let mut idle = None;
    for target in [FEW_HELD, plan.held] {
        let already: usize = holders.iter().map(|h| h.held).sum();
        holders.extend(hold_more(
            dst,
            target.saturating_sub(already),
            holders.len(),
        )?);
        let held = holders.iter().map(|h| h.held).sum();
        say(format_args!("holding {held} connections"));
        let l = level(&obs, port, target, held, plan.reading_pairs)?;
        if l.gauge != held as f64 || l.ss_count != held || l.kernel_errors != 0.0 {
            warnings.push(format!(
                "holding {held} connections, observer's gauge said {}, ss counted {}, and \
                 observer_kernel_errors_total was {}",
                l.gauge, l.ss_count, l.kernel_errors
            ));
        }
        levels.push(l);
        if target == plan.held {
            startup = Some(second_start(observer, port)?);
            let i = idle_scan(observer, port, held, obs.proc.pid())?;
            if i.gauge != held as f64 {
                warnings.push(format!(
                    "holding {held} silent connections, observer_tcp_connections_idle said {}",
                    i.gauge
                ));
            }
            idle = Some(i);
        }
    }
    let holder_count = holders.len();
    drop(holders);
    let gauge_after_release = settle_gauge(&obs, port, 0)?;
    if gauge_after_release != 0.0 {
        warnings.push(format!(
            "after the holders closed their connections, observer's gauge stayed at {gauge_after_release}"
        ));
    }
    if let Some(complaint) = obs.stop()? {
        warnings.push(complaint);
    }
    nginx.stop()?;
    Ok(Readings {
        levels,
        startup,
        idle,
        holders: holder_count,
        gauge_after_release,
    })
}

/// Holders for `n` more connections, PER_HOLDER each, each from a source address of its own
/// (127.0.0.2 and up): the ephemeral ports of one source address would not reach 100,000.
fn hold_more(dst: SocketAddr, n: usize, first: usize) -> Result<Vec<Holder>> {
    let mut pending = Vec::new();
    let mut left = n;
    while left > 0 {
        let count = left.min(PER_HOLDER);
        let index = u8::try_from(first + pending.len() + 2).context("too many holders")?;
        let src = Ipv4Addr::new(127, 0, 0, index);
        pending.push(Holder::spawn(dst, src, count)?);
        left -= count;
    }
    for holder in &mut pending {
        holder.wait_holding()?;
    }
    Ok(pending)
}

/// Waits (bounded) until observer and ss both see `held` connections, then times pairs of a
/// scrape and an ss count.
fn level(obs: &Observer, port: u16, target: usize, held: usize, pairs: usize) -> Result<Level> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (gauge, ss_count) = loop {
        let gauge = obs.established(port)?;
        let (ss_count, _) = ss_established(port)?;
        let agree = gauge == held as f64 && ss_count == held;
        if agree || Instant::now() >= deadline {
            break (gauge, ss_count);
        }
        pause(Duration::from_millis(200))?;
    };
    let timed_scrape = || -> Result<f64> {
        let start = Instant::now();
        obs.scrape()?;
        Ok(ms(start.elapsed()))
    };
    let back_to_back_ms = (0..pairs).map(|_| timed_scrape()).collect::<Result<_>>()?;
    let (mut scrape_ms, mut ss_ms) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        scrape_ms.push(timed_scrape()?);
        ss_ms.push(ss_established(port)?.1);
    }
    Ok(Level {
        target,
        held,
        gauge,
        ss_count,
        scrape_ms,
        back_to_back_ms,
        ss_ms,
        kernel_errors: obs.scrape()?.sum("observer_kernel_errors_total"),
    })
}

/// Starts another observer while the connections are held: how long its snapshot of them takes,
/// and whether it counts them all.
fn second_start(observer: &Path, port: u16) -> Result<Startup> {
    let obs = Observer::start(observer, port, None)?;
    let gauge = obs.established(port)?;
    let startup = Startup {
        ready_ms: obs.ready_ms,
        ready_line: obs.ready_line.clone(),
        gauge,
    };
    obs.stop()?;
    Ok(startup)
}

/// The threshold of the idle scan measured: the shortest observer takes, so the most scans a
/// second (one per 250 ms).
const IDLE_AFTER: &str = "1s";
/// Scans timed one by one, and the quiet window over which observer's CPU share is taken: long
/// enough for several scans at 100,000 connections, where one comes every few seconds.
const IDLE_SCANS: usize = 5;
const IDLE_WINDOW: Duration = Duration::from_secs(30);

/// Starts an observer with `--idle-after 1s` while `held` silent connections are held: once
/// its gauge counts them all idle, the wall and CPU time of single scans (its own gauges of the
/// last scan, each read once a new scan has changed them), and its CPU share over a window with
/// no scrape.
fn idle_scan(observer: &Path, port: u16, held: usize, plain: u32) -> Result<IdleScan> {
    let obs = Observer::start_with(observer, port, None, &["--idle-after", IDLE_AFTER])?;
    let conn = [("direction", "inbound"), ("port", &port.to_string())];
    let deadline = Instant::now() + Duration::from_secs(60);
    let gauge = loop {
        let g = obs.scrape()?.value("observer_tcp_connections_idle", &conn);
        if g == held as f64 || Instant::now() >= deadline {
            break g;
        }
        pause(Duration::from_millis(200))?;
    };
    let (mut wall_ms, mut cpu_ms) = (Vec::new(), Vec::new());
    let last_scan = || -> Result<(f64, f64)> {
        let m = obs.scrape()?;
        Ok((
            m.value("observer_idle_scan_duration_seconds", &[]) * 1e3,
            m.value("observer_idle_scan_cpu_seconds", &[]) * 1e3,
        ))
    };
    let mut seen = last_scan()?;
    while wall_ms.len() < IDLE_SCANS {
        let deadline = Instant::now() + Duration::from_secs(60);
        let next = loop {
            pause(Duration::from_millis(200))?;
            let s = last_scan()?;
            if s != seen || Instant::now() >= deadline {
                break s;
            }
        };
        if next == seen {
            bail!("the idle scan's gauges did not change in 60 s");
        }
        wall_ms.push(next.0);
        cpu_ms.push(next.1);
        seen = next;
    }
    let (before, plain_before) = (cpu_secs(obs.proc.pid())?, cpu_secs(plain)?);
    pause(IDLE_WINDOW)?;
    let share = (cpu_secs(obs.proc.pid())? - before) / IDLE_WINDOW.as_secs_f64();
    let plain_share = (cpu_secs(plain)? - plain_before) / IDLE_WINDOW.as_secs_f64();
    obs.stop()?;
    Ok(IdleScan {
        held,
        gauge,
        wall_ms,
        cpu_ms,
        share,
        plain_share,
        window_secs: IDLE_WINDOW.as_secs_f64(),
    })
}

/// Waits (bounded) for observer's established gauge to reach `want`; returns the last value.
fn settle_gauge(obs: &Observer, port: u16, want: usize) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let gauge = obs.established(port)?;
        if gauge == want as f64 || Instant::now() >= deadline {
            return Ok(gauge);
        }
        pause(Duration::from_millis(200))?;
    }
}

/// A holder process (`bench --hold`): holds its connections until its stdin closes.
struct Holder {
    proc: Proc,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
    held: usize,
}

impl Holder {
    fn spawn(dst: SocketAddr, src: Ipv4Addr, n: usize) -> Result<Holder> {
        let exe = std::env::current_exe().context("finding xtask's own binary")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench",
            HOLD_ARG,
            &dst.to_string(),
            &src.to_string(),
            &n.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("holder", &mut cmd)?;
        let stdin = proc.child.stdin.take();
        let stdout = lines_in_background(proc.child.stdout.take());
        Ok(Holder {
            proc,
            stdin,
            stdout,
            held: 0,
        })
    }

    /// Waits for the holder's `holding N`: N may be short of what was asked if connecting failed.
    fn wait_holding(&mut self) -> Result<()> {
        let deadline = Instant::now() + HOLD_TIMEOUT;
        while Instant::now() < deadline {
            check_interrupt()?;
            match self.stdout.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(n) = line.strip_prefix("holding ") {
                        self.held = n.trim().parse().context("the holder's count")?;
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("a holder exited ({:?})", self.proc.poll()?)
                }
            }
        }
        bail!("a holder did not report within {HOLD_TIMEOUT:?}")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // A closed stdin tells the holder to close its connections and exit; Proc's drop
        // stops it otherwise.
        drop(self.stdin.take());
        let _ = self.proc.wait_for(STOP_GRACE);
    }
}

/// The holder process: opens N connections from SRC to DST, says `holding <count>`, and keeps
/// them until its stdin closes (or the bench dies, which PR_SET_PDEATHSIG turns into SIGTERM).
pub fn hold(args: &[String]) -> Result<()> {
    let [dst, src, n] = args else {
        bail!("usage: cargo xtask bench {HOLD_ARG} DST SRC N");
    };
    let dst: SocketAddr = dst.parse().context("DST")?;
    let src: IpAddr = src.parse().context("SRC")?;
    let n: usize = n.parse().context("N")?;
    let deadline = Instant::now() + HOLD_TIMEOUT / 2;
    let mut held = Vec::with_capacity(n);
    while held.len() < n && Instant::now() < deadline {
        match connect_from(src, dst) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                eprintln!("bench holder {src}: stopped at {}: {e}", held.len());
                break;
            }
        }
    }
    println!("holding {}", held.len());
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    socket.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

// ---------------------------------------------------------------------------------------------
// Statistics.

#[derive(Clone, Copy, Debug)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// "median (min–max)".
    fn show(&self, f: impl Fn(f64) -> String) -> String {
        format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn show_spread(s: Option<Spread>, f: impl Fn(f64) -> String) -> String {
    s.map_or_else(|| "–".to_string(), |s| s.show(f))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

// ---------------------------------------------------------------------------------------------
// The machine.

struct Machine {
    date: String,
    kernel: String,
    cpu: String,
    cores: usize,
    memory_gib: f64,
    debian: String,
    nofile: String,
    nginx: String,
    ab: String,
    bpftrace: String,
    ss: String,
    observer: String,
}

impl Machine {
    fn read() -> Result<Machine> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let meminfo = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let limits = fs::read_to_string("/proc/self/limits").context("reading limits")?;
        Ok(Machine {
            date: capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?,
            kernel: capture("uname", &["-r"])?,
            cpu: field_after(&cpuinfo, "model name", ':').unwrap_or_else(|| "unknown".into()),
            cores: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            memory_gib: field_after(&meminfo, "MemTotal", ':')
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / MIB),
            debian: fs::read_to_string("/etc/debian_version")
                .unwrap_or_default()
                .trim()
                .to_string(),
            nofile: limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4))
                .unwrap_or("?")
                .to_string(),
            nginx: capture("nginx", &["-v"])?
                .trim_start_matches("nginx version: nginx/")
                .to_string(),
            // "This is ApacheBench, Version 2.3 <$Revision$>"
            ab: capture("ab", &["-V"])?
                .lines()
                .next()
                .and_then(|l| l.split(" <").next())
                .unwrap_or_default()
                .trim_start_matches("This is ")
                .replace(", Version", "")
                .to_string(),
            bpftrace: capture("bpftrace", &["--version"])?,
            ss: capture("ss", &["-V"])?,
            observer: observer_revision()?,
        })
    }
}

fn field_after(text: &str, key: &str, sep: char) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(sep))
        .map(|(_, v)| v.trim().to_string())
}

fn observer_revision() -> Result<String> {
    let dir = setup::workspace();
    let dir = dir.to_str().context("workspace path")?;
    let commit = capture("git", &["-C", dir, "rev-parse", "--short", "HEAD"])?;
    // Only the crates that make the binary.
    let changes = capture(
        "git",
        &[
            "-C",
            dir,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "observer",
            "observer-common",
            "observer-ebpf",
        ],
    )?;
    Ok(if changes.is_empty() {
        format!("commit {commit}")
    } else {
        format!("commit {commit} with uncommitted changes")
    })
}

// ---------------------------------------------------------------------------------------------
// The report.

/// The figures the goals and notes refer to.
struct Figures {
    baseline: Option<Spread>,
    main_ns: Option<Spread>,
    both_ns: Option<Spread>,
    count_ns: Option<Spread>,
    empty_ns: Option<Spread>,
    hits_per_conn: Option<Spread>,
    missing_counts: u64,
    counted_total: u64,
    peak_rss_mib: f64,
}

impl Figures {
    fn of(r: &Results) -> Figures {
        let rounds = |tool| r.rounds.iter().filter(move |x: &&Round| x.tool == tool);
        let ns =
            |tool, prog| Spread::of(rounds(tool).filter_map(|x| kernel(x, prog)?.ns_per_run()));
        let opened: Vec<&Round> = rounds(Tool::Observer)
            .chain(rounds(Tool::ObserverOpen))
            .chain(rounds(Tool::ObserverEvents))
            .collect();
        Figures {
            baseline: Spread::of(r.rounds.iter().map(|x| x.without.rate())),
            main_ns: ns(Tool::Observer, Prog::Main),
            both_ns: Spread::of(rounds(Tool::Observer).filter_map(both_per_hit)),
            count_ns: ns(Tool::BpftraceCount, Prog::Bpftrace),
            empty_ns: ns(Tool::BpftraceEmpty, Prog::Bpftrace),
            hits_per_conn: Spread::of(
                rounds(Tool::Observer)
                    .filter_map(|x| Some(kernel(x, Prog::Main)?.runs as f64 / x.accepted as f64)),
            ),
            missing_counts: opened.iter().map(|x| missing(x.accepted, x.counted)).sum(),
            counted_total: opened.iter().map(|x| x.accepted).sum(),
            peak_rss_mib: r
                .rounds
                .iter()
                .filter_map(|x| x.own.as_ref())
                .map(|o| o.peak_rss_kib as f64 / 1024.0)
                .fold(0.0, f64::max),
        }
    }
}

/// Throughput with `tool` over throughput without it, over its pairs.
fn ratio(r: &Results, tool: Tool) -> Option<Spread> {
    Spread::of(
        r.rounds
            .iter()
            .filter(|x| x.tool == tool)
            .map(|x| x.with.rate() / x.without.rate()),
    )
}

fn kernel(round: &Round, prog: Prog) -> Option<RunStats> {
    round
        .kernel
        .iter()
        .find(|(p, _)| *p == prog)
        .map(|(_, s)| *s)
}

/// ns per hit of observer's two programs together (both run on every hit).
fn both_per_hit(round: &Round) -> Option<f64> {
    let (main, backup) = (kernel(round, Prog::Main)?, kernel(round, Prog::Backup)?);
    (main.runs > 0).then(|| (main.ns + backup.ns) as f64 / main.runs as f64)
}

fn missing(accepted: u64, counted: Option<u64>) -> u64 {
    counted.map_or(accepted, |c| accepted.saturating_sub(c))
}

fn extra(accepted: u64, counted: Option<u64>) -> u64 {
    counted.map_or(0, |c| c.saturating_sub(accepted))
}

fn render(command: &str, plan: &Plan, m: &Machine, r: &Results, took: Duration) -> String {
    let f = Figures::of(r);
    let mut out = String::new();
    header(&mut out, command, plan, m, r, took);
    summary(&mut out, &f, r);
    overhead_section(&mut out, m, &f, r);
    kernel_section(&mut out, &f, r);
    completeness_section(&mut out, r);
    profile_section(&mut out, plan, r);
    own_cost_section(&mut out, r);
    reading_section(&mut out, plan, m, r);
    anomalies(&mut out, r);
    out
}

fn header(out: &mut String, command: &str, plan: &Plan, m: &Machine, r: &Results, took: Duration) {
    let secs = took.as_secs();
    let _ = writeln!(
        out,
        "# Benchmarks\n\n\
         Measured on {} by `{command}` ({} min {} s), as root, written by the bench itself.\n\n\
         | | |\n|---|---|\n\
         | machine | {}, {} cores, {:.1} GiB, Debian {} (shared with other work) |\n\
         | kernel | {} (`uname -r`) |\n\
         | observer | release build of {} |\n\
         | server | nginx {} (Debian's nginx-light), {NGINX_WORKERS} workers, `return 200 \"ok\\n\"`, `access_log off` |\n\
         | load | {AB_CLIENTS} × `ab -q -r -n {} -c {AB_CONCURRENCY}` at once ({}): a new connection per request, about {} s per run |\n\
         | peers | {}; `ss` ({}) |\n\n\
         The tools, as run (PORT is nginx's port):\n\n\
         ```sh\n\
         observer --port PORT --metrics-addr 127.0.0.1:0                       # metrics only\n\
         observer --port PORT --metrics-addr 127.0.0.1:0 --events json > /dev/null\n\
         bpftrace -e '{}'\n\
         bpftrace -e '{}'\n\
         bpftrace -e '{}' > /dev/null\n\
         ss -Htan state established '( sport = :PORT )'\n\
         ```\n",
        m.date,
        secs / 60,
        secs % 60,
        m.cpu,
        m.cores,
        m.memory_gib,
        m.debian,
        m.kernel,
        m.observer,
        m.nginx,
        r.per_client,
        m.ab,
        plan.load_secs,
        m.bpftrace,
        m.ss,
        bpftrace_script(Script::Empty, "PORT"),
        bpftrace_script(Script::Count, "PORT"),
        bpftrace_script(Script::Print, "PORT"),
    );
    let _ = writeln!(
        out,
        "All traffic is on loopback. Every comparison alternates a run with nothing attached and a \
         run with the tool attached (A B A B ..., {} pairs per tool, the tools taking turns), and \
         gives the median of the pairs with the min and max. \
         `kernel.bpf_stats_enabled` is 1 throughout (the kernel counts programs' run time only \
         then) and goes back to its previous value after.\n",
        plan.pairs
    );
}

fn summary(out: &mut String, f: &Figures, r: &Results) {
    let ratio = |tool| ratio(r, tool).map_or(f64::NAN, |s| s.median);
    let floor = ratio(Tool::BpftraceEmpty);
    let top = r.readings.levels.last();
    let few = r.readings.levels.first();
    let scrape = |l: Option<&Level>| {
        l.and_then(|l| Spread::of(l.scrape_ms.clone()))
            .map_or(f64::NAN, |s| s.median)
    };
    let (scrape_top, scrape_few) = (scrape(top), scrape(few));
    let held = top.map_or(0, |l| l.held);
    let main = f.main_ns.map_or(f64::NAN, |s| s.median);
    let count = f.count_ns.map_or(f64::NAN, |s| s.median);
    let both = f.both_ns.map_or(f64::NAN, |s| s.median);
    let empty = f.empty_ns.map_or(f64::NAN, |s| s.median);
    let _ = writeln!(
        out,
        "## Goals\n\n| goal | measured | |\n|---|---|---|\n\
         | throughput with observer, metrics only ≥ 0.99 × without | {:.3} (an empty program: {floor:.3}) | {} |\n\
         | throughput with observer `--events json` ≥ 0.97 × without | {:.3} | {} |\n\
         | kernel cost per hit ≤ bpftrace's counting program | both programs {both:.0} ns (main {main:.0} ns) vs {count:.0} ns (an empty program: {empty:.0} ns) | {} |\n\
         | zero lost counts (`opened_total` vs nginx's accepts) | {} missing of {} | {} |\n\
         | scrape < 5 ms at 100,000 connections, flat (within 1 ms of the scrape at {FEW_HELD}) | {scrape_top:.2} ms at {}, {scrape_few:.2} ms at {FEW_HELD} | {} |\n\
         | observer's peak RSS < 32 MiB | {:.1} MiB | {} |\n",
        ratio(Tool::Observer),
        verdict(ratio(Tool::Observer) >= 0.99),
        ratio(Tool::ObserverEvents),
        verdict(ratio(Tool::ObserverEvents) >= 0.97),
        verdict(both <= count),
        thousands(f.missing_counts),
        thousands(f.counted_total),
        verdict(f.missing_counts == 0),
        thousands(held as u64),
        // Flat: within 1 ms of the reading at FEW_HELD connections.
        verdict(held >= 100_000 && scrape_top < 5.0 && (scrape_top - scrape_few).abs() < 1.0),
        f.peak_rss_mib,
        verdict(f.peak_rss_mib < 32.0),
    );
    let noise = f
        .baseline
        .map_or(f64::NAN, |b| (b.max - b.min) / b.median * 100.0);
    let _ = writeln!(
        out,
        "What the misses say. Throughput: the runs with nothing attached alone spread over \
         {noise:.0}% of their median, and bpftrace's empty program, which does nothing, keeps \
         {floor:.3} of it; a 1% goal is below what a shared 2-core machine serving loopback \
         traffic to itself can resolve, where each connection's both ends hit the tracepoint \
         (section 1). Kernel cost: bpftrace's counting program does one map update per kept \
         hit; observer's main program keeps each connection's state (a per-socket map entry, \
         three clock reads for lifetimes, atomic adds to two gauges), and a second program runs \
         on every hit to catch the transitions the kernel skips for the first; with \
         `bpf_stats_enabled` each run also pays the {empty:.0} ns an empty program costs here \
         (section 2).\n"
    );
}

fn overhead_section(out: &mut String, m: &Machine, f: &Figures, r: &Results) {
    let _ = writeln!(
        out,
        "## 1. Overhead on the server\n\n\
         Connections per second nginx served with the tool attached, divided by the rate of the \
         run just before it with nothing attached. \"Expected\" is what the tool's kernel time \
         alone would take from a saturated machine: 1 − (its programs' run time per connection) \
         ÷ ({} cores ÷ the rate without it).\n\n\
         | attached | conn/s without (median) | conn/s with (median) | ratio: median (min–max) | kernel µs per connection | expected ratio |\n\
         |---|---|---|---|---|---|",
        m.cores
    );
    for tool in Tool::ALL {
        let rounds: Vec<&Round> = r.rounds.iter().filter(|x| x.tool == tool).collect();
        let median = |pick: &dyn Fn(&Round) -> Option<f64>| {
            Spread::of(rounds.iter().filter_map(|x| pick(x))).map_or(f64::NAN, |s| s.median)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {:.3} |",
            tool.label(),
            thousands(median(&|x| Some(x.without.rate())) as u64),
            thousands(median(&|x| Some(x.with.rate())) as u64),
            show_spread(ratio(r, tool), |v| format!("{v:.3}")),
            median(&|x| kernel_us_per_conn(x)),
            median(&|x| expected_ratio(x, m.cores)),
        );
    }
    let failed: u64 = r
        .rounds
        .iter()
        .map(|x| x.without.failed + x.with.failed)
        .sum();
    let noise = f
        .baseline
        .map_or(0.0, |b| (b.max - b.min) / b.median * 100.0);
    let floor = ratio(r, Tool::BpftraceEmpty).map_or(f64::NAN, |s| s.median);
    let _ = writeln!(
        out,
        "\nNotes: the runs with nothing attached alone spread over {noise:.0}% of their median \
         ({}): ab, nginx and the kernel's loopback work share the {} cores with whatever else \
         runs on this shared machine, so a ratio's spread, not just its median, says how much is \
         overhead. ab reported {failed} failed requests in all.\n\n\
         \"Expected\" counts only the programs' own run time, and a program costs its server \
         more. bpftrace's programs sit on the classic tracepoint interface: on every hit the \
         kernel fills the tracepoint's record and calls them through perf's tracepoint hook, \
         outside their run time. The empty bpftrace program, which does nothing, measures that: \
         {floor:.3}. observer's programs attach by the tracepoint's BTF type instead: the kernel \
         calls them directly with the socket, and fills no record. Userspace work comes on top, \
         on the same cores: observer's event writer, bpftrace's printer (a perf-buffer record \
         per transition, formatted by bpftrace). With `bpf_stats_enabled` the kernel also reads \
         the clock twice around every program run (observer runs two programs per hit); every \
         tool pays that here, and none would in production.\n\n\
         This is a worst case for every tool: on loopback both ends of each connection run on \
         this machine (the client's transitions hit the tracepoint too), and nginx's `return \
         200` does next to nothing per connection. A server doing real work per connection, with \
         its clients elsewhere, loses a fraction of these figures.\n",
        show_spread(f.baseline, |v| thousands(v as u64)),
        m.cores,
    );
}

fn kernel_us_per_conn(round: &Round) -> Option<f64> {
    let ns: u64 = round.kernel.iter().map(|(_, s)| s.ns).sum();
    (round.accepted > 0).then(|| ns as f64 / round.accepted as f64 / 1e3)
}

/// The ratio the kernel time alone predicts, if the machine was saturated without the tool.
fn expected_ratio(round: &Round, cores: usize) -> Option<f64> {
    let cpu_per_conn_us = cores as f64 * 1e6 / round.without.rate();
    Some(1.0 - kernel_us_per_conn(round)? / cpu_per_conn_us)
}

fn kernel_section(out: &mut String, f: &Figures, r: &Results) {
    let _ = writeln!(
        out,
        "## 2. Kernel cost per tracepoint hit\n\n\
         `run_time_ns / run_cnt` (from `bpftool prog show --json`) over the run with the tool \
         attached. observer's programs are found by the `prog_id:` lines of its fdinfo.\n\n\
         | program | ns per hit: median (min–max) | hits per accepted connection |\n\
         |---|---|---|"
    );
    let rows: [(&str, Tool, Option<Prog>); 9] = [
        (
            "observer main, metrics only",
            Tool::Observer,
            Some(Prog::Main),
        ),
        (
            "observer backup, metrics only",
            Tool::Observer,
            Some(Prog::Backup),
        ),
        (
            "observer, both programs, metrics only",
            Tool::Observer,
            None,
        ),
        (
            "observer, both programs, metrics only, started with 100 connections open",
            Tool::ObserverOpen,
            None,
        ),
        (
            "observer main, `--events json`",
            Tool::ObserverEvents,
            Some(Prog::Main),
        ),
        (
            "observer backup, `--events json`",
            Tool::ObserverEvents,
            Some(Prog::Backup),
        ),
        (
            "bpftrace, empty program",
            Tool::BpftraceEmpty,
            Some(Prog::Bpftrace),
        ),
        (
            "bpftrace, counting",
            Tool::BpftraceCount,
            Some(Prog::Bpftrace),
        ),
        (
            "bpftrace, printf",
            Tool::BpftracePrint,
            Some(Prog::Bpftrace),
        ),
    ];
    for (label, tool, prog) in rows {
        let rounds: Vec<&Round> = r.rounds.iter().filter(|x| x.tool == tool).collect();
        let ns = Spread::of(rounds.iter().filter_map(|x| match prog {
            Some(p) => kernel(x, p)?.ns_per_run(),
            None => both_per_hit(x),
        }));
        let hits = Spread::of(rounds.iter().filter_map(|x| {
            let runs = kernel(x, prog.unwrap_or(Prog::Main))?.runs;
            Some(runs as f64 / x.accepted as f64)
        }));
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            show_spread(ns, |v| format!("{v:.0}")),
            hits.map_or("–".into(), |h| format!("{:.1}", h.median)),
        );
    }
    let _ = writeln!(
        out,
        "\nNotes: every TCP transition on the machine runs every program attached to the \
         tracepoint, the client's side of each connection and other ports included (the filter \
         rejects those), hence about {} hits per connection. The empty program's {} ns is what a \
         run costs as measured here, doing nothing (the call and the clock reads of \
         `bpf_stats_enabled`): a program's own work is its figure minus that. Both of observer's \
         programs run on every hit; the backup only checks whether the main program noted the \
         transition, which makes it about as cheap as the empty program, but it is a second run \
         all the same. With `--events json` the main program also reserves and submits a \
         ring-buffer record per open and close. bpftrace's counting program does one per-CPU \
         map update per kept hit. observer's main program keeps each connection's state: a \
         per-socket map entry (inserted at the handshake, looked up at every transition, \
         deleted at CLOSE), the clock read at the open, at the start of the close and at CLOSE \
         (for lifetimes), and atomic adds to the gauges of the state left and the state \
         entered; that is what gauges per state, lifetimes and exact counts under nesting cost \
         on top of counting transitions.\n",
        f.hits_per_conn
            .map_or("?".into(), |h| format!("{:.0}", h.median)),
        f.empty_ns
            .map_or("?".into(), |e| format!("{:.0}", e.median)),
    );
}

/// One run's count against nginx's.
struct Counted {
    accepted: u64,
    completed: u64,
    counted: Option<u64>,
}

/// A table row summing `runs`.
fn tally_row(label: &str, runs: &[Counted]) -> String {
    let sum = |f: &dyn Fn(&Counted) -> u64| thousands(runs.iter().map(f).sum());
    format!(
        "| {label} | {} | {} | {} | {} | {} | {} |",
        runs.len(),
        sum(&|c| c.accepted),
        sum(&|c| c.completed),
        sum(&|c| c.counted.unwrap_or(0)),
        sum(&|c| missing(c.accepted, c.counted)),
        sum(&|c| extra(c.accepted, c.counted)),
    )
}

fn completeness_section(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## 3. Completeness at the highest rate\n\n\
         The truth is nginx's own count of the connections it accepted (`stub_status` \
         `accepts`, read on a port of its own before and after each run). Summed over the runs \
         with the tool attached:\n\n\
         | counted by | runs | accepted by nginx | completed by ab | counted | missing | extra |\n\
         |---|---|---|---|---|---|---|"
    );
    let rounds = |tool: Tool| -> Vec<Counted> {
        r.rounds
            .iter()
            .filter(|x| x.tool == tool)
            .map(|x| Counted {
                accepted: x.accepted,
                completed: x.with.completed,
                counted: x.counted,
            })
            .collect()
    };
    let checks = |kind: CheckKind, printed: bool| -> Vec<Counted> {
        r.checks
            .iter()
            .filter(|c| c.what == kind)
            .map(|c| Counted {
                accepted: c.accepted,
                completed: c.completed,
                counted: if printed { Some(c.printed) } else { c.opened },
            })
            .collect()
    };
    let mut with_events = rounds(Tool::ObserverEvents);
    with_events.extend(checks(CheckKind::ObserverEvents, false));
    let rows = [
        (
            "observer `opened_total`, metrics only",
            rounds(Tool::Observer),
        ),
        (
            "observer `opened_total`, started with 100 connections open",
            rounds(Tool::ObserverOpen),
        ),
        ("observer `opened_total`, with events", with_events),
        (
            "observer `open` events, JSON lines in a file",
            checks(CheckKind::ObserverEvents, true),
        ),
        (
            "bpftrace counting, `@[ESTABLISHED]`",
            rounds(Tool::BpftraceCount),
        ),
        (
            "bpftrace printf, ESTABLISHED lines in a file",
            checks(CheckKind::BpftracePrint, true),
        ),
    ];
    for (label, runs) in rows {
        let _ = writeln!(out, "{}", tally_row(label, &runs));
    }
    let own = |pick: fn(&OwnCost) -> f64| -> f64 {
        r.rounds
            .iter()
            .filter_map(|x| x.own.as_ref())
            .map(pick)
            .sum()
    };
    let dropped: u64 = r
        .checks
        .iter()
        .filter(|c| c.what == CheckKind::ObserverEvents)
        .map(|c| c.dropped)
        .sum::<u64>()
        + own(|o| o.dropped) as u64;
    let bt_lost: u64 = r
        .checks
        .iter()
        .filter(|c| c.what == CheckKind::BpftracePrint)
        .map(|c| c.dropped)
        .sum();
    let _ = writeln!(
        out,
        "\nNotes: ab's \"Complete requests\" is a little lower than nginx's count: near the end of \
         a run ab opens a few connections it never sends a request on (up to its concurrency \
         minus one); they are real connections, and a counter should count them. \
         Over observer's runs: {} events dropped (`observer_events_dropped_total`, ring buffer \
         full), {} `lost_transition`, {} `stale_socket_retired`, and {} transitions the main \
         program was skipped for and the backup counted. bpftrace reported {bt_lost} lost \
         events (perf buffer full). A figure in \"extra\" means a tool counted more connections \
         than nginx accepted.\n",
        thousands(dropped),
        own(|o| o.lost),
        own(|o| o.retired),
        own(|o| o.backup_counted),
    );
}

fn own_cost_section(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## 4. observer's own cost\n\n\
         CPU time over a run, per million transitions (the run_cnt of observer's main program: \
         every hit of the tracepoint), and the resident set of each observer process at the end \
         of its run: the peak (VmHWM) and the current (VmRSS), from /proc/PID/status.\n\n\
         | observer | CPU s per million transitions: median (min–max) | transitions per run (median) | `process_cpu_seconds_total` increase, all runs | peak RSS, largest | RSS, median |\n\
         |---|---|---|---|---|---|"
    );
    for tool in [Tool::Observer, Tool::ObserverEvents] {
        let rounds: Vec<(&Round, &OwnCost)> = r
            .rounds
            .iter()
            .filter(|x| x.tool == tool)
            .filter_map(|x| Some((x, x.own.as_ref()?)))
            .collect();
        let transitions = |x: &Round| kernel(x, Prog::Main).map_or(0, |k| k.runs);
        let per_million = Spread::of(rounds.iter().filter_map(|(x, o)| {
            let t = transitions(x);
            (t > 0).then(|| o.cpu_secs / t as f64 * 1e6)
        }));
        let runs = Spread::of(rounds.iter().map(|(x, _)| transitions(x) as f64));
        let metric: f64 = rounds.iter().map(|(_, o)| o.cpu_metric).sum();
        let peak = rounds
            .iter()
            .map(|(_, o)| o.peak_rss_kib)
            .max()
            .unwrap_or(0);
        let rss = Spread::of(rounds.iter().map(|(_, o)| o.rss_kib as f64));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {metric:.2} s | {:.1} MiB | {} |",
            tool.label(),
            show_spread(per_million, |v| format!("{v:.3}")),
            runs.map_or("–".into(), |s| thousands(s.median as u64)),
            peak as f64 / 1024.0,
            rss.map_or("–".into(), |s| format!("{:.1} MiB", s.median / 1024.0)),
        );
    }
    let _ = writeln!(
        out,
        "\nNotes: the CPU figure is utime + stime from /proc/PID/stat (10 ms ticks), read with \
         each scrape. With metrics only, observer's userspace does nothing per connection (the \
         kernel counts; a scrape sums per-CPU counters); with events, its reader thread formats \
         and writes a JSON line per open and close. The peak comes from the start: aya parses \
         the kernel's whole BTF (/sys/kernel/btf/vmlinux, {:.1} MiB here) while it loads the \
         programs, and observer hands that memory back once they are loaded; observer's own \
         offsets come from a reader that walks the BTF in place.",
        fs::metadata("/sys/kernel/btf/vmlinux").map_or(0.0, |m| m.len() as f64 / MIB),
    );
    let _ = writeln!(out);
}

fn profile_section(out: &mut String, plan: &Plan, r: &Results) {
    let Some(profiles) = &r.profiles else {
        return;
    };
    let _ = writeln!(
        out,
        "## Where the CPU goes\n\n\
         Not one of the issue's figures, and steadier than the throughput ratios: `perf record -a \
         -e cpu-clock -F 2000` over the middle of a run of the same load with the tool attached, \
         {} runs per tool, the tools taking turns. The share is of all samples on every CPU \
         (nginx, ab, the kernel's TCP work, the tool) that fall in the functions a hit of the \
         tracepoint runs: the tracepoint's iterator, perf's tracepoint hook (the classic \
         interface, bpftrace's), the call into a BTF-typed program (observer's), the programs \
         and the helpers and maps they call. `bpf_stats_enabled` is 0 for these runs, as in \
         production.\n\n\
         | attached | share of CPU samples: median (min–max) | largest functions (one run) |\n\
         |---|---|---|",
        plan.profiles
    );
    for tool in PROFILED {
        let runs: Vec<&Profile> = profiles.iter().filter(|p| p.tool == tool).collect();
        let share = Spread::of(runs.iter().map(|p| p.share));
        let top = runs.first().map_or(String::new(), |p| {
            p.top
                .iter()
                .map(|(s, v)| format!("`{s}` {v:.2}%"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let _ = writeln!(
            out,
            "| {} | {} | {top} |",
            tool.label(),
            show_spread(share, |v| format!("{v:.2}%")),
        );
    }
    let _ = writeln!(out);
}

fn reading_section(out: &mut String, plan: &Plan, m: &Machine, r: &Results) {
    let rd = &r.readings;
    let _ = writeln!(
        out,
        "## 5. Cost of a reading\n\n\
         A `/metrics` scrape (a new connection, `GET /metrics` over HTTP/1.0, timed to the last \
         byte) next to `ss -Htan state established '( sport = :PORT )'` counting the same \
         connections (timed from spawn to the end of its output, as a collector running it \
         pays), taking turns, {0} of each, with connections held open on the watched port of an \
         idle nginx; and {0} scrapes back to back.\n\n\
         | connections held | scrape ms, taking turns with ss: median (min–max) | scrape ms, back to back | `ss` ms: median (min–max) | observer's gauge | ss's count | `observer_kernel_errors_total` |\n\
         |---|---|---|---|---|---|---|",
        plan.reading_pairs
    );
    for l in &rd.levels {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            thousands(l.held as u64),
            show_spread(Spread::of(l.scrape_ms.clone()), |v| format!("{v:.2}")),
            show_spread(Spread::of(l.back_to_back_ms.clone()), |v| format!("{v:.2}")),
            show_spread(Spread::of(l.ss_ms.clone()), |v| format!("{v:.1}")),
            thousands(l.gauge as u64),
            thousands(l.ss_count as u64),
            l.kernel_errors,
        );
    }
    let top = rd.levels.last();
    let short = top.is_some_and(|l| l.held < l.target);
    let _ = writeln!(
        out,
        "\nNotes: observer's gauge is a sum of per-CPU counters, whatever the number of \
         connections; ss walks every socket through sock_diag (its filter runs in the kernel) and \
         prints a line per match. A scrape right after ss pays for the caches ss's walk over \
         every socket left cold; back to back, scrapes show what observer itself does. This machine's hard `RLIMIT_NOFILE` is {} and root here lacks \
         CAP_SYS_RESOURCE, so {} holder processes (`cargo xtask bench --hold`, std TcpStreams \
         bound to 127.0.0.2 and up by socket2) keep the connections, and nginx runs \
         {HOLD_WORKERS} workers with `reuseport`, {} connections each. nginx listens below the \
         ephemeral port range, so that no holder is handed the watched port number as its own: \
         `ss`'s port filter would count such an outbound socket as a connection to that port \
         (observer does not, for the connections it sees being made: it tells a connect() \
         from an accepted connection).{}",
        m.nofile,
        rd.holders,
        thousands(HOLD_WORKER_CONNECTIONS as u64),
        if short {
            " The holders could not open every connection asked for: the table shows how many were held."
        } else {
            ""
        },
    );
    if let Some(s) = &rd.startup {
        let _ = writeln!(
            out,
            "A second observer started while they were held was ready in {:.0} ms (`{}`) and its \
             gauge said {}. After the holders closed them, the first observer's gauge said {}.",
            s.ready_ms,
            s.ready_line
                .trim_start_matches("observer: ready: ")
                .split("; metrics at")
                .next()
                .unwrap_or_default(),
            thousands(s.gauge as u64),
            rd.gauge_after_release,
        );
    }
    if let Some(i) = &rd.idle {
        let _ = writeln!(
            out,
            "\nThe idle scan (`--idle-after`): an observer started with `--port PORT \
             --idle-after {IDLE_AFTER}` (the shortest threshold, so the most frequent scans: one \
             every 250 ms, or 20 times the last scan's CPU time when that is longer) while the {} \
             connections were held, all silent. Its \
             `observer_tcp_connections_idle` said {}. One scan lists every established TCP \
             socket with its `tcp_info` through sock_diag (here {} sockets: both ends of each \
             loopback connection) and keeps the watched ones; its own gauges of the last scan, \
             for {IDLE_SCANS} scans in a row:\n\n\
             | one scan | median (min–max) |\n|---|---|\n\
             | wall time, ms | {} |\n| CPU time, ms | {} |\n\n\
             Over {:.0} s with no scrape, that observer used {:.1}% of one core, and the first \
             observer, without `--idle-after`, {:.1}%. With a threshold of 40 s or more, a scan \
             comes every 10 s (or 20 times its CPU time, when that is longer).",
            thousands(i.held as u64),
            thousands(i.gauge as u64),
            thousands(2 * i.held as u64),
            show_spread(Spread::of(i.wall_ms.clone()), |v| format!("{v:.1}")),
            show_spread(Spread::of(i.cpu_ms.clone()), |v| format!("{v:.1}")),
            i.window_secs,
            i.share * 100.0,
            i.plain_share * 100.0,
        );
    }
    let _ = writeln!(out);
}

fn anomalies(out: &mut String, r: &Results) {
    if r.foreign.is_empty() && r.warnings.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Anomalies\n");
    if !r.foreign.is_empty() {
        let list: Vec<&str> = r.foreign.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "- Programs of someone else were attached to the same tracepoint during some runs: \
             {}. Every run, with or without the tool, paid for them.",
            list.join(", ")
        );
    }
    for w in &r.warnings {
        let _ = writeln!(out, "- {w}");
    }
    let _ = writeln!(out);
}
