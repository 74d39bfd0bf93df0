//! The cost of a reading, with few and with many connections open.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    FEW_HELD, HOLD_WORKER_CONNECTIONS, HOLD_WORKERS, Plan,
    holder::{Holder, hold_more},
    interrupt::{pause, say},
    measure::start_nginx,
    net::ss_established,
    node_exporter::{self, NodeExporter},
    observer::Observer,
    stats::ms,
    usage::{Memory, cpu_secs},
};

/// Scrape and ss timings at one level of held connections.
pub(super) struct Level {
    pub(super) target: usize,
    pub(super) held: usize,
    pub(super) gauge: f64,
    pub(super) ss_count: usize,
    /// Scrapes taking turns with ss, and scrapes on their own.
    pub(super) scrape_ms: Vec<f64>,
    pub(super) back_to_back_ms: Vec<f64>,
    pub(super) ss_ms: Vec<f64>,
    /// observer_kernel_errors_total, all reasons.
    pub(super) kernel_errors: f64,
    /// observer's, once the scrapes are done.
    pub(super) memory: Memory,
    /// node_exporter's tcpstat scrapes, back to back, the established sockets of the whole
    /// host it counted, and its memory.
    pub(super) node_ms: Vec<f64>,
    pub(super) node_established: f64,
    pub(super) node_memory: Memory,
}

/// A second observer started while the large level was held: the snapshot of existing ones.
pub(super) struct Startup {
    pub(super) ready_ms: f64,
    pub(super) ready_line: String,
    pub(super) gauge: f64,
}

/// An observer with `--idle-after` started while the large level was held: the idle scan's cost.
pub(super) struct IdleScan {
    pub(super) held: usize,
    /// Its observer_tcp_connections_idle once every held connection was idle.
    pub(super) gauge: f64,
    /// Wall and CPU time of single scans (observer_idle_scan_*_seconds), ms.
    pub(super) wall_ms: Vec<f64>,
    pub(super) cpu_ms: Vec<f64>,
    /// observer's CPU time over `window_secs` without scrapes, as a share of one core; and that
    /// of the observer without `--idle-after` over the same window.
    pub(super) share: f64,
    pub(super) plain_share: f64,
    pub(super) window_secs: f64,
}

pub(super) struct Readings {
    pub(super) levels: Vec<Level>,
    pub(super) startup: Option<Startup>,
    pub(super) idle: Option<IdleScan>,
    pub(super) holders: usize,
    pub(super) gauge_after_release: f64,
    /// An observer sized for a million tracked connections (`--max-connections 1000000`).
    pub(super) million: Memory,
}

/// `--max-connections` of the observer that watches the held connections: started before they
/// come, it cannot size itself for them (it sizes its maps for what is open at start), so it is
/// told, as a user expecting that load would be; twice the most held, as observer's own rule.
pub(super) fn readings_max_connections(held: usize) -> usize {
    (2 * held).max(65_536)
}

/// The tracked connections of the largest memory figure (issue 15: "at 1,000,000").
pub(super) const MILLION: u32 = 1_000_000;

