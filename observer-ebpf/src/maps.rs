//! The programs' maps and the settings the daemon fixes at load time, with the small
//! accessors every part uses.
use crate::scratch::Scratch;
use aya_ebpf::Global;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf};
use observer_common::conn::Conn;
use observer_common::counters;
use observer_common::filter::{
    CGROUP_NONE, CgroupOffsets, CgroupTarget, LocalPortKey, PortOwner, SockOffsets,
};
use observer_common::limits::{
    DEFAULT_RING_BYTES, MAX_BASELINE, MAX_BUCKETS, MAX_CGROUPS, MAX_DOOMED, MAX_LOCAL_PORTS,
    MAX_PIDS, MAX_PORTS, MAX_SEEN, MAX_SOCKETS,
};
use observer_common::remote::{FULL_MASKS, Masks};
use observer_common::request::RequestOffsets;
use observer_common::snapshot::{
    CONTROL_BASELINE_ACTIVE, CONTROL_LEN, CONTROL_SNAPSHOT_DONE, Seed, TupleKey,
};
use observer_common::stats::{PortStats, StatsKey};
use observer_common::sweep::Doomed;

// Read-only settings, fixed by the daemon at load time (see `observer_common::filter::globals`).
#[unsafe(no_mangle)]
pub(crate) static FLAGS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static SK_NET_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static NET_INUM_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static N_BUCKETS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static BUCKET_BOUNDS: Global<[u64; MAX_BUCKETS]> = Global::new([0; MAX_BUCKETS]);
#[unsafe(no_mangle)]
pub(crate) static N_CGROUPS: Global<u32> = Global::new(0);
/// 1 where tracepoint programs are preemptible (Linux 7.0 on, or PREEMPT_RT): a run can then be
/// held between the main program and the backup long enough for the main program's note to be
/// overwritten (see `DONE`).
#[unsafe(no_mangle)]
pub(crate) static PREEMPTIBLE: Global<u32> = Global::new(0);
/// Bytes waiting in the ring above which a record wakes the reader up. Below, records are
/// submitted without a wakeup (a wakeup is a self-interrupt, microseconds per record) and the
/// reader collects them on its own short tick.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_BYTES: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets {
    protocol: 0,
    family: 0,
    num: 0,
    sport: 0,
    dport: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
    state: 0,
    max_ack_backlog: 0,
    err: 0,
    shutdown: 0,
    bytes_sent: 0,
    bytes_retrans: 0,
    bytes_received: 0,
    srtt_us: 0,
    total_retrans: 0,
});

/// Field `$field` of `SOCK_OFFSETS`, read alone. `Global::load` is a volatile read of the whole
/// struct, every field a load of its own, and the programs read an offset at nearly every step:
/// 18 loads for one offset showed in the main program's profile.
macro_rules! sock_offset {
    ($field:ident) => {{
        let p = core::ptr::addr_of!($crate::maps::SOCK_OFFSETS)
            .cast::<observer_common::filter::SockOffsets>();
        // (Allowed: the macro is used inside unsafe blocks too.)
        #[allow(unused_unsafe)]
        // SAFETY: a `Global` is its value (`repr(transparent)`), set before the program loads;
        // volatile, as `Global::load`, so that the compiler keeps the read.
        let v = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).$field)) };
        v
    }};
}
pub(crate) use sock_offset;

#[unsafe(no_mangle)]
pub(crate) static CGROUP_OFFSETS: Global<CgroupOffsets> = Global::new(CgroupOffsets {
    cgroup_kind: CGROUP_NONE,
    sk_cgroup: 0,
    level: 0,
    ancestors: 0,
    ancestors_are_pointers: 0,
    kn: 0,
    kn_id: 0,
});

/// Offset of `tgid` in `struct task_struct` (for `tree`).
#[unsafe(no_mangle)]
pub(crate) static TASK_TGID_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static REQUEST_OFFSETS: Global<RequestOffsets> = Global::new(RequestOffsets {
    listener: 0,
    child: 0,
    synack: 0,
});
/// The `--remote-prefix` masks (see `observer_common::remote`).
#[unsafe(no_mangle)]
pub(crate) static REMOTE_MASKS: Global<Masks> = Global::new(FULL_MASKS);

/// A network namespace not read yet (0 is a real answer: "unknown", or "every namespace").
pub(crate) const NETNS_NOT_READ: u32 = u32::MAX;

