//! The guest side of `cargo xtask vm-test`: the tests that run inside a qemu guest booted with one
//! of Debian's kernels, as the child of the initramfs's `/init`. Only busybox, `/bin/observer` and
//! `/bin/tcp-helper` exist there; the network is loopback; the guest has 2 vCPUs. The tests use
//! the test harness (`observer_tests`), which finds observer through OBSERVER_BIN (set by
//! `/init`) and tcp-helper beside this binary, and needs none of the host's tools there.
//!
//! Every test prints exactly one line, `VMT: ok NAME DETAIL` or `VMT: FAIL NAME DETAIL`, and the
//! run ends with `VMT: RESULT P passed, F failed`; `VMT: info ...` lines describe the kernel.
//! Other lines (observer's stderr after a failure, panics) are there for people reading the
//! console log. Every test stops what it started, also when it fails, and every wait is bounded.
//!
//! Parameters come from the kernel command line: `vmt.tests=NAME,NAME` runs only those tests
//! (a name given n times runs n times in a row).
use observer_tests::{
    events::{json_head, text_head},
    net::{Mode, Server, connect_from, connect_n, try_listen_with_backlog},
    observer::{
        self, HOST_MEMLOCK, Launch, Observer, PROGRAM_NAMES, Start, StartError, Stdout,
        observer_programs, prog_fds, tracepoint_links,
    },
    privilege::{CAP_BPF, DOCUMENTED, effective_caps, memlock_limit},
    process::Helper,
    sandbox::Cgroup,
    scrape::Scrape,
    wait_for,
};
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, ExitStatus},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The verifier is slow under emulation (several seconds per program).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a test polls the metrics (or the events) for the expected values.
const SETTLE: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

type Outcome = Result<String, String>;
type Test = (&'static str, fn() -> Outcome);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == AS_USER) {
        exec_as_user(&args[2..]);
    }
    let only = cmdline_tests();
    println!("VMT: info kernel {}", uname_release());
    println!(
        "VMT: info cpus {} memlock {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memlock()
    );
    let tests: [Test; 13] = [
        ("churn_two_observers", churn_two_observers),
        ("timeouts_nest", timeouts_nest),
        ("attach_with_open_connections", attach_with_open_connections),
        ("pid", pid),
        ("cgroup", cgroup),
        ("remote_port", remote_port),
        ("all_listeners", all_listeners),
        ("sigterm_unloads", sigterm_unloads),
        ("skipped_runs_series", skipped_runs_series),
        ("endings", endings),
        ("by_remote", by_remote),
        ("least_privilege", least_privilege),
        ("request_sockets", request_sockets),
    ];
    std::panic::set_hook(Box::new(|info| println!("vm-guest: panic: {info}")));
    raise_nofile();
    warm_up();
    let (mut passed, mut failed) = (0, 0);
    // A name that is no test would leave a test out without a word.
    for name in only.iter().flatten() {
        if !tests.iter().any(|(t, _)| t == name) {
            println!("VMT: FAIL {name} no such test");
            failed += 1;
        }
    }
    // A test named n times runs n times in a row: a rare race is chased in one boot.
    let runs = |name: &str| {
        only.as_ref()
            .map_or(1, |o| o.iter().filter(|t| *t == name).count())
    };
    for (name, test) in tests.iter().flat_map(|t| std::iter::repeat_n(t, runs(t.0))) {
        let test = *test;
        println!("VMT: info running {name}");
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(test).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("panicked: {msg}"))
        });
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Ok(detail) => {
                passed += 1;
                println!("VMT: ok {name} {} ({secs:.1} s)", one_line(&detail));
            }
            Err(detail) => {
                failed += 1;
                println!("VMT: FAIL {name} {} ({secs:.1} s)", one_line(&detail));
            }
        }
        // A test leaves nothing open behind it: files this process holds after one show it.
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        println!("VMT: info open files after {name}: {fds}");
    }
    println!("VMT: RESULT {passed} passed, {failed} failed");
}

/// `vmt.tests=a,b` from the kernel command line.
fn cmdline_tests() -> Option<Vec<String>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("vmt.tests="))
        .map(|v| v.split(',').map(str::to_string).collect())
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " | ")
}

/// One connect() alone, and a second to let the kernel settle, before any test. The first
/// connect() after boot seeds the port-hash secret and then rewrites that code (a static key,
/// turned off from a workqueue); under qemu's emulation a second CPU in that code while it is
/// rewritten crashed 6.12.95 once ("Oops: int3" in __inet_hash_connect), observer or not.
fn warm_up() {
    if let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0")
        && let Ok(addr) = l.local_addr()
    {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    }
    std::thread::sleep(Duration::from_secs(1));
}

