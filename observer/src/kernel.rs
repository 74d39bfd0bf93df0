//! The only module that speaks aya: loads the eBPF program with its settings, attaches it,
//! and reads and writes its maps. Dropping `Kernel` detaches and unloads everything.
use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray, Queue, RingBuf},
    programs::{BtfTracePoint, FEntry, Iter, ProgramFd},
};
use observer_common::{
    conn::Conn,
    counters,
    filter::{
        BACKUP_PROGRAM, EXIT_PROGRAM, FORK_PROGRAM, PID_DESCENDANT, PID_TARGET, PROGRAM,
        REAP_PROGRAM, REMOTES_PROGRAM, REQUEST_PROGRAMS, SEEDS_PROGRAM, SWEEP_PROGRAM,
    },
    filter::{
        CgroupOffsets, CgroupTarget, LocalPortKey, Owner, PORT_LOCAL, PORT_LOCAL_NETNS,
        PORT_REMOTE, PortOwner, SockOffsets, flags, globals, maps,
    },
    limits::{MAX_BUCKETS, MAX_DOOMED},
    remote::{FULL_MASKS, Masks, RemoteKey},
    request::RequestOffsets,
    snapshot::{CONTROL_BASELINE_ACTIVE, CONTROL_SNAPSHOT_DONE, Seed, TupleKey},
    stats::{PortStats, StatsKey},
    sweep::Doomed,
    tracepoint,
};

use crate::{btf::NetnsOffsets, iterator::MapIterator, sizing::MapSizes};

/// The smallest ring buffer the kernel takes: one page.
const MIN_RING_BYTES: u32 = 4096;

static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// How the program is set up; fixed at load time.
#[derive(Clone, Debug)]
pub struct Settings {
    pub emit_events: bool,
    pub all_listeners: bool,
    pub process_targets: bool,
    pub netns: Option<NetnsOffsets>,
    /// Where the programs read a socket's protocol, ports and addresses.
    pub sock: SockOffsets,
    /// Histogram bucket upper bounds in nanoseconds, ascending, at most MAX_BUCKETS.
    pub bucket_bounds_ns: Vec<u64>,
    pub cgroups: Vec<CgroupTarget>,
    /// Where the programs find a socket's cgroup (needed with `cgroups` only).
    pub cgroup_offsets: CgroupOffsets,
    pub ring_bytes: u32,
    /// `--by-remote`: the prefix masks; `None` keeps nothing per remote.
    pub by_remote: Option<Masks>,
    /// `--pid`: the programs that follow the targets' forks and exits are loaded.
    pub pid_targets: bool,
    /// The maps' sizes (see `sizing`).
    pub sizes: MapSizes,
    /// Offset of `tgid` in `struct task_struct`.
    pub task_tgid: u32,
    /// Where a request socket's fields are: the programs that count the inbound handshakes
    /// that fail as request sockets are loaded (None: the kernel lacks what they attach to).
    pub request: Option<RequestOffsets>,
}

pub struct Kernel {
    // Owns the program and its link: dropping it detaches.
    _ebpf: Ebpf,
    prog_fd: ProgramFd,
    backup_fd: ProgramFd,
    /// The request programs (see `observer_common::request`), when loaded.
    request_fds: Vec<ProgramFd>,
    stats: PerCpuArray<MapData, PortStats>,
    stats_slots: HashMap<MapData, StatsKey, u32>,
    counters: PerCpuArray<MapData, u64>,
    port_flags: Array<MapData, u32>,
    target_remotes: Array<MapData, u32>,
    local_ports: HashMap<MapData, LocalPortKey, PortOwner>,
    pids: HashMap<MapData, u32, u8>,
    baseline: HashMap<MapData, TupleKey, Seed>,
    seen: HashMap<MapData, TupleKey, u8>,
    control: Array<MapData, u32>,
    events: Option<RingBuf<MapData>>,
    doomed: HashMap<MapData, u64, Doomed>,
    /// Held so that the process's map fds account for all of its kernel memory (their fdinfo's
    /// `memlock:`), as a tool that sums them would read it.
    _sockets: HashMap<MapData, u64, Conn>,
    free_slots: Queue<MapData, u32>,
    /// The maps' sizes (`sizing`).
    sizes: MapSizes,
    /// `--by-remote`: the iterators that list the remotes of the established connections, over
    /// SOCKETS and BASELINE (see `observer_common::remote`).
    by_remote: Option<[MapIterator; 2]>,
    /// The two iterators of the sweep (see `observer_common::sweep`), over SOCKETS and DOOMED.
    sweep: MapIterator,
    reap: MapIterator,
}

