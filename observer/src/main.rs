//! observer: watches the TCP connections of a running server from the kernel, with eBPF.
//!
//! The start-up sequence (each step can fail with one clear line, and nothing stays loaded):
//! targets are resolved, the metrics port is bound, the program is loaded and attached, the
//! targets' listening ports are found, the connections that already exist are counted (see
//! `snapshot`), then metrics are served and events streamed until SIGINT/SIGTERM.
mod btf;
mod cli;
mod config;
mod diag;
mod events;
mod features;
mod http;
mod kernel;
mod metrics;
mod netns;
mod output;
mod process;
mod snapshot;
mod targets;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use observer_common::{DIR_INBOUND, DIR_OUTBOUND, filter::Owner, stats::StatsKey, tcp};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::Cli,
    config::Config,
    kernel::{Kernel, Settings},
    netns::Namespace,
    output::Clock,
    targets::{Cgroup, Process},
};

fn main() -> ExitCode {
    let config = match Config::from_cli(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("observer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("observer: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("observer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("observer needs root to load eBPF programs (run it with sudo)");
    }
    let processes: Vec<Process> = config
        .pids
        .iter()
        .map(|p| targets::resolve_pid(*p))
        .collect::<Result<_, _>>()?;
    let cgroups: Vec<Cgroup> = config
        .cgroups
        .iter()
        .map(|p| targets::resolve_cgroup(p))
        .collect::<Result<_, _>>()?;
    let listener = match config.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };

    // The kernel's BTF is large: read the offsets, and let it go before anything else loads.
    let (netns, sock, cgroup_offsets) = {
        let vmlinux = btf::vmlinux();
        // What the kernel lacks is named before anything is loaded.
        let probed = features::probe(vmlinux.as_ref().ok())?;
        if let Some(missing) = probed.missing() {
            bail!("{}", missing.message(&features::release()));
        }
        let vmlinux = vmlinux.map_err(|e| {
            anyhow::anyhow!(
                "observer needs the kernel's BTF type information (CONFIG_DEBUG_INFO_BTF): {e}"
            )
        })?;
        let sock = btf::sock_offsets(&vmlinux).context("finding struct sock's fields")?;
        let netns = optional(
            btf::netns_offsets(&vmlinux).map_err(anyhow::Error::from),
            "network namespaces will not be told apart",
        );
        let cgroup_offsets = if cgroups.is_empty() {
            Default::default()
        } else {
            btf::cgroup_offsets(&vmlinux)
                .context("finding where the kernel keeps a socket's cgroup, for --cgroup")?
        };
        (netns, sock, cgroup_offsets)
    };
    let process_targets = !processes.is_empty() || !cgroups.is_empty();
    let mut kernel = Kernel::load(&Settings {
        emit_events: config.events.is_some(),
        all_listeners: config.all_listeners(),
        process_targets,
        netns,
        sock,
        bucket_bounds_ns: config.bucket_bounds_ns(),
        cgroups: cgroups.iter().map(|c| c.target).collect(),
        cgroup_offsets,
        ring_bytes: config.ring_bytes,
    })?;
    // Loading parsed the kernel's BTF once more (aya does, for relocations this program does not
    // have): hand the freed heap back rather than keep it resident for observer's whole life.
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    for port in &config.ports {
        kernel.watch_local_port(0, *port, &Owner::UNKNOWN)?;
    }
    for port in &config.remote_ports {
        kernel.watch_remote_port(*port)?;
    }
    for p in &processes {
        kernel.watch_pid(p.pid)?;
    }
    kernel.attach()?;

    // From here on the kernel sees every transition; now find what already exists.
    let target_pids: Vec<u32> = processes
        .iter()
        .map(|p| p.pid)
        .chain(cgroups.iter().flat_map(|c| targets::cgroup_pids(&c.path)))
        .collect();
    let namespaces = if netns.is_none() {
        vec![Namespace {
            inode: 0,
            ..Namespace::own()
        }]
    } else if config.all_listeners() || !config.ports.is_empty() || !config.remote_ports.is_empty()
    {
        netns::all()
    } else {
        targets::namespaces_of(&target_pids)
    };
    let owners = if config.all_listeners() {
        targets::socket_owners(targets::all_pids())
    } else {
        targets::socket_owners(target_pids.iter().copied())
    };
    let target_inodes: HashSet<u32> = if process_targets {
        owners.keys().copied().collect()
    } else {
        HashSet::new()
    };
    // With no target every listener counts, but observer's own endpoint (and Prometheus's
    // scrapes of it) is not the server's traffic; `--port` still names it when wanted.
    let own_endpoint = listener.as_ref().and_then(socket_inode);
    watch_listeners(
        &mut kernel,
        &namespaces,
        &owners,
        config.all_listeners(),
        &target_inodes,
        own_endpoint,
    )?;
    let local: HashMap<(u32, u16), Owner> = kernel
        .local_ports()
        .into_iter()
        .map(|(k, o)| ((k.netns, k.port), o))
        .collect();
    let remote: HashSet<u16> = config.remote_ports.iter().copied().collect();
    let classify = |ns: u32, s: &diag::DiagSocket| {
        if let Some(o) = local
            .get(&(ns, s.sport))
            .or_else(|| local.get(&(0, s.sport)))
        {
            return Some((DIR_INBOUND, s.sport, *o));
        }
        let owner = owners.get(&s.inode).copied();
        if remote.contains(&s.dport) {
            return Some((DIR_OUTBOUND, s.dport, owner.unwrap_or(Owner::UNKNOWN)));
        }
        target_inodes
            .contains(&s.inode)
            .then(|| (DIR_OUTBOUND, s.dport, owner.unwrap_or(Owner::UNKNOWN)))
    };
    let baseline = snapshot::take(&mut kernel, &namespaces, &classify)
        .context("counting the connections that already exist")?;

    let events = kernel.take_events();
    let kernel = Arc::new(Mutex::new(kernel));
    let static_keys: Vec<StatsKey> = config
        .ports
        .iter()
        .map(|p| StatsKey::new(DIR_INBOUND, *p))
        .chain(
            config
                .remote_ports
                .iter()
                .map(|p| StatsKey::new(DIR_OUTBOUND, *p)),
        )
        .collect();
    let mut metrics_addr = None;
    let server = match listener {
        Some(l) => {
            metrics_addr = l.local_addr().ok();
            let collector = metrics::ConnCollector::new(
                kernel.clone(),
                baseline.clone(),
                static_keys,
                config.buckets.clone(),
            )?;
            let registry = Arc::new(metrics::registry(collector)?);
            Some(tokio::spawn(http::serve(l, registry)))
        }
        None => None,
    };
    let mut stream = match (events, config.events) {
        (Some(ring), Some(format)) => {
            Some(tokio::spawn(events::stream(ring, format, Clock::now())))
        }
        _ => None,
    };
    for p in &processes {
        tokio::spawn(watch_exit(p.pid));
    }
    if baseline.unseeded > 0 {
        eprintln!(
            "observer: warning: {} existing connections did not fit in the kernel's snapshot map; \
             they are counted from their next state change on",
            baseline.unseeded
        );
    }
    // Before the ready line: whoever reads it may signal at once, and must find them handled.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // A supervisor's SIGHUP asks a daemon to reload; observer has nothing to reload, and the
    // default action would kill it.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    eprintln!(
        "observer: ready: watching {}; {} existing connections counted{}",
        describe(&config, &processes, &cgroups),
        baseline
            .gauges
            .values()
            .map(|g| g.iter().sum::<i64>())
            .sum::<i64>(),
        metrics_addr.map_or(String::new(), |a| format!(
            "; metrics at http://{a}/metrics"
        )),
    );

    let result = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            _ = hup.recv() => {
                eprintln!("observer: SIGHUP: nothing to reload (observer has no configuration file); still running");
            }
            r = async { stream.as_mut().expect("guarded").await }, if stream.is_some() => {
                // Ok: stdout was closed, which ends observer cleanly.
                break r.context("the event stream stopped")?;
            }
        }
    };
    if let Some(s) = server {
        s.abort();
        let _ = s.await;
    }
    if let Some(s) = stream {
        s.abort();
    }
    // The last reference: dropping it detaches the program and frees its maps.
    drop(kernel);
    result
}