/// The guest's init leaves 1,024 open files per process: the timer test holds 600 handshakes
/// while churning and serving, and a test that ran before may hold a few still. The guest is
/// root: room for 65,536.
fn raise_nofile() {
    let limit = libc::rlimit {
        rlim_cur: 65_536,
        rlim_max: 65_536,
    };
    // SAFETY: a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        println!(
            "VMT: info open files not raised: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// This process's soft RLIMIT_MEMLOCK, in KiB or `unlimited`.
fn memlock() -> String {
    match memlock_limit(std::process::id()) {
        Some((soft, _)) if soft == "unlimited" => soft,
        Some((soft, _)) => soft
            .parse::<u64>()
            .map_or_else(|_| "unknown".into(), |b| format!("{}KiB", b / 1024)),
        None => "unknown".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Two observers at once on a churning port (the second is the "second tracer" that makes
/// transitions nest on old kernels), two clients pinned to the two CPUs, refused connections to
/// a remote port, then metrics and events of both checked exactly.
fn churn_two_observers() -> Outcome {
    const P: u16 = 9100;
    const R: u16 = 9101;
    const PER_CPU: usize = 300;
    const REFUSED_PER_CPU: usize = 20;
    let _server = serve(P)?;
    // Nothing may listen on R: make sure the port is free.
    drop(TcpListener::bind((Ipv4Addr::LOCALHOST, R)).map_err(|e| format!("port {R}: {e}"))?);
    let (p, r) = (P.to_string(), R.to_string());
    let mut a = Run::start(
        "A",
        &["--port", &p, "--remote-port", &r, "--events", "json"],
    )?;
    let mut b = Run::start(
        "B",
        &["--port", &p, "--remote-port", &r, "--events", "text"],
    )?;
    let clients: Vec<JoinHandle<(String, usize, usize, usize)>> = (0..2)
        .map(|cpu| {
            std::thread::spawn(move || {
                let pinned = pin_to_cpu(cpu);
                let (ok, _) = connect_n(local(P), PER_CPU);
                let (succeeded, refused) = connect_n(local(R), REFUSED_PER_CPU);
                (pinned, ok, succeeded, refused)
            })
        })
        .collect();
    let mut pins = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for c in clients {
        let (pinned, o, s, f) = c.join().map_err(|_| "a client thread panicked")?;
        pins.push(pinned);
        ok += o;
        refused += f;
        if s != 0 {
            return Err(format!(
                "{s} connections to port {R} succeeded: something listens"
            ));
        }
    }
    let opens = 2 * PER_CPU;
    let fails = 2 * REFUSED_PER_CPU;
    let clients = format!("clients: {ok}/{opens} connected, {refused}/{fails} refused ({pins:?})");
    if ok != opens || refused != fails {
        return Err(clients);
    }
    let expect = |m: &Metrics| {
        let mut c = vec![
            Cmp::new(
                "opened",
                m.conn("observer_tcp_connections_opened_total", "inbound", P),
                opens,
            ),
            Cmp::new(
                "closed",
                m.conn("observer_tcp_connections_closed_total", "inbound", P),
                opens,
            ),
            Cmp::new(
                "failed",
                m.conn("observer_tcp_connections_failed_total", "outbound", R),
                fails,
            ),
            // Every handshake completed: none failed, whether as a socket or a request socket.
            Cmp::new(
                "failed_inbound",
                // No series is a count of 0: nothing failed.
                Some(
                    m.conn("observer_tcp_connections_failed_total", "inbound", P)
                        .unwrap_or(0.0),
                ),
                0,
            ),
            Cmp::new("sum|gauges|", m.gauges_abs_sum(P), 0),
        ];
        c.extend(common_health(m));
        c
    };
    let mut report = vec![clients];
    let mut bad = false;
    for o in [&a, &b] {
        let (good, detail) = o.settle(expect);
        bad |= !good;
        report.push(format!("{}: {detail}", o.label));
    }
    // Events reach stdout within 50 ms of their ring buffer record; wait for them before stopping.
    let want = (opens, opens, fails);
    let count = |o: &Run| count_events(&o.stdout_lines(), o.label == "B", P, R);
    wait_for(SETTLE, || {
        (count(&a).0 == want && count(&b).0 == want).then_some(())
    });
    let info: Vec<String> = [&a, &b]
        .iter()
        .filter_map(|o| o.scrape().ok())
        .map(|m| kernel_report(&m))
        .collect();
    for o in [&mut a, &mut b] {
        match o.stop() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                bad = true;
                report.push(format!("{} exited with {s} after SIGTERM", o.label));
            }
            Err(e) => {
                bad = true;
                report.push(e);
            }
        }
        let ((open, close, failed), other) = count(o);
        let format = if o.label == "B" { "text" } else { "json" };
        let good = (open, close, failed) == want && other.is_empty();
        bad |= !good;
        report.push(format!(
            "{} {format} events: open={open}/{opens} close={close}/{opens} failed={failed}/{fails} other={}/0{}{}",
            o.label,
            other.len(),
            if good { "" } else { " MISMATCH" },
            other.iter().take(3).map(|l| format!(" [{l}]")).collect::<String>()
        ));
    }
    report.push(format!("[{}]", info.join("; ")));
    if bad {
        report.push(a.stderr_summary());
        report.push(b.stderr_summary());
        Err(report.join("; "))
    } else {
        Ok(report.join("; "))
    }
}

/// Handshakes that time out end in CLOSE from the TCP timer, in softirq context, which
/// interrupts whatever the CPU runs: with churn keeping both CPUs busy in the program's
/// process-context runs, some of those CLOSEs come in the middle of one. 5.10 then runs the
/// program nested in itself, newer kernels skip it and the backup takes the transition. Every
/// count stays exact; where the kernel counts no skipped runs (5.10), nesting must be seen to
/// have happened, or the test proved nothing.
fn timeouts_nest() -> Outcome {
    const P: u16 = 9800;
    const Q: u16 = 9801;
    const N: usize = 600;
    const ROUNDS: usize = 4;
    let _server = serve(P)?;
    let (_blackhole, _filler) = full_listener(Q)?;
    let (p, q) = (P.to_string(), Q.to_string());
    // Two observers, the second streaming events: runs of the programs take twice as long,
    // twice the chance that a timer's transition comes in the middle of one.
    let o = Run::start("A", &["--port", &p, "--remote-port", &q])?;
    let second = Run::start(
        "B",
        &["--port", &p, "--remote-port", &q, "--events", "json"],
    )?;
    let churn = Churn::start(P);
    // Spread over two seconds, so that their timers fire one by one into the churn. A run of
    // the program caught by one is a matter of chance: rounds go on (at most ROUNDS) until the
    // kernel shows one, nested (5.10) or skipped and taken by the backup.
    let counts_skips = prog_fds(o.pid())
        .iter()
        .any(|p| p.recursion_misses.is_some());
    let caught = |m: &Metrics| {
        let total = |name: &str| m.samples(name).iter().map(|(_, v)| v).sum::<f64>();
        if counts_skips {
            total("observer_kernel_backup_transitions_total")
        } else {
            total("observer_kernel_nested_runs_total")
        }
    };
    let mut rounds = 0;
    let mut failures = None;
    while rounds < ROUNDS {
        rounds += 1;
        let mut pending = Vec::new();
        for _ in 0..N {
            pending.push(syn_that_times_out(Q)?);
            std::thread::sleep(Duration::from_micros(2_000_000 / N as u64));
        }
        let timed_out = wait_for_timeouts(&pending, Duration::from_secs(30));
        if timed_out != N {
            failures = Some(format!(
                "round {rounds}: {timed_out} of {N} handshakes timed out"
            ));
            break;
        }
        if [&o, &second]
            .iter()
            .any(|x| x.scrape().is_ok_and(|m| caught(&m) > 0.0))
        {
            break;
        }
    }
    let churned = churn.stop();
    if let Some(f) = failures {
        return Err(f);
    }
    let timed_out = rounds * N;
    let expect = |m: &Metrics| {
        let mut c = opened_closed(m, "inbound", P, churned);
        c.push(Cmp::new(
            "failed{outbound,Q}",
            m.conn("observer_tcp_connections_failed_total", "outbound", Q),
            timed_out,
        ));
        // The connection that fills the queue was open before observer: counted by the snapshot.
        c.push(Cmp::new(
            "established{outbound,Q}",
            m.established("outbound", Q),
            1,
        ));
        for (labels, v) in m.samples("observer_kernel_errors_total") {
            let reason = labels.get("reason").cloned().unwrap_or_default();
            if !healed(&reason) {
                c.push(Cmp {
                    what: format!("errors{{{reason}}}"),
                    got: Some(v),
                    want: 0.0,
                });
            }
        }
        c
    };
    let mut report = vec![format!(
        "{churned} churned, {timed_out} timed out in {rounds} rounds"
    )];
    let mut bad = false;
    let mut any_caught = false;
    for obs in [&o, &second] {
        let (good, detail) = obs.settle(expect);
        bad |= !good;
        let m = obs.scrape().map_err(|e| obs.failure(&e))?;
        let total = |name: &str| m.samples(name).iter().map(|(_, v)| v).sum::<f64>();
        any_caught |= caught(&m) > 0.0;
        report.push(format!(
            "{}: {detail} nested_runs={} backup_transitions={} healed=[{}]",
            obs.label,
            total("observer_kernel_nested_runs_total"),
            total("observer_kernel_backup_transitions_total"),
            healed_report(&m)
        ));
    }
    let detail = report.join("; ");
    if bad {
        return Err(o.failure(&detail));
    }
    if !any_caught {
        return Err(format!(
            "{detail}: no run was caught by a timer's transition, so nothing was tested"
        ));
    }
    Ok(detail)
}

/// Connections opened and closed one after the other to a port, from a client pinned to each
/// CPU, until stopped: by `stop`, or when dropped (a test that returns early leaves nothing
/// churning into the next).
struct Churn {
    done: Arc<AtomicBool>,
    threads: Vec<JoinHandle<usize>>,
}

impl Churn {
    fn start(port: u16) -> Churn {
        let done = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|cpu| {
                let done = done.clone();
                std::thread::spawn(move || {
                    pin_to_cpu(cpu);
                    let mut n = 0;
                    while !done.load(Ordering::Relaxed) {
                        n += connect_n(local(port), 1).0;
                    }
                    n
                })
            })
            .collect();
        Churn { done, threads }
    }

    /// Stops the clients; how many connections they made.
    fn stop(mut self) -> usize {
        self.halt()
    }

    fn halt(&mut self) -> usize {
        self.done.store(true, Ordering::Relaxed);
        self.threads.drain(..).map(|t| t.join().unwrap_or(0)).sum()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A listener on `port` whose accept queue is full (backlog 0, one connection waiting, never
/// accepted): the kernel drops every further SYN. Returns it and the connection that fills it.
fn full_listener(port: u16) -> Result<(TcpListener, TcpStream), String> {
    let l = try_listen_with_backlog(local(port), 0)?;
    let filler =
        TcpStream::connect(local(port)).map_err(|e| format!("filling the queue of {port}: {e}"))?;
    Ok((l, filler))
}

// Handshakes that time out: only this test makes them, with raw sockets the harness has no
// other use for.
/// A non-blocking connect to `port` that gives up after one retry of its SYN (about 3 s).
fn syn_that_times_out(port: u16) -> Result<OwnedFd, String> {
    let err = || std::io::Error::last_os_error().to_string();
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return Err(err());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return Err(format!("TCP_SYNCNT: {}", err()));
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(format!("connect to {port} did not wait: {}", err()));
        }
        Ok(fd)
    }
}

/// How many of the connects ended with ETIMEDOUT within `limit`.
fn wait_for_timeouts(fds: &[OwnedFd], limit: Duration) -> usize {
    let error = |fd: &OwnedFd| {
        let mut e: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reads an int option of a socket this process owns.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut e as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        e
    };
    let mut timed_out = vec![false; fds.len()];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && timed_out.iter().any(|t| !t) {
        for (fd, t) in fds.iter().zip(timed_out.iter_mut()) {
            if !*t && error(fd) == libc::ETIMEDOUT {
                *t = true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    timed_out.iter().filter(|t| **t).count()
}

/// Connections open before observer starts are counted by its snapshot, and their close later.
fn attach_with_open_connections() -> Outcome {
    const P2: u16 = 9200;
    let mut h = Helper::try_start()?;
    h.expect(
        &format!("listen 127.0.0.1:{P2}"),
        &format!("listening {P2}"),
    )?;
    h.expect(&format!("hold 127.0.0.1:{P2} 7"), "holding 7")?;
    let o = Run::start("", &["--port", &P2.to_string()])?;
    let first = o.scrape().map_err(|e| o.failure(&e))?;
    let established = first.established("inbound", P2);
    let first_cmp = [Cmp::new("first scrape established", established, 7)];
    if !all_match(&first_cmp) {
        return Err(o.failure(&describe(&first_cmp)));
    }
    h.expect("release", "released 7")?;
    let (good, detail) = o.settle(|m| {
        vec![
            Cmp::new(
                "closed",
                m.conn("observer_tcp_connections_closed_total", "inbound", P2),
                7,
            ),
            Cmp::new("established", m.established("inbound", P2), 0),
            Cmp::new(
                "opened",
                m.conn("observer_tcp_connections_opened_total", "inbound", P2),
                0,
            ),
        ]
    });
    let detail = format!("{}; then {detail}", describe(&first_cmp));
    if good {
        Ok(detail)
    } else {
        Err(o.failure(&detail))
    }
}

/// `--pid X`: the port X listens on, and the connections X opens.
fn pid() -> Outcome {
    const P3: u16 = 9300;
    const P: u16 = 9301;
    let mut x = Helper::try_start()?;
    x.expect(
        &format!("listen 127.0.0.1:{P3}"),
        &format!("listening {P3}"),
    )?;
    let _server = serve(P)?;
    let o = Run::start("", &["--pid", &x.pid().to_string()])?;
    let detail = process_target_test(&o, &mut x, P3, P)?;
    // A child X forks now is a target too (the fork program).
    let reply = x.try_ask("spawn")?;
    if !reply.starts_with("spawned 0 ") {
        return Err(format!("helper said `{reply}` to spawn"));
    }
    x.expect(&format!("child 0 connect 127.0.0.1:{P} 4"), "connected 4 0")?;
    let (good, child) = o.settle(|m| opened_closed(m, "outbound", P, 9));
    let detail = format!("{detail}; with a child forked since: {child}");
    if good {
        Ok(detail)
    } else {
        Err(o.failure(&detail))
    }
}

/// `--cgroup DIR`: a process moved into DIR before it listens and connects.
fn cgroup() -> Outcome {
    const P: u16 = 9401;
    let dir = Cgroup::try_new()?;
    let mut h = Helper::try_start()?;
    dir.try_add(h.pid())?;
    let reply = h.try_ask("listen 127.0.0.1:0")?;
    let port: u16 = reply
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("helper said `{reply}` to listen"))?;
    let _server = serve(P)?;
    let o = Run::start("", &["--cgroup", &dir.path.to_string_lossy()])?;
    let r = process_target_test(&o, &mut h, port, P);
    drop(o);
    drop(h);
    r
}

/// The common part of `pid` and `cgroup`: 10 inbound connections to the target's port `inbound`,
/// then 5 connections from the target to `outbound` (served by this process).
fn process_target_test(o: &Run, target: &mut Helper, inbound: u16, outbound: u16) -> Outcome {
    let detail_in = connections_counted(o, inbound, "inbound")?;
    target.expect(&format!("connect 127.0.0.1:{outbound} 5"), "connected 5 0")?;
    let (good, detail_out) = o.settle(|m| opened_closed(m, "outbound", outbound, 5));
    let detail = format!("{detail_in}; {detail_out}");
    if good {
        Ok(detail)
    } else {
        Err(o.failure(&detail))
    }
}

/// `--remote-port P`: outbound connections to P from any process.
fn remote_port() -> Outcome {
    const P: u16 = 9500;
    let _server = serve(P)?;
    let o = Run::start("", &["--remote-port", &P.to_string()])?;
    connections_counted(&o, P, "outbound")
}

/// No target: every listening port, including one that appears after observer is ready.
fn all_listeners() -> Outcome {
    const P5: u16 = 9600;
    let o = Run::start("", &[])?;
    let mut h = Helper::try_start()?;
    h.expect(
        &format!("listen 127.0.0.1:{P5}"),
        &format!("listening {P5}"),
    )?;
    connections_counted(&o, P5, "inbound")
}

/// Makes 10 connections to 127.0.0.1:`port` and waits until `o` counts each opened and closed,
/// in `direction`.
fn connections_counted(o: &Run, port: u16, direction: &str) -> Outcome {
    let (ok, _) = connect_n(local(port), 10);
    if ok != 10 {
        return Err(format!("only {ok} of 10 connections to {port} succeeded"));
    }
    let (good, detail) = o.settle(|m| opened_closed(m, direction, port, 10));
    if good {
        Ok(detail)
    } else {
        // What the kernel skipped and healed tells a lost connection from a filter's miss.
        let kernel = o.scrape().map_or_else(|e| e, |m| kernel_report(&m));
        Err(o.failure(&format!("{detail} [{kernel}]")))
    }
}

/// How connections end, read from the socket at CLOSE on this kernel: 3 connects to a closed
/// port are failed `refused`; one connection that sends 1,000 bytes and closes first is closed
/// `by=remote` on the server's side, whose close event says it received exactly those bytes.
fn endings() -> Outcome {
    const P: u16 = 9900;
    const R: u16 = 9901;
    const SENT: usize = 1000;
    let _server = serve(P)?;
    let o = Run::start(
        "",
        &[
            "--port",
            &P.to_string(),
            "--remote-port",
            &R.to_string(),
            "--events",
            "json",
        ],
    )?;
    let (_, refused) = connect_n(local(R), 3);
    {
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, P)).map_err(|e| e.to_string())?;
        c.write_all(&[7u8; SENT]).map_err(|e| e.to_string())?;
        // The client's FIN first; the server reads to EOF, then closes.
        c.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
    let port = |p: u16| p.to_string();
    let (good, detail) = o.settle(|m| {
        vec![
            Cmp::new("connects refused", Some(refused as f64), 3),
            Cmp::new(
                "failed{refused}",
                m.value(
                    "observer_tcp_connections_failed_total",
                    &[
                        ("direction", "outbound"),
                        ("port", &port(R)),
                        ("reason", "refused"),
                    ],
                ),
                3,
            ),
            Cmp::new(
                "closed_by{remote}",
                m.value(
                    "observer_tcp_connections_closed_by_total",
                    &[
                        ("direction", "inbound"),
                        ("port", &port(P)),
                        ("by", "remote"),
                    ],
                ),
                1,
            ),
        ]
    });
    if !good {
        return Err(o.failure(&detail));
    }
    // Events reach stdout within 50 ms of their record.
    std::thread::sleep(Duration::from_millis(500));
    let events: Vec<serde_json::Value> = o
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let failed = events
        .iter()
        .filter(|e| e["type"] == "failed" && e["reason"] == "refused")
        .count();
    let close = events
        .iter()
        .find(|e| e["type"] == "close" && e["port"] == P)
        .cloned()
        .unwrap_or_default();
    let got = (
        close["closed_by"].as_str().unwrap_or("-").to_string(),
        close["reason"].as_str().unwrap_or("-").to_string(),
        close["bytes_received"].as_u64(),
    );
    let detail = format!(
        "{detail}; events: {failed} failed refused, close by={} reason={} received={:?}",
        got.0, got.1, got.2
    );
    if failed == 3 && got == ("remote".into(), "normal".into(), Some(SENT as u64)) {
        Ok(detail)
    } else {
        Err(o.failure(&detail))
    }
}

/// Inbound handshakes that fail while still request sockets, counted by the programs on the
/// request socket destructors. A listener with TCP_DEFER_ACCEPT keeps each handshake a request
/// socket until the client's data comes (its bare ACK is dropped): 10 clients that connect and
/// reset without a byte are 10 failed handshakes, `reset`, each with a failed event; 5 that send
/// a byte become connections, accepted and closed, and fail nothing.
fn request_sockets() -> Outcome {
    const P: u16 = 9960;
    let listener = TcpListener::bind(local(P)).map_err(|e| format!("binding {P}: {e}"))?;
    let secs: libc::c_int = 30;
    // SAFETY: a valid socket and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "TCP_DEFER_ACCEPT: {}",
            std::io::Error::last_os_error()
        ));
    }
    let o = Run::start("", &["--port", &P.to_string(), "--events", "json"])?;
    let said = observer_tests::observer::warnings(&o.stderr()).len()
        + usize::from(!o.counts_request_sockets());
    if said != 0 {
        return Err(o.failure("observer warned at start"));
    }
    let resetting: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(local(P)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("connecting: {e}"))?;
    for c in &resetting {
        socket2::SockRef::from(c)
            .set_linger(Some(Duration::ZERO))
            .map_err(|e| format!("SO_LINGER: {e}"))?;
    }
    // One SYN more, while the 10 are held, is dropped: with SYN cookies off, a listener whose
    // SYN queue is three-quarters full (of tcp_max_syn_backlog) makes a request socket, then
    // frees it unanswered (on every kernel of the matrix). No handshake was held for it: it
    // must not count as failed (as a duplicate SYN's request socket must not).
    let dropped = syn_dropped(local(P))?;
    let early = o.scrape().map_err(|e| o.failure(&e))?;
    let early_failed = early
        .conn("observer_tcp_connections_failed_total", "inbound", P)
        .unwrap_or(0.0);
    if early_failed != 0.0 {
        return Err(o.failure(&format!(
            "failed={early_failed}/0 after {dropped} SYN dropped, before any handshake failed"
        )));
    }
    drop(resetting);
    for _ in 0..5 {
        let mut c = TcpStream::connect(local(P)).map_err(|e| format!("connecting: {e}"))?;
        c.write_all(b"x").map_err(|e| e.to_string())?;
        let (accepted, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        drop(accepted);
    }
    let port = P.to_string();
    let (good, detail) = o.settle(|m| {
        vec![
            Cmp::new(
                "failed{reset}",
                m.value(
                    "observer_tcp_connections_failed_total",
                    &[
                        ("direction", "inbound"),
                        ("port", &port),
                        ("reason", "reset"),
                    ],
                ),
                10,
            ),
            Cmp::new(
                "failed",
                m.conn("observer_tcp_connections_failed_total", "inbound", P),
                10,
            ),
            Cmp::new(
                "opened",
                m.value(
                    "observer_tcp_connections_opened_total",
                    &[("direction", "inbound"), ("port", &port)],
                ),
                5,
            ),
            Cmp::new(
                "closed",
                m.value(
                    "observer_tcp_connections_closed_total",
                    &[("direction", "inbound"), ("port", &port)],
                ),
                5,
            ),
        ]
    });
    if !good {
        return Err(o.failure(&detail));
    }
    // Events reach stdout within 50 ms of their record.
    std::thread::sleep(Duration::from_millis(500));
    let failed = o
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "failed" && e["reason"] == "reset" && e["port"] == P)
        .count();
    let detail = format!("{detail}; {failed} failed events; {dropped} SYN dropped: failed=0/0");
    if failed == 10 {
        Ok(detail)
    } else {
        Err(o.failure(&detail))
    }
}

