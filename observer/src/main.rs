//! observer: watches the TCP connections of a running server from the kernel, with eBPF.
//!
//! The start-up sequence, `run` (each step can fail with one clear line, and nothing stays
//! loaded): the targets are resolved (`targets`), the metrics port is bound, the kernel's layout
//! is read (`btf`, `features`), the programs are loaded and attached, what is watched is found
//! on the system (`watched`), the connections that already exist are counted (`snapshot`); then
//! `serve` serves the metrics, streams the events and sweeps until SIGINT/SIGTERM.
mod basic_auth;
mod btf;
mod by_remote;
mod census;
mod cli;
mod config;
mod diag;
mod endpoints;
mod events;
mod exposition;
mod features;
mod generate;
mod http;
mod idle;
mod iterator;
mod kernel;
mod limit;
mod memlock;
mod metrics;
mod netns;
mod output;
mod privilege;
mod process;
mod sizing;
mod snapshot;
mod sweep;
mod targets;
mod tls;
mod watched;
mod web_config;

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use observer_common::{DIR_INBOUND, DIR_OUTBOUND, filter::PortOwner, stats::StatsKey};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::Cli,
    config::Config,
    kernel::{Kernel, Settings},
    output::Clock,
    targets::Targets,
    watched::Watched,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(kind) = cli.generate {
        return match generate::write(kind, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("observer: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("observer: {e}");
            return ExitCode::from(e.exit_code());
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

/// observer's life, phase by phase: each one in the module it belongs to.
async fn run(config: Config) -> Result<()> {
    let targets = Targets::resolve(&config.pids, &config.cgroups)?;
    let memlock = memlock::plan_here()?;
    privilege::check(&needs(&config, &targets, memlock))?;
    let memlock = memlock::lift(memlock)?;
    let listener = match config.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let layout = btf::Layout::read(!targets.cgroups.is_empty())?;
    let sizes = map_sizes(&config, &targets, layout.netns.is_some());
    let mut kernel = load_and_attach(&config, &targets, &layout, sizes)?;
    // From here on the kernel sees every transition; now find what already exists.
    let own_endpoint = listener.as_ref().and_then(socket_inode);
    let watched = Watched::discover(
        &mut kernel,
        &config,
        &targets,
        layout.netns.is_some(),
        own_endpoint,
    )?;
    let baseline = snapshot::take(&mut kernel, &watched.namespaces, &|ns, s| {
        watched.classify(ns, s)
    })
    .context("counting the connections that already exist")?;
    // Their sock_diag sockets are opened in each namespace now, while observer may enter them.
    let census = match config.metrics_addr {
        Some(_) => Some(census::Census::open(&watched.namespaces, watched.clone())?),
        None => None,
    };
    let scanner = match config.idle_after {
        Some(after) => Some(idle::Scanner::open(
            &watched.namespaces.clone(),
            watched,
            targets.clone(),
            after,
        )?),
        None => None,
    };
    // Start-up is done: all that is left creates nothing the kernel charges to the memlock
    // limit, and needs no capability but CAP_BPF (see `privilege`).
    memlock.restore()?;
    privilege::drop_after_start().context("dropping capabilities")?;
    serve(config, targets, kernel, baseline, listener, scanner, census).await
}

/// The capabilities start-up needs for this configuration (see `privilege::needs`).
fn needs(config: &Config, targets: &Targets, memlock: memlock::Plan) -> Vec<privilege::Need> {
    let every_namespace =
        config.all_listeners() || !config.ports.is_empty() || !config.remote_ports.is_empty();
    let (others, hidden) = netns::survey();
    let own = netns::Namespace::own().inode;
    let targets_elsewhere = targets
        .pids()
        .into_iter()
        .any(|p| netns::Namespace::of_pid(p).is_some_and(|ns| ns.inode != own));
    let low_port = config
        .metrics_addr
        .is_some_and(|a| a.port() != 0 && a.port() < 1024);
    privilege::needs(
        targets.any() || config.all_listeners(),
        every_namespace,
        if every_namespace {
            others
        } else {
            targets_elsewhere
        },
        every_namespace && hidden,
        low_port,
        memlock == memlock::Plan::LiftHard,
    )
}

/// The maps' sizes for this configuration and what is on the system now (see `sizing`).
fn map_sizes(config: &Config, targets: &Targets, namespaces_known: bool) -> sizing::MapSizes {
    let found_ports = config.all_listeners() || targets.any();
    let namespaces = watched::namespaces(config, targets, namespaces_known);
    let survey = sizing::survey(
        &namespaces,
        &config.ports,
        &config.remote_ports,
        found_ports,
    );
    let wants = sizing::Wants {
        max_connections: config.max_connections,
        max_ports: config.max_ports,
        named_ports: (config.ports.len() + config.remote_ports.len()) as u32,
        found_ports,
        pid_targets: !targets.processes.is_empty(),
        process_targets: targets.any(),
        preemptible: features::preemptible_tracepoints(),
    };
    sizing::sizes(&wants, &survey)
}

/// Loads the programs with their settings, hands them the static targets, and attaches them.
fn load_and_attach(
    config: &Config,
    targets: &Targets,
    layout: &btf::Layout,
    sizes: sizing::MapSizes,
) -> Result<Kernel> {
    let mut kernel = Kernel::load(&Settings {
        emit_events: config.events.is_some(),
        all_listeners: config.all_listeners(),
        process_targets: targets.any(),
        netns: layout.netns,
        sock: layout.sock,
        bucket_bounds_ns: config.bucket_bounds_ns(),
        cgroups: targets.cgroups.iter().map(|c| c.target).collect(),
        cgroup_offsets: layout.cgroup,
        ring_bytes: config.ring_bytes,
        by_remote: config.by_remote.map(|b| b.masks()),
        pid_targets: !targets.processes.is_empty(),
        task_tgid: layout.task_tgid,
        request: layout.request,
        sizes,
    })?;
    // Loading parsed the kernel's BTF once more (aya does, for relocations this program does not
    // have): hand the freed heap back rather than keep it resident for observer's whole life.
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    for port in &config.ports {
        kernel.watch_local_port(0, *port, &PortOwner::NAMED)?;
        kernel.reserve_counters(StatsKey::new(DIR_INBOUND, *port))?;
    }
    for port in &config.remote_ports {
        kernel.watch_remote_port(*port)?;
        kernel.reserve_counters(StatsKey::new(DIR_OUTBOUND, *port))?;
    }
    for p in &targets.processes {
        kernel.watch_pid(p.pid)?;
    }
    kernel.attach()?;
    // Forks from now on are the program's; those before, the targets' descendants now. A
    // process forked by one found here before it was added is found by the next pass.
    let roots: Vec<u32> = targets.processes.iter().map(|p| p.pid).collect();
    for _ in 0..5 {
        let mut added = 0;
        for pid in targets::descendants(&roots) {
            added += usize::from(kernel.watch_descendant(pid)?);
        }
        if added == 0 {
            break;
        }
    }
    Ok(kernel)
}

/// Serves the metrics, streams the events, sweeps, and waits for the end: a signal, or stdout
/// closed under `--events`.
async fn serve(
    config: Config,
    targets: Targets,
    kernel: Kernel,
    baseline: snapshot::Baseline,
    listener: Option<tokio::net::TcpListener>,
    scanner: Option<idle::Scanner>,
    census: Option<Arc<Mutex<census::Census>>>,
) -> Result<()> {
    let mut kernel = kernel;
    let events = kernel.take_events();
    let max_connections = kernel.sizes().sockets;
    let kernel = Arc::new(Mutex::new(kernel));
    // The events the daemon makes itself (idle, limit) join the kernel's in the event stream.
    let (daemon_tx, daemon_rx) = tokio::sync::mpsc::channel(events::DAEMON_LINES);
    let daemon_events = match (&events, config.events) {
        (Some(_), Some(format)) => Some((daemon_tx, format)),
        _ => None,
    };
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
                metrics::Opted {
                    idle: scanner.as_ref().map(idle::Scanner::report),
                    limit: config.warn_connections,
                    census: census.clone(),
                    by_remote: config.by_remote,
                },
            );
            let metrics = Arc::new(metrics::Metrics::new(collector)?);
            Some(tokio::spawn(http::serve(l, metrics, config.web.clone())))
        }
        None => None,
    };
    let mut stream = match (events, config.events) {
        (Some(ring), Some(format)) => Some(tokio::spawn(events::stream(
            ring,
            format,
            Clock::now(),
            daemon_rx,
            max_connections,
        ))),
        _ => None,
    };
    for p in &targets.processes {
        tokio::spawn(watch_exit(p.clone(), kernel.clone()));
    }
    let sweeper = tokio::spawn(sweep::run(kernel.clone(), config.sweep_interval));
    if let Some(s) = scanner {
        s.spawn(Arc::downgrade(&kernel), daemon_events.clone())?;
    }
    let limits = config.warn_connections.map(|n| {
        tokio::spawn(limit::run(
            kernel.clone(),
            baseline.clone(),
            n,
            daemon_events.clone(),
        ))
    });
    if baseline.unseeded > 0 {
        eprintln!(
            "observer: warning: {} existing connections did not fit in the kernel's snapshot map; \
             they are counted from their next state change on",
            baseline.unseeded
        );
    }
    if config.web.auth.is_some() && config.web.tls.is_none() {
        eprintln!(
            "observer: warning: --web.config.file has basic_auth_users but no tls_server_config: \
             passwords cross the network in clear text"
        );
    }
    if cfg!(feature = "without-backup") {
        eprintln!(
            "observer: warning: built with the bench's feature without-backup: a transition the \
             kernel skips the main program for is lost"
        );
    }
    // Before the ready line: whoever reads it may signal at once, and must find them handled.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // A supervisor's SIGHUP asks a daemon to reload; observer reloads nothing (its flags and
    // --web.config.file with its certificates are read once, at start), and the default action
    // would kill it.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    eprintln!(
        "observer: ready: watching {}; {} existing connections counted{}",
        describe(&config, &targets),
        baseline
            .gauges
            .values()
            .map(|g| g.iter().sum::<i64>())
            .sum::<i64>(),
        metrics_addr.map_or(String::new(), |a| format!(
            "; metrics at {}://{a}/metrics",
            if config.web.tls.is_some() {
                "https"
            } else {
                "http"
            }
        )),
    );

    let result = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            _ = hup.recv() => {
                eprintln!("observer: SIGHUP: nothing reloaded (--web.config.file and its certificates are read at start only); still running");
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
    sweeper.abort();
    let _ = sweeper.await;
    if let Some(l) = limits {
        l.abort();
        let _ = l.await;
    }
    // The last reference: dropping it detaches the program and frees its maps.
    drop(kernel);
    result
}