/// Everything the program could not do, summed over CPUs (see `observer_common::counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Events dropped: the ring was full, or the backup program handled the transition.
    pub ring_full: u64,
    pub sockets_full: u64,
    pub ports_full: u64,
    pub seen_full: u64,
    pub local_ports_full: u64,
    pub stale_sockets: u64,
    /// Transitions the kernel skipped for the main program (it was already running on that
    /// CPU, or another tracing program was) that the backup program did not handle either;
    /// `None` where the kernel does not count skipped runs (before 5.12).
    pub lost: Option<u64>,
    /// Transitions that interrupted the main program and were handled by the backup program.
    pub nested: u64,
    /// The kernel's counts of skipped runs (recursion_misses) of the main and backup programs;
    /// `None` where the kernel does not count them (before 5.12).
    pub skipped_main: Option<u64>,
    pub skipped_backup: Option<u64>,
    /// The same for the request programs, summed (None also where they are not loaded). A
    /// skipped run may be a failed handshake not counted.
    pub skipped_request: Option<u64>,
    /// connect()s and listen()s under `--cgroup` whose socket's cgroup could not be read.
    pub cgroup_unknown: u64,
    /// Runs of the main program nested in another on the same CPU (kernels without a recursion
    /// guard for these programs).
    pub nested_runs: u64,
    /// Connections counted opened when first met past ESTABLISHED, their open never delivered.
    pub late_opens: u64,
    /// A target's child process not made a target (the map of targets full).
    pub pids_full: u64,
    /// Map updates refused for a bucket lock this CPU held (see `counters::MAP_BUSY`).
    pub map_busy: u64,
}