/// A feature observer can run without: a warning on stderr says what is missing and why.
fn optional<T>(found: Result<T>, consequence: &str) -> Option<T> {
    found
        .map_err(|e| eprintln!("observer: warning: {consequence} ({e:#})"))
        .ok()
}

/// Adds the listening ports of the targets (or of every process) to the watched set.
fn watch_listeners(
    kernel: &mut Kernel,
    namespaces: &[Namespace],
    owners: &HashMap<u32, Owner>,
    all: bool,
    target_inodes: &HashSet<u32>,
    own_endpoint: Option<u32>,
) -> Result<()> {
    if !all && target_inodes.is_empty() {
        return Ok(());
    }
    let mask = diag::state_mask(&[tcp::LISTEN]);
    for ns in namespaces {
        for s in ns
            .dump(mask)
            .with_context(|| format!("listing the listening sockets of {ns}"))?
        {
            if all && own_endpoint == Some(s.inode) {
                continue;
            }
            if all || target_inodes.contains(&s.inode) {
                let owner = owners.get(&s.inode).copied().unwrap_or(Owner::UNKNOWN);
                kernel.watch_local_port(ns.inode, s.sport, &owner)?;
            }
        }
    }
    Ok(())
}

/// The inode of a socket, as sock_diag reports it.
fn socket_inode(socket: &impl std::os::fd::AsRawFd) -> Option<u32> {
    // SAFETY: fstat on a descriptor the caller holds open, into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(socket.as_raw_fd(), &mut st) } == 0).then_some(st.st_ino as u32)
}

/// Says on stderr when a target process exits; its ports stay watched.
async fn watch_exit(pid: u32) {
    // SAFETY: plain syscall; a pidfd becomes readable when the process exits.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: a fresh fd that we own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    use std::os::fd::FromRawFd as _;
    // SAFETY: the OwnedFd stays open and the same while the AsyncFd owns it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    let Ok(afd) = registered else {
        return;
    };
    if afd.readable().await.is_ok() {
        eprintln!("observer: process {pid} exited; still watching its ports");
    }
}

fn describe(config: &Config, processes: &[Process], cgroups: &[Cgroup]) -> String {
    if config.all_listeners() {
        return "inbound connections on every listening port".into();
    }
    let mut parts: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    let list = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    if !config.ports.is_empty() {
        parts
            .entry(0)
            .or_default()
            .push(format!("inbound port {}", list(&config.ports)));
    }
    for p in processes {
        parts
            .entry(1)
            .or_default()
            .push(format!("process {}", p.pid));
    }
    for c in cgroups {
        parts
            .entry(2)
            .or_default()
            .push(format!("cgroup {}", c.path.display()));
    }
    if !config.remote_ports.is_empty() {
        parts
            .entry(3)
            .or_default()
            .push(format!("outbound to port {}", list(&config.remote_ports)));
    }
    parts.into_values().flatten().collect::<Vec<_>>().join(", ")
}