/// The inode of a socket, as sock_diag reports it.
fn socket_inode(socket: &impl std::os::fd::AsRawFd) -> Option<u32> {
    // SAFETY: stat is plain data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor the caller holds open, into a writable struct.
    let ok = unsafe { libc::fstat(socket.as_raw_fd(), &mut st) } == 0;
    ok.then_some(st.st_ino as u32)
}

/// When a `--pid` target exits (its pidfd, taken when it was named, turns readable), its PID
/// leaves the kernel's filter, so that a later process given the same PID is not watched; its
/// listening ports stay watched while they are open (its children may hold them). Says so on
/// stderr.
async fn watch_exit(target: targets::Process, kernel: Arc<Mutex<Kernel>>) {
    let pid = target.pid;
    // SAFETY: the pidfd stays open and the same while the AsyncFd watches it (it holds an Arc).
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            PidFd(target.pidfd.clone()),
            tokio::io::Interest::READABLE,
        )
    };
    let Ok(afd) = registered else {
        return;
    };
    if afd.readable().await.is_ok() {
        let removed = kernel.lock().expect("kernel lock").unwatch_pid(pid);
        match removed {
            Ok(()) => eprintln!(
                "observer: process {pid} exited; its PID is no longer watched, its listening ports are"
            ),
            Err(e) => eprintln!("observer: process {pid} exited; {e:#}"),
        }
    }
}

/// A pidfd shared with the target it stands for, as AsyncFd takes it.
struct PidFd(Arc<std::os::fd::OwnedFd>);

impl std::os::fd::AsRawFd for PidFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

fn describe(config: &Config, targets: &Targets) -> String {
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
    for p in &targets.processes {
        parts
            .entry(1)
            .or_default()
            .push(format!("process {}", p.pid));
    }
    for c in &targets.cgroups {
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
