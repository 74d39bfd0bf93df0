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
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::setup;

mod bpf;
mod bpftrace;
mod census;
mod figures;
mod floor;
mod holder;
mod interrupt;
mod libbpf_tools;
mod load;
mod machine;
mod measure;
mod net;
mod node_exporter;
mod observer;
mod perf;
mod process;
mod readings;
mod report;
mod stats;
mod tool;
mod usage;

use interrupt::{catch_signals, say};
use machine::Machine;
use measure::measure;
use report::render;

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
        "building observer and the floor; then {} pairs per tool, {} s of load per run, {} connections held",
        plan.pairs, plan.load_secs, plan.held
    ));
    // First: the ordinary build after it leaves the ordinary binary at cargo's path.
    observer::build_without_backup()?;
    crate::cargo(&[
        "build",
        "--release",
        "--package",
        "observer",
        "--package",
        floor::PACKAGE,
        "--package",
        holder::HELPER_PACKAGE,
        "--bin",
        holder::HELPER,
        "--bin",
        "observer",
        "--bin",
        floor::PACKAGE,
    ])?;
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
    /// Scrape / ss pairs per level of held connections, and per level of TIME_WAIT sockets.
    reading_pairs: usize,
    /// The large level of TIME_WAIT sockets on the watched port, for the census's cost.
    time_wait: usize,
    /// The quiet window over which the idle scan's CPU share is taken: long enough for several
    /// scans at 100,000 connections, where one comes every few seconds.
    idle_window: Duration,
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
                time_wait: 25_000,
                idle_window: Duration::from_secs(30),
            },
            // A smoke run, each tool attached once: under a minute once built.
            true => Plan {
                quick: true,
                pairs: 1,
                load_secs: 0.5,
                checks: 1,
                profiles: 1,
                held: 2_000,
                reading_pairs: 2,
                time_wait: 500,
                idle_window: Duration::from_secs(5),
            },
        }
    }
}