impl Kernel {
    /// Loads the program and its maps (not attached yet).
    pub fn load(s: &Settings) -> Result<Kernel> {
        if PROGRAM_OBJECT.is_empty() {
            return Err(anyhow!(
                "this observer was built with AYA_BUILD_SKIP=1 and has no eBPF program"
            ));
        }
        let mut bounds = [0u64; MAX_BUCKETS];
        bounds[..s.bucket_bounds_ns.len()].copy_from_slice(&s.bucket_bounds_ns);
        let n_buckets = s.bucket_bounds_ns.len() as u32;
        let mut f = 0;
        if s.emit_events {
            f |= flags::EMIT_EVENTS;
        }
        if s.all_listeners {
            f |= flags::ALL_LISTENERS;
        }
        if s.process_targets {
            f |= flags::PROCESS_TARGETS;
        }
        let masks = s.by_remote.unwrap_or(FULL_MASKS);
        let (sk_net, net_inum) = s.netns.map_or((0, 0), |o| (o.sk_net, o.net_inum));
        let n_cgroups = s.cgroups.len() as u32;
        let sock = s.sock;
        let cgroup_offsets = s.cgroup_offsets;
        // A quarter full ring wakes the reader at once; below that it reads on its tick.
        let wakeup_bytes = u64::from(s.ring_bytes / 4);
        let preemptible = u32::from(crate::features::preemptible_tracepoints());
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::FLAGS, &f, true)
            .override_global(globals::SK_NET_OFFSET, &sk_net, true)
            .override_global(globals::NET_INUM_OFFSET, &net_inum, true)
            .override_global(globals::N_BUCKETS, &n_buckets, true)
            .override_global(globals::BUCKET_BOUNDS, &bounds, true)
            .override_global(globals::N_CGROUPS, &n_cgroups, true)
            .override_global(globals::SOCK_OFFSETS, &sock, true)
            .override_global(globals::CGROUP_OFFSETS, &cgroup_offsets, true)
            .override_global(globals::WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(globals::PREEMPTIBLE, &preemptible, true)
            .override_global(globals::REMOTE_MASKS, &masks, true)
            .override_global(globals::TASK_TGID_OFFSET, &s.task_tgid, true)
            .override_global(
                globals::REQUEST_OFFSETS,
                &s.request.unwrap_or_default(),
                true,
            )
            // The ring is only read with --events: without, its smallest size (a page), not
            // what --ring-kib asked for, which would be kernel memory kept for nothing.
            .map_max_entries(
                maps::EVENTS,
                if s.emit_events {
                    s.ring_bytes
                } else {
                    MIN_RING_BYTES
                },
            )
            .map_max_entries(maps::SOCKETS, s.sizes.sockets)
            .map_max_entries(maps::BASELINE, s.sizes.baseline)
            .map_max_entries(maps::SEEN, s.sizes.seen)
            .map_max_entries(maps::STATS, s.sizes.ports)
            .map_max_entries(maps::STATS_SLOTS, s.sizes.ports)
            .map_max_entries(maps::FREE_SLOTS, s.sizes.ports)
            .map_max_entries(maps::LOCAL_PORTS, s.sizes.local_ports)
            .map_max_entries(maps::PIDS, s.sizes.pids)
            .map_max_entries(maps::TARGET_REMOTES, s.sizes.target_remotes)
            .map_max_entries(maps::DONE, s.sizes.done)
            .load(PROGRAM_OBJECT)
            .map_err(privilege_hint)
            .context("loading the eBPF program into the kernel")?;

        // Both programs attach by the tracepoint's BTF type: aya parses the kernel's BTF for
        // that, and it is dropped again before anything else is allocated.
        let vmlinux = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        // The two on the TCP tracepoint, then, for --pid targets only, their process tree's.
        let mut programs = vec![
            (PROGRAM, tracepoint::NAME),
            (BACKUP_PROGRAM, tracepoint::NAME),
        ];
        if s.pid_targets {
            programs.extend([
                (FORK_PROGRAM, "sched_process_fork"),
                (EXIT_PROGRAM, "sched_process_exit"),
            ]);
        }
        let mut prog_fds = Vec::new();
        for (name, tracepoint) in programs {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
                .try_into()?;
            program
                .load(tracepoint, &vmlinux)
                .map_err(|e| load_error(name, e))?;
            prog_fds.push(program.fd()?.try_clone()?);
        }
        // On the request socket destructors, where the kernel has them (see `btf::Layout`) and
        // lets observer attach there: without them the rest still counts exactly, so a refusal
        // is a warning.
        let request_fds = if s.request.is_some() {
            load_request_programs(&mut ebpf, &vmlinux).unwrap_or_else(|e| {
                warn_no_request_programs(&e);
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let sockets: HashMap<MapData, u64, Conn> = take(&mut ebpf, maps::SOCKETS)?;
        let doomed: HashMap<MapData, u64, Doomed> = take(&mut ebpf, maps::DOOMED)?;
        let baseline: HashMap<MapData, TupleKey, Seed> = take(&mut ebpf, maps::BASELINE)?;
        let mut iterators = Vec::new();
        let mut wanted = vec![(SWEEP_PROGRAM, sockets.map()), (REAP_PROGRAM, doomed.map())];
        // --by-remote: the remotes of the established connections and of the snapshot's seeds.
        if s.by_remote.is_some() {
            wanted.extend([
                (REMOTES_PROGRAM, sockets.map()),
                (SEEDS_PROGRAM, baseline.map()),
            ]);
        }
        for (name, map) in wanted {
            let program: &mut Iter = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
                .try_into()?;
            program
                .load("bpf_map_elem", &vmlinux)
                .map_err(|e| load_error(name, e))?;
            iterators.push(MapIterator::attach(
                program.fd()?.as_fd(),
                map.fd().as_fd(),
            )?);
        }
        let by_remote = if s.by_remote.is_some() {
            let seeds = iterators.pop().expect("the seeds' iterator");
            let remotes = iterators.pop().expect("the remotes' iterator");
            Some([remotes, seeds])
        } else {
            None
        };
        let reap = iterators.pop().expect("two iterators");
        let sweep = iterators.pop().expect("two iterators");
        drop(vmlinux);
        let mut prog_fds = prog_fds.into_iter();
        let prog_fd = prog_fds.next().expect("the main program");
        let backup_fd = prog_fds.next().expect("the backup program");

        let mut free_slots: Queue<MapData, u32> = take(&mut ebpf, maps::FREE_SLOTS)?;
        for slot in 0..s.sizes.ports {
            free_slots
                .push(slot, 0)
                .context("handing the program its counters' slots")?;
        }
        let mut cgroups: Array<MapData, CgroupTarget> = take(&mut ebpf, maps::CGROUPS)?;
        for (i, c) in s.cgroups.iter().enumerate() {
            cgroups.set(i as u32, c, 0)?;
        }
        let events = if s.emit_events {
            Some(take(&mut ebpf, maps::EVENTS)?)
        } else {
            None
        };
        Ok(Kernel {
            _sockets: sockets,
            free_slots,
            sizes: s.sizes,
            by_remote,
            prog_fd,
            backup_fd,
            request_fds,
            stats: take(&mut ebpf, maps::STATS)?,
            stats_slots: take(&mut ebpf, maps::STATS_SLOTS)?,
            counters: take(&mut ebpf, maps::COUNTERS)?,
            port_flags: take(&mut ebpf, maps::PORT_FLAGS)?,
            target_remotes: take(&mut ebpf, maps::TARGET_REMOTES)?,
            local_ports: take(&mut ebpf, maps::LOCAL_PORTS)?,
            pids: take(&mut ebpf, maps::PIDS)?,
            baseline,
            seen: take(&mut ebpf, maps::SEEN)?,
            control: take(&mut ebpf, maps::CONTROL)?,
            events,
            doomed,
            sweep,
            reap,
            _ebpf: ebpf,
        })
    }

    /// Attaches the programs to the tracepoint: from now on every transition is seen (and,
    /// with `--pid`, every fork and exit of the targets' processes).
    pub fn attach(&mut self) -> Result<()> {
        // A kernel that counts no skipped runs (before 5.12) has no recursion guard for these
        // programs either: a run that comes while another is under way on the CPU runs nested
        // in it (5.10), so the main program takes every transition, and the backup would only
        // ever find its notes. It stays loaded there, and is not attached: one program a hit.
        let skips = misses(&self.prog_fd).is_some();
        // The main program first: a tracepoint runs its programs in the order they attached.
        for name in [PROGRAM, BACKUP_PROGRAM, FORK_PROGRAM, EXIT_PROGRAM] {
            let program: &mut BtfTracePoint = self
                ._ebpf
                .program_mut(name)
                .expect("checked at load")
                .try_into()?;
            if name == BACKUP_PROGRAM && (!skips || cfg!(feature = "without-backup")) {
                continue; // no run to take; or the bench's measurement of what it costs
            }
            if program.fd().is_err() {
                continue; // not loaded: not needed (the process tree without --pid)
            }
            program
                .attach()
                .with_context(|| format!("attaching {name} to its tracepoint"))?;
        }
        if let Err(e) = self.attach_request_programs() {
            warn_no_request_programs(&e);
            // Loaded but not all attached: none counts, rather than IPv4's alone.
            self.request_fds.clear();
            for (name, _) in REQUEST_PROGRAMS {
                let program: Option<&mut FEntry> =
                    self._ebpf.program_mut(name).and_then(|p| p.try_into().ok());
                if let Some(p) = program {
                    let _ = p.unload();
                }
            }
        }
        Ok(())
    }

    fn attach_request_programs(&mut self) -> Result<()> {
        if self.request_fds.is_empty() {
            return Ok(()); // not loaded
        }
        for (name, function) in REQUEST_PROGRAMS {
            let program: &mut FEntry = self
                ._ebpf
                .program_mut(name)
                .expect("checked at load")
                .try_into()?;
            program
                .attach()
                .with_context(|| format!("attaching {name} to the kernel's {function}"))?;
        }
        Ok(())
    }

    /// The maps' sizes, as loaded.
    pub fn sizes(&self) -> MapSizes {
        self.sizes
    }

    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Watches inbound connections to `port` in network namespace `netns` (0: every namespace).
    pub fn watch_local_port(&mut self, netns: u32, port: u16, owner: &PortOwner) -> Result<()> {
        self.local_ports
            .insert(LocalPortKey::new(netns, port), owner, 0)
            .with_context(|| format!("adding local port {port} to the watched ports"))?;
        let bits = if netns == 0 {
            PORT_LOCAL
        } else {
            PORT_LOCAL | PORT_LOCAL_NETNS
        };
        self.set_port_flag(port, bits)
    }

    /// Gives a (direction, port) pair the flags name its counters' slot before the programs
    /// attach. Otherwise its first connections ask the kernel program for one, and two asking at
    /// once (two CPUs, or a softirq's transition inside a run on one) can find the free slots,
    /// sized to the named pairs, all taken for an instant, or the map's bucket lock held on this
    /// CPU: a transition lost, counted `ports_map_full` (seen once on 6.1, at a test's start).
    pub fn reserve_counters(&mut self, key: StatsKey) -> Result<()> {
        if self.stats_slots.get(&key, 0).is_ok() {
            return Ok(());
        }
        let slot = self
            .free_slots
            .pop(0)
            .context("reserving a watched port's counters: no slot left")?;
        self.stats_slots
            .insert(key, slot, 0)
            .context("reserving a watched port's counters")?;
        Ok(())
    }

    /// Watches outbound connections to remote port `port`.
    pub fn watch_remote_port(&mut self, port: u16) -> Result<()> {
        self.set_port_flag(port, PORT_REMOTE)
    }

    /// A target process has a connection to remote port `port` (the snapshot found it): its
    /// transitions must get past the program's port filter.
    pub fn mark_target_remote(&mut self, port: u16) -> Result<()> {
        // Without process targets the map has one entry (`sizing`), and needs none: an outbound
        // connection the snapshot finds is one to a `--remote-port`, which the filter passes.
        if self.sizes.target_remotes > u32::from(port) {
            self.target_remotes.set(port as u32, 1, 0)?;
        }
        Ok(())
    }

    fn set_port_flag(&mut self, port: u16, bit: u32) -> Result<()> {
        let old = self.port_flags.get(&(port as u32), 0)?;
        self.port_flags.set(port as u32, old | bit, 0)?;
        Ok(())
    }

    /// A target process exited: its PID leaves the filter (connect()s and listen()s of a later
    /// process with that PID are not its).
    pub fn unwatch_pid(&mut self, pid: u32) -> Result<()> {
        self.pids
            .remove(&pid)
            .with_context(|| format!("removing PID {pid} from the targets"))
    }

    pub fn watch_pid(&mut self, pid: u32) -> Result<()> {
        self.pids
            .insert(pid, PID_TARGET, 0)
            .with_context(|| format!("adding PID {pid} to the targets"))
    }

    /// A process a target forked before observer attached: a target too, until it exits (the
    /// program takes it out then). False when it is a target already.
    pub fn watch_descendant(&mut self, pid: u32) -> Result<bool> {
        // BPF_NOEXIST: a `--pid` target keeps its own mark.
        match self.pids.insert(pid, PID_DESCENDANT, 1) {
            Ok(()) => Ok(true),
            Err(_) if self.pids.get(&pid, 0).is_ok() => Ok(false),
            Err(e) => Err(e).with_context(|| format!("adding PID {pid} to the targets")),
        }
    }

    /// (namespace, port, owner) of every watched local port, including those the program added.
    pub fn local_ports(&self) -> Vec<(LocalPortKey, Owner)> {
        self.local_ports
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, p)| (k, p.owner))
            .collect()
    }

    pub fn set_control(&mut self, index: u32, value: u32) -> Result<()> {
        self.control.set(index, value, 0)?;
        Ok(())
    }

    pub fn seed(&mut self, key: &TupleKey, seed: &Seed) -> Result<()> {
        self.baseline.insert(key, seed, 0)?;
        self.set_control(CONTROL_BASELINE_ACTIVE, 1)
    }

    pub fn unseed(&mut self, key: &TupleKey) {
        let _ = self.baseline.remove(key);
    }

    /// Ends the snapshot window and returns the sockets the program saw change during it.
    pub fn close_snapshot_window(&mut self) -> Result<HashSet<TupleKey>> {
        self.set_control(CONTROL_SNAPSHOT_DONE, 1)?;
        let seen: HashSet<TupleKey> = self.seen.keys().filter_map(|k| k.ok()).collect();
        for k in &seen {
            let _ = self.seen.remove(k);
        }
        Ok(seen)
    }

    /// Every port's counters, summed over CPUs.
    pub fn stats(&self) -> std::collections::HashMap<StatsKey, PortStats> {
        // Sized at once: with thousands of ports, growing by doubling holds two copies.
        let mut out = std::collections::HashMap::with_capacity(self.sizes.ports as usize);
        for entry in self.stats_slots.iter() {
            let Ok((key, slot)) = entry else { continue };
            let Ok(per_cpu) = self.stats.get(&slot, 0) else {
                continue;
            };
            let mut sum = PortStats::ZERO;
            for share in per_cpu.iter() {
                sum.merge(share);
            }
            out.insert(key, sum);
        }
        out
    }

    /// `--by-remote`: the established connections per remote, listed by the two iterators
    /// (see `observer_common::remote`). `None` without the flag.
    pub fn remote_counts(&self) -> Result<Option<std::collections::HashMap<RemoteKey, i64>>> {
        let Some(iterators) = &self.by_remote else {
            return Ok(None);
        };
        let mut out = std::collections::HashMap::new();
        for it in iterators {
            let bytes = it.run().context("listing the remotes of the connections")?;
            for chunk in bytes.chunks_exact(RemoteKey::SIZE) {
                // SAFETY: the iterators write whole keys; read_unaligned copies one out.
                let key = unsafe { std::ptr::read_unaligned(chunk.as_ptr() as *const RemoteKey) };
                *out.entry(key).or_insert(0) += 1;
            }
        }
        Ok(Some(out))
    }

    /// One sweep (see `observer_common::sweep`): the watched sockets whose memory says CLOSE
    /// while their entry does not.
    pub fn sweep(&self) -> Result<Vec<Doomed>> {
        let out = self.sweep.run().context("sweeping the watched sockets")?;
        Ok(out
            .chunks_exact(Doomed::SIZE)
            // SAFETY: the sweep writes whole `Doomed`s; read_unaligned copies one out.
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const Doomed) })
            .collect())
    }

    /// Retires in the kernel the sockets found dead in two sweeps (at most `MAX_DOOMED` at a
    /// time): each is counted closed once, if its entry is still the one the sweeps found.
    pub fn reap(&mut self, dead: &[Doomed]) -> Result<()> {
        let dead = &dead[..dead.len().min(MAX_DOOMED as usize)];
        for d in dead {
            self.doomed
                .insert(d.sk, d, 0)
                .context("handing the kernel a dead socket")?;
        }
        let result = self.reap.run().context("retiring dead sockets");
        for d in dead {
            let _ = self.doomed.remove(&d.sk);
        }
        result.map(drop)
    }

    pub fn health(&self) -> Health {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
                .unwrap_or(0)
        };
        let skipped_main = misses(&self.prog_fd);
        let nested = sum(counters::NESTED_HANDLED);
        Health {
            ring_full: sum(counters::RING_FULL),
            sockets_full: sum(counters::SOCKETS_FULL),
            ports_full: sum(counters::PORTS_FULL),
            seen_full: sum(counters::SEEN_FULL),
            local_ports_full: sum(counters::LOCAL_PORTS_FULL),
            lost: skipped_main.map(|m| m.saturating_sub(nested)),
            nested,
            stale_sockets: sum(counters::STALE_SOCKETS),
            skipped_main,
            skipped_backup: misses(&self.backup_fd),
            skipped_request: if self.request_fds.is_empty() {
                None
            } else {
                self.request_fds
                    .iter()
                    .map(misses)
                    .try_fold(0u64, |sum, m| m.map(|m| sum + m))
            },
            cgroup_unknown: sum(counters::CGROUP_UNKNOWN),
            nested_runs: sum(counters::NESTED_RUNS),
            late_opens: sum(counters::LATE_OPENS),
            pids_full: sum(counters::PIDS_FULL),
            map_busy: sum(counters::MAP_BUSY),
        }
    }
}

