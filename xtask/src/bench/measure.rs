//! The measurements under load: A/B rounds per tool, completeness checks, CPU profiles.
use std::{
    collections::BTreeSet,
    fs::{self, File},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use observer_tests::nginx::{Nginx, Options};

use crate::setup;

use super::{
    AB_CLIENTS, BPF_STATS, NGINX_WORKERS, Plan, SETTLE, TOOL_TIMEOUT, WARMUP_PER_CLIENT,
    bpf::{BpfStats, RunStats, foreign_tracers, run_stats},
    bpftrace::{Bpftrace, Script, counted_established, lost_events, printed_established},
    census::{CensusLevel, census_cost},
    floor::Floor,
    interrupt::{pause, say},
    libbpf_tools::{self, LibbpfTool, Tracer},
    load::{Load, load},
    net::Poker,
    observer::{Observer, without_backup},
    perf::{PROFILED, Profile, Tally, perf_available},
    process::{Running, TempDir, capture},
    readings::{Readings, readings},
    stats::Spread,
    tool::{Prog, Tool},
    usage::Memory,
};

/// Connections open on the watched port when the `ObserverOpen` rounds start observer.
pub(super) const OPEN_AT_START: usize = 100;

/// One A/B pair: the load without the tool, then with it.
pub(super) struct Round {
    pub(super) tool: Tool,
    pub(super) without: Load,
    pub(super) with: Load,
    /// Connections nginx accepted during the run with the tool.
    pub(super) accepted: u64,
    /// What the tool counted of them: observer's opened_total, bpftrace's ESTABLISHED count.
    pub(super) counted: Option<u64>,
    pub(super) kernel: Vec<(Prog, RunStats)>,
    pub(super) own: Option<OwnCost>,
    /// The tool's process at the end of the run with it.
    pub(super) memory: Memory,
}

/// observer's own figures over a run with load.
pub(super) struct OwnCost {
    pub(super) cpu_secs: f64,
    pub(super) cpu_metric: f64,
    pub(super) dropped: f64,
    pub(super) lost: f64,
    pub(super) retired: f64,
    pub(super) backup_counted: f64,
}

/// A completeness check of printed events: every connection nginx accepted, one line?
pub(super) struct Check {
    pub(super) what: CheckKind,
    pub(super) accepted: u64,
    pub(super) completed: u64,
    pub(super) printed: u64,
    /// observer's opened_total over the same run.
    pub(super) opened: Option<u64>,
    /// Events the tool says it did not print (observer's dropped counter, bpftrace's "Lost").
    pub(super) dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CheckKind {
    ObserverEvents,
    BpftracePrint,
}

pub(super) struct Results {
    pub(super) per_client: u64,
    pub(super) rounds: Vec<Round>,
    pub(super) checks: Vec<Check>,
    /// None when perf is not installed.
    pub(super) profiles: Option<Vec<Profile>>,
    pub(super) readings: Readings,
    /// The socket census's cost, with few and with many TIME_WAIT sockets.
    pub(super) census: Vec<CensusLevel>,
    pub(super) foreign: BTreeSet<String>,
    pub(super) warnings: Vec<String>,
}

/// What the overhead and completeness phases share.
pub(super) struct Bench<'a> {
    pub(super) dir: &'a Path,
    pub(super) observer: PathBuf,
    pub(super) nginx: Nginx,
    pub(super) poker: Poker,
    pub(super) per_client: u64,
    pub(super) ours: BTreeSet<u32>,
    pub(super) foreign: BTreeSet<String>,
    pub(super) warnings: Vec<String>,
}

pub(super) fn measure(plan: &Plan) -> Result<Results> {
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
    let nginx = start_nginx(NGINX_WORKERS, 4096, false)?;
    // First, while no other phase's TIME_WAIT sockets are on the host: the census walks them.
    say(format_args!(
        "nginx on 127.0.0.1:{}; the census's cost",
        nginx.port
    ));
    let census = census_cost(&observer, nginx.port, plan.time_wait, plan.reading_pairs)?;
    say(format_args!("warming up"));
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
        census,
        foreign,
        warnings,
    })
}

/// nginx from the harness, on ports below the ephemeral range (see
/// `free_ports_below_ephemeral`): `workers` workers of `connections` each, with `reuseport` to
/// spread connections over them.
pub(super) fn start_nginx(workers: usize, connections: usize, reuseport: bool) -> Result<Nginx> {
    Nginx::try_start(&Options {
        workers,
        connections,
        reuseport,
        low_ports: true,
    })
    .map_err(|e| anyhow!(e))
}

/// Connections nginx has accepted since it started (stub_status), this reading's own included.
pub(super) fn accepts(nginx: &Nginx) -> Result<u64> {
    nginx.try_accepts().map_err(|e| anyhow!(e))
}