/// Sends one SYN to `to`, a listener holding 10 request sockets, with SYN cookies off and a
/// SYN queue of 12 (`tcp_max_syn_backlog`), from an address no connection came from (a peer
/// with a measured RTT would be let in), and waits until the listener dropped it. Returns how
/// many SYNs it dropped (the client's retransmits may add some), after closing the client.
fn syn_dropped(to: SocketAddr) -> Result<u64, String> {
    let _cookies = Sysctl::set("net/ipv4/tcp_syncookies", "0")?;
    let _queue = Sysctl::set("net/ipv4/tcp_max_syn_backlog", "12")?;
    let before = listen_drops()?;
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    let from = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 77), 0));
    client
        .bind(&from.into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    client
        .set_nonblocking(true)
        .map_err(|e| format!("O_NONBLOCK: {e}"))?;
    match client.connect(&to.into()) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        other => return Err(format!("a SYN to a full SYN queue: connect gave {other:?}")),
    }
    // The request socket is freed before the drop is counted.
    let dropped = wait_for(Duration::from_secs(5), || {
        let n = listen_drops().ok()? - before;
        (n > 0).then_some(n)
    });
    // Closing a client still in SYN_SENT sends nothing.
    drop(client);
    dropped.ok_or_else(|| "the listener did not drop the SYN (ListenDrops unchanged)".into())
}