/// Loads the programs on the request socket destructors (see `observer_common::request`).
fn load_request_programs(ebpf: &mut Ebpf, vmlinux: &aya::Btf) -> Result<Vec<ProgramFd>> {
    let mut fds = Vec::new();
    for (name, function) in REQUEST_PROGRAMS {
        let program: &mut FEntry = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
            .try_into()?;
        match program.load(function, vmlinux) {
            Ok(()) => fds.push(program.fd()?.try_clone()?),
            Err(e) if is_eperm(&e) => {
                return Err(anyhow!(
                    "the kernel refused to attach a program to its function {function} \
                     (permission denied: function tracing, BPF trampolines, is forbidden or \
                     unavailable here)"
                ));
            }
            Err(e) => return Err(load_error(name, e)),
        }
    }
    Ok(fds)
}

/// The one line that says failed request sockets are not counted, and why (the kernel's BTF
/// lacks what they need, or the kernel refused them).
pub fn warn_no_request_programs(e: &anyhow::Error) {
    eprintln!(
        "observer: warning: inbound handshakes that fail before they become sockets (request \
         sockets) will not be counted as failed: {e:#}"
    );
}

/// A program the kernel would not load: the verifier's verdict, or what privilege is missing.
fn load_error(name: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    match e {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            let log = verifier_log.to_string();
            if std::env::var_os("OBSERVER_DEBUG").is_some() {
                eprintln!("{log}");
            }
            anyhow!("{}", rejection(name, &crate::features::release(), &log))
        }
        e => privilege_hint(e),
    }
}