/// Warms nginx and the TCP stack up, and sizes every run to `secs` at the rate it measured.
pub(super) fn calibrate(port: u16, secs: f64) -> Result<u64> {
    let mut rates = Vec::new();
    for _ in 0..2 {
        rates.push(load(port, WARMUP_PER_CLIENT)?.rate());
    }
    let rate = Spread::of(rates).map_or(0.0, |s| s.median);
    let per_client = (rate * secs / AB_CLIENTS as f64) as u64;
    Ok(per_client.clamp(1_000, 1_000_000))
}

impl Bench<'_> {
    pub(super) fn load(&self) -> Result<Load> {
        load(self.nginx.port, self.per_client)
    }

    /// A run of load and SETTLE, with the connections nginx accepted meanwhile (less the
    /// connection of its second stub_status reading).
    pub(super) fn counted_load(&self) -> Result<(Load, u64)> {
        let before = accepts(&self.nginx)?;
        let load = self.load()?;
        pause(SETTLE)?;
        let after = accepts(&self.nginx)?;
        Ok((load, (after - before).saturating_sub(1)))
    }

    pub(super) fn round(&mut self, tool: Tool, pair: usize) -> Result<Round> {
        let foreign = foreign_tracers(&self.ours)?;
        self.foreign.extend(foreign);
        let without = self.load()?;
        match tool {
            Tool::Observer | Tool::ObserverOpen => self.observer_round(tool, without, false),
            Tool::ObserverEvents => self.observer_round(tool, without, true),
            Tool::Floor => self.floor_round(without, pair),
            Tool::BpftraceEmpty => self.bpftrace_round(tool, without, Script::Empty, pair),
            Tool::BpftraceCount => self.bpftrace_round(tool, without, Script::Count, pair),
            Tool::BpftracePrint => self.bpftrace_round(tool, without, Script::Print, pair),
            Tool::Tcplife => self.libbpf_round(tool, without, Tracer::Tcplife, pair),
            Tool::Tcpstates => self.libbpf_round(tool, without, Tracer::Tcpstates, pair),
            Tool::ObserverAlone
            | Tool::ObserverElsewhere
            | Tool::BpftraceCountElsewhere
            | Tool::FloorPair => {
                bail!("{} is only profiled", tool.label())
            }
        }
    }

    pub(super) fn start_observer(&mut self, events: Option<Stdio>) -> Result<Observer> {
        let bin = self.observer.clone();
        self.start_observer_at(&bin, self.nginx.port, events)
    }

    /// `bin` watching `port`; its programs are the bench's own, not a foreign tracer.
    pub(super) fn start_observer_at(
        &mut self,
        bin: &Path,
        port: u16,
        events: Option<Stdio>,
    ) -> Result<Observer> {
        let obs = Observer::start(bin, port, events)?;
        self.ours.extend(&obs.progs);
        Ok(obs)
    }

    pub(super) fn stop_observer(&mut self, obs: Observer) -> Result<()> {
        if let Some(complaint) = obs.stop()? {
            self.warnings.push(complaint);
        }
        Ok(())
    }

    pub(super) fn observer_round(
        &mut self,
        tool: Tool,
        without: Load,
        events: bool,
    ) -> Result<Round> {
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
        let memory = Memory::of(obs.proc.pid())?;
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
                dropped: after.dropped - before.dropped,
                lost: after.lost - before.lost,
                retired: after.retired - before.retired,
                backup_counted: after.backup_counted - before.backup_counted,
            }),
            memory,
        })
    }

    pub(super) fn libbpf_round(
        &mut self,
        tool: Tool,
        without: Load,
        tracer: Tracer,
        pair: usize,
    ) -> Result<Round> {
        let name = tracer.program();
        let out = self.dir.join(format!("{name}-{pair}.out"));
        let err = self.dir.join(format!("{name}-{pair}.err"));
        let t = LibbpfTool::start(tracer, self.nginx.port, &out, &err, &self.poker)?;
        self.ours.extend(&t.progs);
        let before = t.stats()?;
        let (with, accepted) = self.counted_load()?;
        let after = t.stats()?;
        let memory = Memory::of(t.proc.pid())?;
        let status = t.stop()?;
        if !status.success() {
            self.warnings
                .push(format!("{name} exited with {status} on SIGINT"));
        }
        let lost = libbpf_tools::lost_events(&fs::read_to_string(&err)?);
        if lost > 0 {
            self.warnings.push(format!(
                "{name} reported {lost} lost events (perf buffer full) in pair {pair}"
            ));
        }
        Ok(Round {
            tool,
            without,
            with,
            accepted,
            counted: Some(tracer.counted(&fs::read_to_string(&out)?)),
            kernel: vec![(Prog::Libbpf, after.since(before))],
            own: None,
            memory,
        })
    }

    pub(super) fn bpftrace_round(
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
        let memory = Memory::of(bt.proc.pid())?;
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
            memory,
        })
    }

    pub(super) fn floor_round(&mut self, without: Load, pair: usize) -> Result<Round> {
        let err = self.dir.join(format!("floor-{pair}.err"));
        let floor = self.start_floor(&err, 1)?;
        let before = run_stats(floor.progs[0])?;
        let (with, accepted) = self.counted_load()?;
        let after = run_stats(floor.progs[0])?;
        let memory = Memory::of(floor.proc.pid())?;
        self.stop_floor(floor)?;
        Ok(Round {
            tool: Tool::Floor,
            without,
            with,
            accepted,
            counted: None,
            kernel: vec![(Prog::Floor, after.since(before))],
            own: None,
            memory,
        })
    }

    pub(super) fn start_floor(&mut self, err: &Path, programs: usize) -> Result<Floor> {
        let floor = Floor::start(err, &self.poker, programs)?;
        self.ours.extend(floor.progs.iter().copied());
        Ok(floor)
    }

    pub(super) fn stop_floor(&mut self, floor: Floor) -> Result<()> {
        if let Some(complaint) = floor.stop()? {
            self.warnings.push(complaint);
        }
        Ok(())
    }

    /// One run of load with the tool attached, sampled by `perf record -a` in its middle.
    pub(super) fn profile(&mut self, tool: Tool, load_secs: f64) -> Result<Profile> {
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
        // Returns the connections nginx accepted over the run.
        let run = |bench: &Self| -> Result<u64> {
            // As in production: no clock reads around every program run (the tool is attached
            // already; its start-up check needs the run counts).
            let set_stats =
                |v: &str| fs::write(BPF_STATS, v).with_context(|| format!("writing {BPF_STATS}"));
            set_stats("0")?;
            let perf = record(&file)?;
            let load = bench.counted_load();
            let recorded = perf.finish(TOOL_TIMEOUT);
            set_stats("1")?;
            let (_, accepted) = load?;
            recorded?.checked("perf record")?;
            Ok(accepted)
        };
        let mut counted = None;
        match tool {
            Tool::Observer
            | Tool::ObserverEvents
            | Tool::ObserverAlone
            | Tool::ObserverElsewhere => {
                let bin = match tool {
                    Tool::ObserverAlone => without_backup(),
                    _ => self.observer.clone(),
                };
                // Watching an idle port, observer counts nothing of the load.
                let watched = tool != Tool::ObserverElsewhere;
                let port = if watched {
                    self.nginx.port
                } else {
                    self.poker.port()?
                };
                let events = (tool == Tool::ObserverEvents).then(Stdio::null);
                let obs = self.start_observer_at(&bin, port, events)?;
                let before = obs.read(port)?;
                let accepted = run(self)?;
                let after = obs.read(port)?;
                self.stop_observer(obs)?;
                counted = watched.then_some(Tally {
                    accepted,
                    opened: (after.opened - before.opened) as u64,
                    lost: (after.lost - before.lost) as u64,
                });
            }
            Tool::Floor | Tool::FloorPair => {
                let programs = if tool == Tool::Floor { 1 } else { 2 };
                let floor = self.start_floor(&self.dir.join("floor-profile.err"), programs)?;
                run(self)?;
                self.stop_floor(floor)?;
            }
            Tool::BpftraceEmpty | Tool::BpftraceCount | Tool::BpftraceCountElsewhere => {
                let script = if tool == Tool::BpftraceEmpty {
                    Script::Empty
                } else {
                    Script::Count
                };
                let port = if tool == Tool::BpftraceCountElsewhere {
                    self.poker.port()?
                } else {
                    self.nginx.port
                };
                let null = PathBuf::from("/dev/null");
                let bt = Bpftrace::start(script, port, &null, &null, &self.poker)?;
                self.ours.insert(bt.prog);
                run(self)?;
                self.stop_bpftrace(bt)?;
            }
            Tool::BpftracePrint | Tool::ObserverOpen | Tool::Tcplife | Tool::Tcpstates => {
                bail!("{} is not profiled", tool.label())
            }
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
        Ok(Profile {
            counted,
            ..Profile::of(tool, &report)
        })
    }

    pub(super) fn stop_bpftrace(&mut self, bt: Bpftrace) -> Result<()> {
        let status = bt.stop()?;
        if !status.success() {
            self.warnings
                .push(format!("bpftrace exited with {status} on SIGINT"));
        }
        Ok(())
    }

    /// observer with `--events json` into a file: one `open` event per accepted connection?
    pub(super) fn observer_events_check(&mut self, i: usize) -> Result<Check> {
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
    pub(super) fn bpftrace_print_check(&mut self, i: usize) -> Result<Check> {
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

/// Measurements made up for the unit tests of the figures and the report.
#[cfg(test)]
pub(super) mod sample {
    use super::*;
    use crate::bench::readings::{Level, Readings};

    pub(in crate::bench) fn load(rate: f64) -> Load {
        Load {
            completed: (rate * 2.0) as u64,
            failed: 0,
            secs: 2.0,
        }
    }

    pub(in crate::bench) fn memory(peak_mib: u64, rss_mib: u64, maps_mib: u64) -> Memory {
        Memory {
            peak_rss_kib: peak_mib * 1024,
            rss_kib: rss_mib * 1024,
            maps_bytes: maps_mib << 20,
        }
    }

    /// A round of `tool`: `without` and `with` conn/s, its programs' (ns, runs).
    pub(in crate::bench) fn round(
        tool: Tool,
        without: f64,
        with: f64,
        accepted: u64,
        counted: Option<u64>,
        kernel: &[(Prog, u64, u64)],
        memory: Memory,
    ) -> Round {
        let observer = matches!(
            tool,
            Tool::Observer | Tool::ObserverOpen | Tool::ObserverEvents
        );
        Round {
            tool,
            without: load(without),
            with: load(with),
            accepted,
            counted,
            kernel: kernel
                .iter()
                .map(|&(p, ns, runs)| (p, RunStats { ns, runs }))
                .collect(),
            own: observer.then_some(OwnCost {
                cpu_secs: 0.1,
                cpu_metric: 0.1,
                dropped: 0.0,
                lost: 0.0,
                retired: 0.0,
                backup_counted: 0.0,
            }),
            memory,
        }
    }

    pub(in crate::bench) fn level(held: usize, memory: Memory) -> Level {
        Level {
            target: held,
            held,
            gauge: held as f64,
            ss_count: held,
            scrape_ms: vec![1.0, 1.2, 1.1],
            back_to_back_ms: vec![0.9],
            ss_ms: vec![5.0],
            kernel_errors: 0.0,
            memory,
            node_ms: vec![20.0, 30.0, 40.0],
            node_established: (2 * held + 4) as f64,
            node_memory: self::memory(20, 18, 0),
        }
    }

    /// A level of TIME_WAIT sockets, all on the port, each census taking `cpu_ms`.
    pub(in crate::bench) fn census_level(held: usize, cpu_ms: f64) -> CensusLevel {
        CensusLevel {
            target: held,
            ss_count: vec![held as f64; 3],
            gauge: vec![held as f64; 3],
            host: held + 40,
            scrape_ms: vec![cpu_ms + 2.0, cpu_ms + 3.0, cpu_ms + 4.0],
            cached_ms: vec![1.5; 3],
            wall_ms: vec![cpu_ms * 1.2; 3],
            cpu_ms: vec![cpu_ms; 3],
            ss_ms: vec![cpu_ms / 2.0; 3],
        }
    }

    /// Two pairs of observer (metrics only), one of the floor and one of bpftrace's counting
    /// script.
    pub(in crate::bench) fn results() -> Results {
        use Prog::{Backup, Bpftrace, Floor, Main};
        Results {
            per_client: 10_000,
            rounds: vec![
                round(
                    Tool::Observer,
                    10_000.0,
                    9_000.0,
                    20_000,
                    Some(20_000),
                    &[(Main, 8_000_000, 40_000), (Backup, 2_000_000, 40_000)],
                    memory(28, 5, 102),
                ),
                round(
                    Tool::Observer,
                    10_000.0,
                    9_600.0,
                    20_000,
                    Some(19_990),
                    &[(Main, 6_000_000, 40_000), (Backup, 2_000_000, 40_000)],
                    memory(30, 6, 100),
                ),
                round(
                    Tool::Floor,
                    10_000.0,
                    9_900.0,
                    20_000,
                    None,
                    &[(Floor, 1_600_000, 40_000)],
                    memory(12, 3, 0),
                ),
                round(
                    Tool::BpftraceCount,
                    12_000.0,
                    9_000.0,
                    18_000,
                    Some(18_003),
                    &[(Bpftrace, 3_600_000, 36_000)],
                    memory(100, 100, 1),
                ),
            ],
            checks: Vec::new(),
            profiles: None,
            readings: Readings {
                levels: vec![
                    level(100, memory(9, 6, 102)),
                    level(5_000, memory(12, 8, 103)),
                ],
                startup: None,
                idle: None,
                holders: 1,
                gauge_after_release: 0.0,
                million: memory(9, 6, 123),
            },
            census: vec![census_level(100, 1.0), census_level(25_000, 80.0)],
            foreign: BTreeSet::new(),
            warnings: Vec::new(),
        }
    }
}