/// TcpExt ListenDrops of /proc/net/netstat: SYNs and ACKs a listener dropped.
fn listen_drops() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/net/netstat").map_err(|e| e.to_string())?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next(), lines.next());
    names
        .zip(values)
        .and_then(|(n, v)| {
            let at = n.split_whitespace().position(|w| w == "ListenDrops")?;
            v.split_whitespace().nth(at)?.parse().ok()
        })
        .ok_or_else(|| "no TcpExt ListenDrops in /proc/net/netstat".into())
}

/// A sysctl set for a test's life, its value before restored when dropped.
struct Sysctl {
    path: String,
    was: String,
}

impl Sysctl {
    fn set(key: &str, value: &str) -> Result<Sysctl, String> {
        let path = format!("/proc/sys/{key}");
        let was = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        std::fs::write(&path, value).map_err(|e| format!("{path}: {e}"))?;
        Ok(Sysctl {
            path,
            was: was.trim().to_string(),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.was);
    }
}

/// SIGTERM: exit 0 promptly, and no program of observer's stays loaded in the kernel.
fn sigterm_unloads() -> Outcome {
    const P: u16 = 9700;
    let mut o = Run::start("", &["--port", &P.to_string()])?;
    let before = observer_programs()?;
    if before.len() < PROGRAM_NAMES.len() {
        return Err(o.failure(&format!(
            "while running, the kernel lists {before:?}, not all of {PROGRAM_NAMES:?}"
        )));
    }
    let t0 = Instant::now();
    let status = o.stop()?;
    let exit_secs = t0.elapsed().as_secs_f64();
    if !status.success() {
        return Err(o.failure(&format!("exit status {status} after SIGTERM")));
    }
    let t1 = Instant::now();
    let mut left = Ok(before.clone());
    wait_for(Duration::from_secs(5), || {
        left = observer_programs();
        left.as_ref().is_ok_and(Vec::is_empty).then_some(())
    });
    let left = left?;
    if left.is_empty() {
        Ok(format!(
            "{} programs loaded while running; exit 0 {exit_secs:.1} s after SIGTERM; none left after {:.1} s",
            before.len(),
            t1.elapsed().as_secs_f64()
        ))
    } else {
        Err(format!(
            "exit 0 after SIGTERM, but 5 s later the kernel still has {left:?}"
        ))
    }
}

/// `observer_kernel_skipped_runs_total` is there exactly when the kernel counts skipped runs
/// (`recursion_misses:` in the programs' fdinfo, from 5.12), and so is the backup program on the
/// tracepoint: a kernel that counts none has no recursion guard for these programs, and the
/// main program alone takes every transition (nested, on 5.10).
fn skipped_runs_series() -> Outcome {
    const P: u16 = 9800;
    let o = match Run::start("", &["--port", &P.to_string()]) {
        Ok(o) => o,
        Err(e) => {
            println!("VMT: info recursion_misses unknown (observer did not load)");
            return Err(e);
        }
    };
    let fds = prog_fds(o.pid());
    let (progs, misses) = (fds.len(), fds.iter().any(|p| p.recursion_misses.is_some()));
    println!(
        "VMT: info recursion_misses {}",
        if misses { "present" } else { "absent" }
    );
    if progs == 0 {
        return Err(o.failure("no eBPF program among observer's file descriptors"));
    }
    let m = o.scrape().map_err(|e| o.failure(&e))?;
    let series = m.samples("observer_kernel_skipped_runs_total").len();
    let links = tracepoint_links(o.pid()).len();
    let detail = format!(
        "{progs} program fds, recursion_misses {}, {series} observer_kernel_skipped_runs_total series, \
         {links} programs on inet_sock_set_state",
        if misses { "present" } else { "absent" }
    );
    if misses == (series > 0) && links == if misses { 2 } else { 1 } {
        Ok(detail)
    } else {
        Err(format!(
            "{detail} (want the series {}, and {} programs)",
            if misses { "present" } else { "absent" },
            if misses { 2 } else { 1 }
        ))
    }
}

/// Least privilege on this kernel: observer run as user nobody with only the README's
/// capabilities, under a host's memlock limit (64 KiB soft and hard: the kernel's default before
/// 5.16, Debian 11's and Amazon Linux 2's). Before 5.11 the kernel charges BPF maps and programs
/// to that limit, and observer's need far more: there it must lift the limit (CAP_SYS_RESOURCE,
/// dropped once started) or be started with none (systemd's `LimitMEMLOCK=infinity`), and
/// without either say so in one line and load nothing. From 5.11 (memory cgroup accounting) the
/// limit does not matter. Each run counts a server exactly, and keeps only CAP_BPF.
fn least_privilege() -> Outcome {
    const P: u16 = 9900;
    let charged = charges_memlock(&uname_release());
    let mut h = Helper::try_start()?;
    h.expect(&format!("listen 127.0.0.1:{P}"), &format!("listening {P}"))?;
    let port = P.to_string();
    let pid = h.pid().to_string();
    let mut details = vec![format!(
        "kernel {} memlock",
        if charged {
            "charges"
        } else {
            "does not charge"
        }
    )];
    let mut documented: Vec<&str> = DOCUMENTED.to_vec();
    if charged {
        documented.push("sys_resource");
    }
    let runs: [(&str, &[&str], Unprivileged); 4] = [
        (
            "--port, documented set, 64 KiB",
            &["--port", &port],
            Unprivileged::new(&documented, HOST_LIMIT),
        ),
        (
            "--pid, documented set, 64 KiB",
            &["--pid", &pid],
            Unprivileged::new(&documented, HOST_LIMIT),
        ),
        // systemd's LimitMEMLOCK=infinity.
        (
            "--port, no CAP_SYS_RESOURCE, memlock unlimited",
            &["--port", &port],
            Unprivileged::new(&DOCUMENTED, (None, None)),
        ),
        // A soft limit that may be raised without a capability.
        (
            "--port, no CAP_SYS_RESOURCE, 64 KiB soft, unlimited hard",
            &["--port", &port],
            Unprivileged::new(&DOCUMENTED, (Some(HOST_MEMLOCK), None)),
        ),
    ];
    for (what, args, user) in runs {
        let o = Run::start_as(what, args, Some(&user))?;
        let caps = effective_caps(o.pid());
        let charge = observer::bpf_memory(o.pid());
        let limit = memlock_limit(o.pid())
            .map_or_else(|| "unknown".into(), |(soft, hard)| format!("{soft}:{hard}"));
        let counted = connections_counted(&o, P, "inbound").map_err(|e| format!("{what}: {e}"))?;
        if caps != Some(CAP_BPF) {
            return Err(o.failure(&format!(
                "{what}: CapEff {caps:x?} once started, not CAP_BPF alone"
            )));
        }
        // A lifted limit is put back once everything is loaded.
        let given = user.memlock_text();
        if limit != given {
            return Err(o.failure(&format!(
                "{what}: memlock limit {limit} once started, not {given} as given"
            )));
        }
        details.push(format!(
            "{what}: {counted}, CapEff CAP_BPF, {} KiB of maps and programs, limit now {limit}",
            charge / 1024
        ));
    }
    // Without CAP_SYS_RESOURCE under the host's limit: one line naming it where the kernel
    // charges memlock, nothing loaded; counted exactly where it does not.
    let what = "--port, no CAP_SYS_RESOURCE, 64 KiB";
    let user = Unprivileged::new(&DOCUMENTED, HOST_LIMIT);
    match (
        charged,
        Run::start_as(what, &["--port", &port], Some(&user)),
    ) {
        (false, Ok(o)) => {
            let counted = connections_counted(&o, P, "inbound")?;
            details.push(format!("{what}: {counted}"));
        }
        (false, Err(e)) => return Err(e),
        (true, Ok(o)) => return Err(o.failure(&format!("{what}: started"))),
        (true, Err(e)) => {
            let left = observer_programs()?;
            // One line of observer's (more are joined by " / "), exit 1.
            if !e.contains("exited (exit status: 1)")
                || !e.contains("CAP_SYS_RESOURCE (to lift RLIMIT_MEMLOCK")
                || e.contains(" / ")
                || !left.is_empty()
            {
                return Err(format!("{what}: {e}; programs left: {left:?}"));
            }
            details.push(format!(
                "{what}: refused, naming CAP_SYS_RESOURCE, nothing loaded"
            ));
        }
    }
    Ok(details.join("; "))
}

/// Whether this kernel charges BPF maps and programs to RLIMIT_MEMLOCK: before 5.11. (The
/// test's own oracle, by release; observer probes the kernel instead.)
fn charges_memlock(release: &str) -> bool {
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (5, 11)
}

// ---------------------------------------------------------------------------------------------
// Checks on a scrape.

/// One expected value and what the scrape had.
struct Cmp {
    what: String,
    got: Option<f64>,
    want: f64,
}

impl Cmp {
    fn new(what: &str, got: Option<f64>, want: usize) -> Cmp {
        Cmp {
            what: what.to_string(),
            got,
            want: want as f64,
        }
    }