/// The kernel's count of a program's skipped runs (`recursion_misses` in its fdinfo), or
/// `None` where the kernel keeps no such count (it appeared in 5.12).
fn misses(fd: &ProgramFd) -> Option<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_fd_raw());
    recursion_misses(&std::fs::read_to_string(path).ok()?)
}

/// The `recursion_misses` line of a program's fdinfo.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

trait RawFdExt {
    fn as_fd_raw(&self) -> i32;
}

impl RawFdExt for ProgramFd {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsFd as _;
        self.as_fd().as_raw_fd()
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("opening map {name}"))
}

/// What a user reads when the kernel's verifier rejects a program: which program, on which
/// kernel, and the verifier's last words (the error is at the end of its log, before the
/// statistics). The kernel says EACCES for a rejection, which is not a permission problem: the
/// errno is left out.
fn rejection(program: &str, release: &str, log: &str) -> String {
    const STATISTICS: &[&str] = &[
        "processed ",
        "verification time",
        "stack depth",
        "max_states_per_insn",
        "mark_read",
    ];
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !STATISTICS.iter().any(|s| l.starts_with(s)))
        .collect();
    let tail = &lines[lines.len().saturating_sub(VERIFIER_LINES)..];
    let mut out = format!(
        "the kernel's verifier rejected the eBPF program {program} on this kernel ({release}): a bug in observer for this kernel; please report it with these lines (the whole log: OBSERVER_DEBUG=1)"
    );
    if tail.is_empty() {
        out.push_str("\n  | (the verifier left no log)");
    }
    for l in tail {
        out.push_str("\n  | ");
        out.push_str(l);
    }
    out
}