/// Watched connections, keyed by socket address; an entry lives from birth (or first sighting)
/// to CLOSE.
#[map]
pub(crate) static SOCKETS: HashMap<u64, Conn> = HashMap::with_max_entries(MAX_SOCKETS, 0);
/// Counters per (direction, port), per CPU, at the slot `STATS_SLOTS` gives the pair. A
/// connection keeps its slot, so a transition reaches its counters without a hash lookup.
#[map]
pub(crate) static STATS: PerCpuArray<PortStats> = PerCpuArray::with_max_entries(MAX_PORTS, 0);
#[map]
pub(crate) static STATS_SLOTS: HashMap<StatsKey, u32> = HashMap::with_max_entries(MAX_PORTS, 0);
/// Slots not handed out yet: the daemon fills it at load (the BPF target of this build has
/// no atomic fetch-and-add to count them out).
#[map]
pub(crate) static FREE_SLOTS: Queue<u32> = Queue::with_max_entries(MAX_PORTS, 0);
/// Per port number: PORT_LOCAL / PORT_REMOTE bits, a cheap first filter.
#[map]
pub(crate) static PORT_FLAGS: Array<u32> = Array::with_max_entries(65_536, 0);
/// Per remote port number: 1 once a target process has a tracked connection to it (from its
/// connect(), or from the snapshot), so that its later transitions get past the port filter.
/// Only ever set to 1, by the program and by the daemon alike.
#[map]
pub(crate) static TARGET_REMOTES: Array<u32> = Array::with_max_entries(65_536, 0);
/// Local ports watched for inbound connections, per network namespace (0: all), with their owner.
#[map]
pub(crate) static LOCAL_PORTS: HashMap<LocalPortKey, PortOwner> =
    HashMap::with_max_entries(MAX_LOCAL_PORTS, 0);
/// Target processes (tgid): `PID_TARGET` for a `--pid`, `PID_DESCENDANT` for a process it
/// forked (directly or not).
#[map]
pub(crate) static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PIDS, 0);
/// Target cgroup v2 directories (N_CGROUPS in use).
#[map]
pub(crate) static CGROUPS: Array<CgroupTarget> = Array::with_max_entries(MAX_CGROUPS, 0);
/// Connections counted by the start-up snapshot, until their first transition.
#[map]
pub(crate) static BASELINE: HashMap<TupleKey, Seed> = HashMap::with_max_entries(MAX_BASELINE, 0);
/// Connections that changed while the snapshot was taken.
#[map]
pub(crate) static SEEN: HashMap<TupleKey, u8> = HashMap::with_max_entries(MAX_SEEN, 0);
#[map]
pub(crate) static CONTROL: Array<u32> = Array::with_max_entries(CONTROL_LEN, 0);
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::LEN, 0);
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
/// Watched sockets the daemon found dead in two sweeps, for the reaping iterator (see
/// `observer_common::sweep`); the daemon empties it after each run.
#[map]
pub(crate) static DOOMED: HashMap<u64, Doomed> = HashMap::with_max_entries(MAX_DOOMED, 0);
/// Where runs are preemptible: the CLOSEs the main program took whose backup run has not come
/// yet, by transition key (`transition_key`), so that the backup, meeting such a CLOSE without
/// its note, knows it was taken and does not count its connection a second time (see `adopt`).
/// The note is lost when the task is held between the two programs (other tasks' outermost runs
/// empty the ring), and on any kernel when an interrupt comes between them (its softirq's
/// outermost run empties it). By key, not by task: that softirq runs as the interrupted task,
/// and a record per task was overwritten by its CLOSEs (7.2.13 counted a connection twice in
/// about 1 run in 25 of the adversarial tests). The backup removes the key when it meets it.
#[map]
pub(crate) static DONE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);
/// Per CPU: what the two programs keep between and within their runs (see `Scratch`).
#[map]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn port_flags(port: u16) -> u32 {
    PORT_FLAGS.get(port as u32).copied().unwrap_or(0)
}

#[inline(always)]
pub(crate) fn control(index: u32) -> u32 {
    CONTROL.get(index).copied().unwrap_or(0)
}

#[inline(always)]
pub(crate) fn snapshot_open() -> bool {
    control(CONTROL_SNAPSHOT_DONE) == 0
}

#[inline(always)]
pub(crate) fn baseline_active() -> bool {
    control(CONTROL_BASELINE_ACTIVE) != 0
}

#[inline(always)]
pub(crate) fn bound(i: usize) -> u64 {
    if i >= MAX_BUCKETS {
        return u64::MAX;
    }
    let p = &BUCKET_BOUNDS as *const Global<[u64; MAX_BUCKETS]> as *const u64;
    // SAFETY: i < MAX_BUCKETS, inside the global.
    unsafe { core::ptr::read_volatile(p.add(i)) }
}

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's counter; atomic against a nested run.
        observer_common::stats::add(unsafe { &mut *p }, 1);
    }
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