pub(super) fn readings(
    dir: &Path,
    observer: &Path,
    plan: &Plan,
    warnings: &mut Vec<String>,
) -> Result<Readings> {
    let nginx = start_nginx(HOLD_WORKERS, HOLD_WORKER_CONNECTIONS, true)?;
    let port = nginx.port;
    // Started before the connections come: sized for them by hand (see the function).
    let max = readings_max_connections(plan.held).to_string();
    let obs = Observer::start_with(observer, port, None, &["--max-connections", &max])?;
    let node = NodeExporter::start(dir)?;
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
        let l = level(&obs, &node, port, target, held, plan.reading_pairs)?;
        if l.gauge != held as f64 || l.ss_count != held || l.kernel_errors != 0.0 {
            warnings.push(format!(
                "holding {held} connections, observer's gauge said {}, ss counted {}, and \
                 observer_kernel_errors_total was {}",
                l.gauge, l.ss_count, l.kernel_errors
            ));
        }
        // Both ends of each held connection are on this host.
        if l.node_established < 2.0 * held as f64 {
            warnings.push(format!(
                "holding {held} connections, node_exporter counted {} established sockets \
                 on the host, fewer than both ends of them",
                l.node_established
            ));
        }
        levels.push(l);
        if target == plan.held {
            startup = Some(second_start(observer, port)?);
            let i = idle_scan(observer, port, held, obs.proc.pid(), plan.idle_window)?;
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
    let million = sized_for_a_million(observer, port, warnings)?;
    node.stop()?;
    nginx.stop()?;
    Ok(Readings {
        levels,
        startup,
        idle,
        holders: holder_count,
        gauge_after_release,
        million,
    })
}

/// What observer holds to track a million connections. Its maps are preallocated and sized at
/// start (README, "Kernel memory"): the kernel charges every entry they can hold from their
/// creation, so an observer sized for a million holds that memory whatever it tracks. Holding a
/// million real connections here would take two million sockets, a hundred processes at this
/// machine's hard limit of 20,000 open files each.
fn sized_for_a_million(observer: &Path, port: u16, warnings: &mut Vec<String>) -> Result<Memory> {
    let max = MILLION.to_string();
    let obs = Observer::start_with(observer, port, None, &["--max-connections", &max])?;
    let memory = Memory::of(obs.proc.pid())?;
    if let Some(complaint) = obs.stop()? {
        warnings.push(complaint);
    }
    Ok(memory)
}

/// Waits (bounded) until observer and ss both see `held` connections, then times pairs of a
/// scrape and an ss count.
pub(super) fn level(
    obs: &Observer,
    node: &NodeExporter,
    port: u16,
    target: usize,
    held: usize,
    pairs: usize,
) -> Result<Level> {
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
    let (mut node_ms, mut node_established) = (Vec::new(), 0.0);
    for _ in 0..pairs {
        let (m, took) = node.timed_scrape()?;
        node_ms.push(took);
        node_established = node_exporter::established(&m)?;
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
        memory: Memory::of(obs.proc.pid())?,
        node_ms,
        node_established,
        node_memory: Memory::of(node.proc.pid())?,
    })
}

/// Starts another observer while the connections are held: how long its snapshot of them takes,
/// and whether it counts them all.
pub(super) fn second_start(observer: &Path, port: u16) -> Result<Startup> {
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
pub(super) const IDLE_AFTER: &str = "1s";
/// Scans timed one by one.
pub(super) const IDLE_SCANS: usize = 5;

/// Starts an observer with `--idle-after 1s` while `held` silent connections are held: once
/// its gauge counts them all idle, the wall and CPU time of single scans (its own gauges of the
/// last scan, each read once a new scan has changed them), and its CPU share over a window with
/// no scrape.
pub(super) fn idle_scan(
    observer: &Path,
    port: u16,
    held: usize,
    plain: u32,
    window: Duration,
) -> Result<IdleScan> {
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
    pause(window)?;
    let share = (cpu_secs(obs.proc.pid())? - before) / window.as_secs_f64();
    let plain_share = (cpu_secs(plain)? - plain_before) / window.as_secs_f64();
    obs.stop()?;
    Ok(IdleScan {
        held,
        gauge,
        wall_ms,
        cpu_ms,
        share,
        plain_share,
        window_secs: window.as_secs_f64(),
    })
}

/// Waits (bounded) for observer's established gauge to reach `want`; returns the last value.
pub(super) fn settle_gauge(obs: &Observer, port: u16, want: usize) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let gauge = obs.established(port)?;
        if gauge == want as f64 || Instant::now() >= deadline {
            return Ok(gauge);
        }
        pause(Duration::from_millis(200))?;
    }
}