/// Lines of the verifier's log shown on a rejection.
const VERIFIER_LINES: usize = 6;

/// Turns a permission error (EPERM anywhere in its chain) into the one thing a user must know.
fn privilege_hint<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    // The capabilities were checked before anything was loaded (`privilege`), and a memlock
    // limit is lifted where the kernel charges it (`memlock`): what is left is a policy.
    if is_eperm(&e) {
        anyhow!(
            "the kernel refused to load the eBPF programs (permission denied) although observer has CAP_BPF and CAP_PERFMON: a security policy forbids BPF here (kernel lockdown, SELinux, AppArmor, or a seccomp filter); the kernel log may say which"
        )
    } else {
        anyhow::Error::new(e)
    }
}

/// Whether an error, or one it came from, is the system's EPERM.
fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
        {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{is_eperm, recursion_misses, rejection};

    #[test]
    fn a_permission_error_is_told_by_its_errno_wherever_it_is_in_the_chain() {
        let eperm = || std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(is_eperm(&eperm()));
        let wrapped = aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: eperm(),
        });
        assert!(is_eperm(&wrapped));
        let other = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(!is_eperm(&other));
        // A message that merely mentions it is not one.
        assert!(!is_eperm(&std::io::Error::other("EPERM")));
    }

    #[test]
    fn a_rejection_shows_the_verifiers_last_words_not_a_permission_error() {
        // The end of 5.10's log for the program of the first benchmark round.
        let log = "func#0 @0\n0: R1=ctx(id=0,off=0,imm=0) R10=fp0\n0: (bf) r6 = r1\n\
            310: (7b) *(u64 *)(r10 -304) = r1\n311: (79) r1 = *(u64 *)(r10 -312)\n\
            invalid read from stack R10 off=-312 size=8\n\
            processed 4520 insns (limit 1000000) max_states_per_insn 4 total_states 301 peak_states 301 mark_read 9\n\n";
        let m = rejection("observer_main", "5.10.0-46-amd64", log);
        let lines: Vec<&str> = m.lines().collect();
        assert!(
            lines[0].starts_with("the kernel's verifier rejected the eBPF program observer_main on this kernel (5.10.0-46-amd64)"),
            "{m}"
        );
        assert_eq!(
            lines.last(),
            Some(&"  | invalid read from stack R10 off=-312 size=8"),
            "{m}"
        );
        assert_eq!(lines.len(), 1 + 6, "{m}");
        assert!(!m.contains("ermission") && !m.contains("os error"), "{m}");
        assert!(!lines[0].contains("  "), "{m}");
        assert!(rejection("observer_main", "x", "").contains("no log"));
    }

    #[test]
    fn skipped_runs_are_read_only_where_the_kernel_counts_them() {
        // A program's fdinfo on 6.x, and on 5.10, which has no such line.
        let new = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_tag:\tab\nmemlock:\t4096\nprog_id:\t7\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t12\nverified_insns:\t900\n";
        let old = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_tag:\tab\nmemlock:\t4096\nprog_id:\t7\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        assert_eq!(recursion_misses(new), Some(12));
        assert_eq!(recursion_misses(old), None);
    }
}