    fn ok(&self) -> bool {
        self.got == Some(self.want)
    }
}

fn all_match(c: &[Cmp]) -> bool {
    c.iter().all(Cmp::ok)
}

fn describe(c: &[Cmp]) -> String {
    c.iter()
        .map(|c| {
            format!(
                "{}={}/{}{}",
                c.what,
                fmt_opt(c.got),
                c.want,
                if c.ok() { "" } else { "(MISMATCH)" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "none".into(), |v| v.to_string())
}

fn opened_closed(m: &Metrics, direction: &str, port: u16, n: usize) -> Vec<Cmp> {
    vec![
        Cmp::new(
            &format!("opened{{{direction},{port}}}"),
            m.conn("observer_tcp_connections_opened_total", direction, port),
            n,
        ),
        Cmp::new(
            &format!("closed{{{direction},{port}}}"),
            m.conn("observer_tcp_connections_closed_total", direction, port),
            n,
        ),
    ]
}

/// Whether a kernel error series counts transitions the kernel did not deliver and observer
/// healed: from Linux 7.0 tracepoint programs are preemptible and lose deliveries (both held by
/// preempted runs), so these move there while every count and event stays exact, which the
/// tests check. Before 7.0 nothing is lost, and every error series must stay 0.
fn healed(reason: &str) -> bool {
    let major: u32 = uname_release()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    major >= 7
        && matches!(
            reason,
            "lost_transition" | "stale_socket_retired" | "late_open_counted"
        )
}

/// `--by-remote` (with `--events`, the program's largest form): 3 connections held from before
/// start, then 6 from 127.0.0.2 and 4 from 127.0.0.3, each counted under its client, and every
/// count back to 0 when they close.
fn by_remote() -> Outcome {
    const P: u16 = 9950;
    let mut h = Helper::try_start()?;
    h.expect(&format!("listen 127.0.0.1:{P}"), &format!("listening {P}"))?;
    h.expect(&format!("hold 127.0.0.1:{P} 3"), "holding 3")?;
    let o = Run::start(
        "",
        &["--port", &P.to_string(), "--by-remote", "--events", "json"],
    )?;
    let per = |m: &Metrics, remote: &str| {
        m.value(
            "observer_tcp_connections_by_remote",
            &[("port", &P.to_string()), ("remote", remote)],
        )
    };
    let first = o.scrape().map_err(|e| o.failure(&e))?;
    let first_cmp = [Cmp::new(
        "first scrape 127.0.0.1",
        per(&first, "127.0.0.1"),
        3,
    )];
    if !all_match(&first_cmp) {
        return Err(o.failure(&describe(&first_cmp)));
    }
    let mut held = Vec::new();
    for (src, n) in [([127, 0, 0, 2], 6), ([127, 0, 0, 3], 4)] {
        for _ in 0..n {
            held.push(connect_from(
                SocketAddr::from((Ipv4Addr::from(src), 0)),
                SocketAddr::from((Ipv4Addr::LOCALHOST, P)),
            ));
        }
    }
    let (good, detail) = o.settle(|m| {
        vec![
            Cmp::new("established", m.established("inbound", P), 13),
            Cmp::new("127.0.0.1", per(m, "127.0.0.1"), 3),
            Cmp::new("127.0.0.2", per(m, "127.0.0.2"), 6),
            Cmp::new("127.0.0.3", per(m, "127.0.0.3"), 4),
            Cmp::new("other", per(m, "other"), 0),
        ]
    });
    if !good {
        return Err(o.failure(&detail));
    }
    drop(held);
    h.expect("release", "released 3")?;
    let (good, end) = o.settle(|m| {
        let mut c = vec![
            Cmp::new("established", m.established("inbound", P), 0),
            Cmp::new("127.0.0.1", per(m, "127.0.0.1"), 0),
            Cmp::new("127.0.0.2", per(m, "127.0.0.2"), 0),
            Cmp::new("127.0.0.3", per(m, "127.0.0.3"), 0),
            Cmp::new("other", per(m, "other"), 0),
        ];
        c.extend(common_health(m));
        c
    });
    let detail = format!("{}; {detail}; then {end}", describe(&first_cmp));
    if good {
        Ok(detail)
    } else {
        Err(o.failure(&detail))
    }
}

/// What the kernel caught and healed: the backup's transitions, each program's skipped runs,
/// nested runs, and the series of `healed_report`.
fn kernel_report(m: &Metrics) -> String {
    let sum = |name: &str| {
        let s = m.samples(name);
        if s.is_empty() {
            "none".to_string()
        } else {
            s.iter().map(|(_, v)| v).sum::<f64>().to_string()
        }
    };
    let skipped: Vec<String> = m
        .samples("observer_kernel_skipped_runs_total")
        .iter()
        .map(|(labels, v)| format!("{}={v}", labels.get("program").map_or("?", |p| p.as_str())))
        .collect();
    format!(
        "backup_transitions={} skipped_runs=[{}] nested_runs={} healed=[{}]",
        sum("observer_kernel_backup_transitions_total"),
        skipped.join(" "),
        sum("observer_kernel_nested_runs_total"),
        healed_report(m)
    )
}

/// The error series that `healed` allows, with their values: `lost_transition=3 ...`.
fn healed_report(m: &Metrics) -> String {
    m.samples("observer_kernel_errors_total")
        .into_iter()
        .filter_map(|(labels, v)| {
            let reason = labels.get("reason")?;
            healed(reason).then(|| format!("{reason}={v}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every kernel error series is 0 (but those `healed` allows) and no event was dropped.
fn common_health(m: &Metrics) -> Vec<Cmp> {
    let errors: Vec<Cmp> = m
        .samples("observer_kernel_errors_total")
        .into_iter()
        .filter(|(labels, _)| !healed(labels.get("reason").map_or("", |r| r.as_str())))
        .map(|(labels, v)| {
            let reason = labels.get("reason").cloned().unwrap_or_default();
            Cmp {
                what: format!("errors{{{reason}}}"),
                got: Some(v),
                want: 0.0,
            }
        })
        .filter(|c| !c.ok())
        .collect();
    let mut c = vec![Cmp::new(
        "dropped",
        m.value("observer_events_dropped_total", &[]),
        0,
    )];
    if errors.is_empty() {
        c.push(Cmp::new("errors", Some(0.0), 0));
    }
    c.extend(errors);
    c
}

// ---------------------------------------------------------------------------------------------
// observer as a child process: the harness's, with a label for the reports.

/// One observer of a test (the harness's `Observer`), with the label its report lines name it
/// by (`A`, `B`, or none), and the guest's console output of its stderr when it fails.
struct Run {
    label: String,
    o: Observer,
}

impl std::ops::Deref for Run {
    type Target = Observer;
    fn deref(&self) -> &Observer {
        &self.o
    }
}

impl Run {
    /// Starts `observer ARGS` (with its debug output) and waits for its ready line.
    fn start(label: &str, args: &[&str]) -> Result<Run, String> {
        Run::start_as(label, args, None)
    }

    /// `start`, as root or as `user`.
    fn start_as(label: &str, args: &[&str], user: Option<&Unprivileged>) -> Result<Run, String> {
        let wrapper = user.map(Unprivileged::wrapper).unwrap_or_default();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let start = Start {
            launch: if user.is_some() {
                Launch::Via(&wrapper)
            } else {
                Launch::Direct
            },
            env: &[("OBSERVER_DEBUG", "1")],
            stdout: Stdout::Kept,
            ready_timeout: READY_TIMEOUT,
        };
        let who = format!("observer {}[{}]", prefix(label), args.join(" "));
        match Observer::try_start(start, args) {
            Ok((o, _)) => Ok(Run {
                label: label.to_string(),
                o,
            }),
            Err(e @ StartError::Spawn(_)) => Err(format!("{who}: {e}")),
            Err(e) => Err(format!(
                "{who} did not load: {e}: {}",
                stderr_summary(label, e.stderr())
            )),
        }
    }

    fn scrape(&self) -> Result<Metrics, String> {
        self.o.try_scrape().map(Metrics)
    }

    /// Scrapes until every comparison holds or `SETTLE` passes: (all held, the last comparison).
    fn settle(&self, expect: impl Fn(&Metrics) -> Vec<Cmp>) -> (bool, String) {
        let mut last = String::new();
        match self.o.try_settle(SETTLE, |s| {
            let c = expect(&Metrics(s.clone()));
            last = describe(&c);
            all_match(&c)
        }) {
            Ok(_) => (true, last),
            Err(e) => {
                let last = if last.is_empty() {
                    format!("scrape failed: {e}")
                } else {
                    last
                };
                (false, format!("after {} s: {last}", SETTLE.as_secs()))
            }
        }
    }

    /// SIGTERM, then waits up to 10 s for the exit (SIGKILL after that, and an error).
    fn stop(&mut self) -> Result<ExitStatus, String> {
        self.o
            .try_stop(EXIT_TIMEOUT)
            .map_err(|e| format!("{} {e}", prefix(&self.label).trim_end()))
    }

    fn stderr_summary(&self) -> String {
        stderr_summary(&self.label, &self.o.stderr_lines())
    }

    /// A test failure with the first lines of observer's stderr.
    fn failure(&self, detail: &str) -> String {
        format!("{detail}; {}", self.stderr_summary())
    }
}

/// `A ` for observer A, nothing for an unlabelled one.
fn prefix(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!("{label} ")
    }
}

/// The first lines of stderr and the verifier's message, on one line; the whole stderr goes to
/// the console (prefixed), for the log.
fn stderr_summary(label: &str, lines: &[String]) -> String {
    let label = format!("observer {}", prefix(label)).trim_end().to_string();
    let n = lines.len();
    for (i, l) in lines.iter().enumerate() {
        // The verifier's log can be long: its start and its end are what tell.
        if i < 40 || i + 60 >= n {
            println!("  {label} stderr | {l}");
        } else if i == 40 {
            println!("  {label} stderr | ... {} lines ...", n - 100);
        }
    }
    format!("{label} stderr: {}", observer::stderr_summary(lines))
}

/// (opens of P inbound, closes of P inbound, failures of R outbound) in observer's event lines,
/// and how many other lines there were.
/// Counts the churn's events; the lines that are none of them are returned, to be shown.
fn count_events(
    lines: &[String],
    text: bool,
    p: u16,
    r: u16,
) -> ((usize, usize, usize), Vec<String>) {
    let (mut open, mut close, mut failed, mut other) = (0, 0, 0, Vec::new());
    for line in lines {
        let head = if text {
            text_head(line)
        } else {
            json_head(line)
        };
        match head {
            Some(h) => match (h.kind.as_str(), h.direction.as_str()) {
                ("open", "inbound") if h.port == p => open += 1,
                ("close", "inbound") if h.port == p => close += 1,
                ("failed", "outbound") if h.port == r => failed += 1,
                _ => other.push(line.clone()),
            },
            None => other.push(line.clone()),
        }
    }
    ((open, close, failed), other)
}

// ---------------------------------------------------------------------------------------------
// A non-root user with some capabilities (the guest has no setpriv or capsh).

/// The first argument that makes vm-guest `exec_as_user`.
const AS_USER: &str = "as-user";
/// User and group nobody.
const NOBODY: u32 = 65534;
/// A host's RLIMIT_MEMLOCK, soft and hard: the kernel's default before 5.16.
const HOST_LIMIT: (Option<u64>, Option<u64>) = (Some(HOST_MEMLOCK), Some(HOST_MEMLOCK));

/// How `Run::start_as` runs observer: as nobody, with `caps` ambient, and `memlock` as
/// RLIMIT_MEMLOCK (soft, hard; None: unlimited).
struct Unprivileged {
    caps: String,
    memlock: (Option<u64>, Option<u64>),
}

impl Unprivileged {
    fn new(caps: &[&str], memlock: (Option<u64>, Option<u64>)) -> Unprivileged {
        Unprivileged {
            caps: caps.join(","),
            memlock,
        }
    }

    /// The memlock limit as `SOFT:HARD`, as /proc/PID/limits says them (`65536:unlimited`).
    fn memlock_text(&self) -> String {
        let text = |l: Option<u64>| l.map_or_else(|| "unlimited".into(), |m| m.to_string());
        format!("{}:{}", text(self.memlock.0), text(self.memlock.1))
    }

    /// `vm-guest as-user UID CAPS SOFT:HARD`, which the harness runs observer through.
    fn wrapper(&self) -> Vec<String> {
        vec![
            "/proc/self/exe".into(),
            AS_USER.into(),
            NOBODY.to_string(),
            self.caps.clone(),
            self.memlock_text(),
        ]
    }
}

/// `as-user UID CAPS SOFT:HARD PROGRAM ARGS...`: sets RLIMIT_MEMLOCK, becomes UID (and its group,
/// no other groups) keeping CAPS (comma-separated, e.g. bpf,perfmon) as ambient capabilities, and
/// execs PROGRAM, which then holds exactly CAPS. Runs before any thread starts.
fn exec_as_user(args: &[String]) -> ! {
    let err = match as_user(args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("vm-guest as-user: {err}");
    std::process::exit(127);
}

fn as_user(args: &[String]) -> Result<std::convert::Infallible, String> {
    use std::os::unix::process::CommandExt as _;
    use std::str::FromStr as _;
    let [uid, caps, memlock, program, rest @ ..] = args else {
        return Err("usage: as-user UID CAPS SOFT:HARD PROGRAM ARGS...".into());
    };
    let uid: u32 = uid.parse().map_err(|_| format!("bad uid {uid}"))?;
    let caps: caps::CapsHashSet = caps
        .split(',')
        .map(|c| {
            caps::Capability::from_str(&format!("CAP_{}", c.to_uppercase()))
                .map_err(|e| format!("{c}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let limit = |n: &str| match n {
        "unlimited" => Ok(libc::RLIM_INFINITY),
        n => n.parse().map_err(|_| format!("bad memlock {n}")),
    };
    let (soft, hard) = memlock
        .split_once(':')
        .ok_or_else(|| format!("bad memlock {memlock}"))?;
    let r = libc::rlimit {
        rlim_cur: limit(soft)?,
        rlim_max: limit(hard)?,
    };
    let os = |what: &str, rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("{what}: {}", std::io::Error::last_os_error()))
        }
    };
    // SAFETY: plain syscalls on this single-threaded process, with valid arguments.
    unsafe {
        os("setrlimit", libc::setrlimit(libc::RLIMIT_MEMLOCK, &r))?;
        caps::securebits::set_keepcaps(true).map_err(|e| e.to_string())?;
        os("setgroups", libc::setgroups(0, std::ptr::null()))?;
        os("setresgid", libc::setresgid(uid, uid, uid))?;
        os("setresuid", libc::setresuid(uid, uid, uid))?;
    }
    // Changing the uid emptied the effective and ambient sets; the permitted set was kept.
    caps::set(None, caps::CapSet::Permitted, &caps).map_err(|e| format!("permitted: {e}"))?;
    caps::set(None, caps::CapSet::Inheritable, &caps).map_err(|e| format!("inheritable: {e}"))?;
    for c in &caps {
        caps::raise(None, caps::CapSet::Ambient, *c).map_err(|e| format!("ambient {c}: {e}"))?;
    }
    let e = Command::new(program).args(rest).exec();
    Err(format!("exec {program}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Prometheus text (HTTP: the harness's `http_get`).

/// A scrape, read by the test harness's parser (`observer_tests::scrape`), with its labels as
/// maps for the guest's checks.
struct Metrics(Scrape);

impl Metrics {
    fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.0
            .samples(name)
            .into_iter()
            .map(|(labels, v)| (labels.into_iter().collect(), v))
            .collect()
    }

    /// The sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.value(name, labels)
    }

    /// A (direction, port)-labelled counter, summed over its other labels (the reasons of
    /// `observer_tcp_connections_failed_total`).
    fn conn(&self, name: &str, direction: &str, port: u16) -> Option<f64> {
        self.0.conn(name, direction, port)
    }

    fn established(&self, direction: &str, port: u16) -> Option<f64> {
        self.0.established(direction, port)
    }

    /// The sum of |value| of every `observer_tcp_connections` gauge of `port` (None: none).
    fn gauges_abs_sum(&self, port: u16) -> Option<f64> {
        let port = port.to_string();
        let g: Vec<f64> = self
            .samples("observer_tcp_connections")
            .into_iter()
            // The states the kernel program counts: `time_wait` is the socket census's.
            .filter(|(l, _)| {
                l.get("port") == Some(&port) && l.get("state").is_none_or(|s| s != "time_wait")
            })
            .map(|(_, v)| v.abs())
            .collect();
        (!g.is_empty()).then(|| g.iter().sum())
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses, servers, clients.

/// 127.0.0.1:`port`.
fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A server in this process on 127.0.0.1:`port` that closes each connection at EOF.
fn serve(port: u16) -> Result<Server, String> {
    Server::try_start_at(local(port), Mode::Hold)
}

/// Pins the calling thread to one CPU; says how that went. (Only the guest pins its clients:
/// one on each of its two vCPUs makes transitions nest.)
fn pin_to_cpu(cpu: usize) -> String {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for cpu < 1024.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        format!("cpu{cpu}")
    } else {
        format!("cpu{cpu} unpinned: {}", std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn kernels_before_5_11_charge_memlock() {
        assert!(charges_memlock("5.10.0-46-amd64"));
        assert!(!charges_memlock("5.11.0"));
        assert!(!charges_memlock("6.1.0-50-amd64"));
        assert!(!charges_memlock("6.12.95+deb12-amd64"));
        assert!(!charges_memlock("7.2.13+deb14-amd64"));
    }

    #[test]
    fn events_in_both_formats() {
        let ev = lines(
            "\
2025-11-24T16:00:00.000001Z open   inbound  port=9100 a <- b pid=- comm=-
2025-11-24T16:00:00.000001Z close  inbound  port=9100 a <- b duration=0.1s pid=- comm=-
2025-11-24T16:00:00.000001Z failed outbound port=9101 a -> b pid=1 comm=x
2025-11-24T16:00:00.000001Z open   outbound port=9100 a -> b pid=1 comm=x",
        );
        assert_eq!(count_events(&ev, true, 9100, 9101).0, (1, 1, 1));
        assert_eq!(count_events(&ev, true, 9100, 9101).1.len(), 1);
    }

    #[test]
    fn metrics_text() {
        let m = Metrics(Scrape {
            text: "\
# HELP observer_tcp_connections x
observer_tcp_connections{direction=\"inbound\",port=\"9100\",state=\"established\"} 3
observer_tcp_connections{direction=\"inbound\",port=\"9100\",state=\"close_wait\"} -1
observer_tcp_connections_opened_total{direction=\"inbound\",port=\"9100\"} 600
observer_events_dropped_total 0
"
            .to_string(),
        });
        assert_eq!(m.established("inbound", 9100), Some(3.0));
        assert_eq!(m.gauges_abs_sum(9100), Some(4.0));
        assert_eq!(m.gauges_abs_sum(9101), None);
        assert_eq!(
            m.conn("observer_tcp_connections_opened_total", "inbound", 9100),
            Some(600.0)
        );
        assert_eq!(m.value("observer_events_dropped_total", &[]), Some(0.0));
        assert!(m.samples("observer_kernel_skipped_runs_total").is_empty());
    }
}
