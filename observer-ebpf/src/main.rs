//! observer's kernel program, on the tracepoint `sock:inet_sock_set_state`.
//!
//! For every TCP state change it decides whether the socket is watched (filter), updates that
//! port's per-CPU counters (count), and, when asked, sends a record through the ring (emit).
//! The rules of a connection's life live in `observer_common::conn`, unit-tested on the host.
//!
//! Two programs share that logic, both attached to the tracepoint by its BTF type: they get the
//! `struct sock *` itself and load its fields directly. The kernel skips a program that is
//! already running on the CPU (counted in its `recursion_misses`): a softirq bringing another
//! transition while ours runs in process context. So the backup program, attached after the main
//! one, runs after it for every transition and handles exactly those the main program did not:
//! the main program notes each transition it takes in a small per-CPU ring (`Scratch::notes`) first
//! thing; the backup takes its own transition out of that table, or handles it when it is not
//! there. Counter updates are single atomic adds, so a nested update and the interrupted one
//! never overwrite each other.
//!
//! Written for the verifiers of every kernel from 5.10 on (the VM matrix, `cargo xtask vm-test`,
//! proves it), which refuse more than this machine's:
//! - only helpers offered to tracing programs since 5.10 (not the cgroup ancestor helper, 5.14;
//!   a target's cgroup comes from the socket's own cgroup data, read through BTF offsets);
//! - nothing with an undefined part is copied: no `Option` or enum with a payload crosses a
//!   branch into a struct or the stack (a flag and a plain value instead), since verifiers
//!   before ~6.8 refuse to read an uninitialised stack slot;
//! - every function is `#[inline(always)]`: no BPF-to-BPF calls, whose argument tracking
//!   differs between verifiers (older ones explored paths that left a register unset);
//! - nesting is expected: 5.10 has no recursion guard for these programs, so the main
//!   program can interrupt itself on a CPU, and its notes for the backup stay right then.
#![no_std]
#![no_main]
// Its warnings only reach cargo as build-script output, easy to miss: make them errors.
#![deny(warnings)]

use aya_ebpf::{
    Global,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_seq_write,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
    programs::BtfTracePointContext,
};
use observer_common::{
    DIR_INBOUND, DIR_OUTBOUND,
    conn::{
        Conn, EVENT_NONE, FLAG_OPEN_SEEN, FLAG_PREEXISTING, Step, birth_port, first_sighting,
        unseeded_sides,
    },
    counters,
    filter::{
        CGROUP_NONE, CGROUP_TAGGED, CgroupOffsets, CgroupTarget, LocalPortKey, Owner, PORT_LOCAL,
        PORT_LOCAL_NETNS, PORT_REMOTE, SockOffsets, flags,
    },
    limits::{
        DEFAULT_RING_BYTES, MAX_BASELINE, MAX_BUCKETS, MAX_CGROUPS, MAX_DOOMED, MAX_LOCAL_PORTS,
        MAX_PIDS, MAX_PORTS, MAX_SEEN, MAX_SOCKETS,
    },
    record::{RECORD_ADDRESSES_GONE, RECORD_HAS_DURATION, RECORD_PREEXISTING, Record},
    snapshot::{
        CONTROL_ADOPT_UNSEEDED, CONTROL_BASELINE_ACTIVE, CONTROL_LEN, CONTROL_SNAPSHOT_DONE, Seed,
        TupleKey,
    },
    stats::{PortStats, StatsKey, bucket_of},
    sweep::Doomed,
    tcp,
    tracepoint::{AF_INET, IPPROTO_TCP},
};

// Read-only settings, fixed by the daemon at load time (see `observer_common::filter::globals`).
#[unsafe(no_mangle)]
static FLAGS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SK_NET_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static NET_INUM_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static N_BUCKETS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BUCKET_BOUNDS: Global<[u64; MAX_BUCKETS]> = Global::new([0; MAX_BUCKETS]);
#[unsafe(no_mangle)]
static N_CGROUPS: Global<u32> = Global::new(0);
/// 1 where tracepoint programs are preemptible (Linux 7.0 on, or PREEMPT_RT): a run can then be
/// held between the main program and the backup long enough for the main program's note to be
/// overwritten (see `DONE`).
#[unsafe(no_mangle)]
static PREEMPTIBLE: Global<u32> = Global::new(0);
/// Bytes waiting in the ring above which a record wakes the reader up. Below, records are
/// submitted without a wakeup (a wakeup is a self-interrupt, microseconds per record) and the
/// reader collects them on its own short tick.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets {
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
});
#[unsafe(no_mangle)]
static CGROUP_OFFSETS: Global<CgroupOffsets> = Global::new(CgroupOffsets {
    cgroup_kind: CGROUP_NONE,
    sk_cgroup: 0,
    level: 0,
    ancestors: 0,
    ancestors_are_pointers: 0,
    kn: 0,
    kn_id: 0,
});

/// A network namespace not read yet (0 is a real answer: "unknown", or "every namespace").
const NETNS_NOT_READ: u32 = u32::MAX;

/// Watched connections, keyed by socket address; an entry lives from birth (or first sighting)
/// to CLOSE.
#[map]
static SOCKETS: HashMap<u64, Conn> = HashMap::with_max_entries(MAX_SOCKETS, 0);
/// Counters per (direction, port), per CPU, at the slot `STATS_SLOTS` gives the pair. A
/// connection keeps its slot, so a transition reaches its counters without a hash lookup.
#[map]
static STATS: PerCpuArray<PortStats> = PerCpuArray::with_max_entries(MAX_PORTS, 0);
#[map]
static STATS_SLOTS: HashMap<StatsKey, u32> = HashMap::with_max_entries(MAX_PORTS, 0);
/// Slots not handed out yet: the daemon fills it at load (the BPF target of this build has
/// no atomic fetch-and-add to count them out).
#[map]
static FREE_SLOTS: Queue<u32> = Queue::with_max_entries(MAX_PORTS, 0);
/// Per port number: PORT_LOCAL / PORT_REMOTE bits, a cheap first filter.
#[map]
static PORT_FLAGS: Array<u32> = Array::with_max_entries(65_536, 0);
/// Per remote port number: 1 once a target process has a tracked connection to it (from its
/// connect(), or from the snapshot), so that its later transitions get past the port filter.
/// Only ever set to 1, by the program and by the daemon alike.
#[map]
static TARGET_REMOTES: Array<u32> = Array::with_max_entries(65_536, 0);
/// Local ports watched for inbound connections, per network namespace (0: all), with their owner.
#[map]
static LOCAL_PORTS: HashMap<LocalPortKey, Owner> = HashMap::with_max_entries(MAX_LOCAL_PORTS, 0);
/// Target processes (tgid).
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PIDS, 0);
/// Target cgroup v2 directories (N_CGROUPS in use).
#[map]
static CGROUPS: Array<CgroupTarget> = Array::with_max_entries(MAX_CGROUPS, 0);
/// Connections counted by the start-up snapshot, until their first transition.
#[map]
static BASELINE: HashMap<TupleKey, Seed> = HashMap::with_max_entries(MAX_BASELINE, 0);
/// Connections that changed while the snapshot was taken.
#[map]
static SEEN: HashMap<TupleKey, u8> = HashMap::with_max_entries(MAX_SEEN, 0);
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(CONTROL_LEN, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::LEN, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
/// Watched sockets the daemon found dead in two sweeps, for the reaping iterator (see
/// `observer_common::sweep`); the daemon empties it after each run.
#[map]
static DOOMED: HashMap<u64, Doomed> = HashMap::with_max_entries(MAX_DOOMED, 0);
/// Per task (pid_tgid), where runs are preemptible: the last CLOSE the main program took, so that
/// the backup, meeting that CLOSE again without its note (overwritten while the task was held
/// between the two programs), knows it was taken and does not count its connection a second
/// time (see `adopt`).
#[map]
static DONE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);
/// Per CPU: what the two programs keep between and within their runs (see `Scratch`).
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const RECENT_LEN: usize = 8;
/// Address words per program: one per nesting level. 5.10 nests a program in itself: a
/// softirq's transition in a process's run, two levels; TCP changes state in no other context.
const LEVELS: usize = 4;
const MAIN: usize = 0;
const BACKUP: usize = 1;

/// Each field is written by one program (the notes: put by the main one, cleared by the backup
/// for the transition it runs for). The kernel never runs a program
/// twice at once on a CPU, except 5.10, which nests it in itself, and a nested run ends before
/// the run it interrupted goes on; from 7.0 a run can be preempted by another task, but the
/// other task's runs of that program are then skipped, not run. So a per-program depth, put
/// back by every run before it returns, tells each run a word of its own.
#[repr(C)]
struct Scratch {
    /// The transitions the main program took and the backup program has not yet come to, for
    /// the backup (see `put_note`); 0 marks a free slot.
    notes: [u64; RECENT_LEN],
    /// Notes written so far: where the next one goes when no slot is free.
    written: u64,
    /// Runs of each program under way on the CPU.
    depth: [u64; 2],
    /// Per program and nesting level: a word to turn the socket pointer into its address.
    address: [[u64; LEVELS]; 2],
}

/// One transition of one socket: a kernel pointer's top 16 bits are all ones, so the states can
/// go there without two transitions sharing a key.
#[inline(always)]
fn transition_key(sk: u64, old: u8, new: u8) -> u64 {
    sk ^ ((old as u64) << 56) ^ ((new as u64) << 48)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn observer_main(ctx: BtfTracePointContext) -> i32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch, fields of this program only (see `Scratch`).
    let depth = unsafe { enter(&mut (*s).depth[MAIN]) };
    if depth != 0 {
        count(counters::NESTED_RUNS);
    }
    // SAFETY: as above; the index is masked into range.
    let cell = unsafe { &mut (*s).address[MAIN][depth as usize & (LEVELS - 1)] };
    if let Some(sock) = Sock::of(&ctx, cell) {
        let key = transition_key(sock.sk, sock.old, sock.new);
        // SAFETY: as above.
        unsafe { put_note(s, key) };
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        let _ = handle(&sock, Line::Main);
    }
    // SAFETY: as above.
    unsafe { leave(&mut (*s).depth[MAIN], depth) };
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn observer_backup(ctx: BtfTracePointContext) -> i32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch, fields of this program only (see `Scratch`).
    let depth = unsafe { enter(&mut (*s).depth[BACKUP]) };
    // SAFETY: as above; the index is masked into range.
    let cell = unsafe { &mut (*s).address[BACKUP][depth as usize & (LEVELS - 1)] };
    if let Some(sock) = Sock::of(&ctx, cell) {
        // SAFETY: the main program's notes; the backup only clears the one it takes.
        if !unsafe { take_note(&mut (*s).notes, transition_key(sock.sk, sock.old, sock.new)) } {
            count(counters::NESTED_HANDLED);
            let _ = handle(&sock, Line::Backup);
        }
    }
    // SAFETY: as above.
    unsafe { leave(&mut (*s).depth[BACKUP], depth) };
    0
}

/// One more run of a program on this CPU: returns how many were under way.
///
/// # Safety
/// `depth` is this CPU's depth of the calling program.
#[inline(always)]
unsafe fn enter(depth: *mut u64) -> u64 {
    // SAFETY: as the caller promises.
    unsafe {
        let d = core::ptr::read_volatile(depth);
        core::ptr::write_volatile(depth, d + 1);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        d
    }
}

/// The run that `enter` returned `d` for ends.
///
/// # Safety
/// As for `enter`.
#[inline(always)]
unsafe fn leave(depth: *mut u64, d: u64) {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: as the caller promises.
    unsafe { core::ptr::write_volatile(depth, d) };
}

/// Notes the transition `key` for the backup program, in a free slot: the backup clears the
/// notes it takes, so runs nested in this one (5.10), which note and take theirs before this
/// run goes on, leave this run's note alone however many they are. With no slot free (notes
/// the backup never took: its run was skipped, or preempted from 7.0) the oldest is
/// overwritten, and the backup then handles that transition again, which changes nothing.
///
/// # Safety
/// `s` is this CPU's scratch, and the caller is the main program.
#[inline(always)]
unsafe fn put_note(s: *mut Scratch, key: u64) {
    // SAFETY: as the caller promises; every index is masked into range.
    unsafe {
        let written = core::ptr::read_volatile(&(*s).written);
        let mut slot = written as usize & (RECENT_LEN - 1);
        let mut i = 0;
        while i < RECENT_LEN {
            if core::ptr::read_volatile(&(*s).notes[i]) == 0 {
                slot = i;
                break;
            }
            i += 1;
        }
        // The slot is taken (a key written) before anything else: a run nested in this one
        // after this write sees it taken, and one that came before it is done with the slot
        // (and cleared it) before this run writes it.
        core::ptr::write_volatile(&mut (*s).notes[slot & (RECENT_LEN - 1)], key);
        core::ptr::write_volatile(&mut (*s).written, written.wrapping_add(1));
    }
}

/// Whether the main program noted the transition `key` (the note is cleared).
///
/// # Safety
/// `notes` is this CPU's ring of notes.
#[inline(always)]
unsafe fn take_note(notes: *mut [u64; RECENT_LEN], key: u64) -> bool {
    let mut i = 0;
    while i < RECENT_LEN {
        // SAFETY: as the caller promises; i < RECENT_LEN.
        unsafe {
            let note = &mut (*notes)[i];
            if core::ptr::read_volatile(note) == key {
                core::ptr::write_volatile(note, 0);
                return true;
            }
        }
        i += 1;
    }
    false
}

/// One transition: the socket, as the tracepoint passes it (a pointer the verifier knows the
/// type of, so its fields are plain loads), its address as a number, and the two states.
#[derive(Clone, Copy)]
struct Sock {
    ptr: *const u8,
    sk: u64,
    old: u8,
    new: u8,
    /// Local and remote port, read once by `with_ports` (0 until then): the local one can take
    /// a helper call.
    sport: u16,
    dport: u16,
}

impl Sock {
    #[inline(always)]
    fn of(ctx: &BtfTracePointContext, cell: *mut u64) -> Option<Sock> {
        // The tracepoint's arguments: (const struct sock *, int oldstate, int newstate).
        let (ptr, old, new) = (
            ctx.arg::<*const u8>(0),
            ctx.arg::<u64>(1) as u8,
            ctx.arg::<u64>(2) as u8,
        );
        // The verifier allows no arithmetic on a typed kernel pointer, and the maps are keyed by
        // the socket's address: a round trip through a word of this run's own (see `Scratch`)
        // gives that address as a number.
        // SAFETY: this run's word of the map.
        let sk = unsafe {
            core::ptr::write_volatile(cell, ptr as u64);
            core::ptr::read_volatile(cell)
        };
        Some(Sock {
            ptr,
            sk,
            old,
            new,
            sport: 0,
            dport: 0,
        })
    }

    /// A field of `struct sock` at an offset the daemon found in the kernel's BTF. The offset
    /// comes from read-only data, which the verifier reads as a constant and checks against the
    /// type.
    #[inline(always)]
    fn field<T>(&self, off: u32) -> T {
        // SAFETY: checked by the verifier (a load through a typed kernel pointer).
        unsafe { core::ptr::read_volatile(self.ptr.add(off as usize) as *const T) }
    }

    #[inline(always)]
    fn protocol(&self) -> u16 {
        self.field(SOCK_OFFSETS.load().protocol)
    }

    /// The same transition with its ports read.
    #[inline(always)]
    fn with_ports(&self) -> Sock {
        Sock {
            sport: self.read_sport(),
            dport: u16::from_be(self.field(SOCK_OFFSETS.load().dport)),
            ..*self
        }
    }

    #[inline(always)]
    fn read_sport(&self) -> u16 {
        let o = SOCK_OFFSETS.load();
        let num: u16 = self.field(o.num);
        if num != 0 || self.new != tcp::CLOSE {
            return num;
        }
        // At CLOSE the port is released already; inet_sport still holds it.
        // SAFETY: bpf_probe_read_kernel checks the address.
        let port = unsafe { bpf_probe_read_kernel((self.sk + o.sport as u64) as *const u16) };
        u16::from_be(port.unwrap_or(0))
    }

    /// (family, local address, remote address); IPv4 fills the first 4 bytes.
    #[inline(always)]
    fn addrs(&self) -> (u16, [u8; 16], [u8; 16]) {
        let o = SOCK_OFFSETS.load();
        let family: u16 = self.field(o.family);
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        if family == AF_INET {
            s[..4].copy_from_slice(&self.field::<u32>(o.saddr).to_ne_bytes());
            d[..4].copy_from_slice(&self.field::<u32>(o.daddr).to_ne_bytes());
        } else {
            s = self.field16(o.saddr_v6);
            d = self.field16(o.daddr_v6);
        }
        (family, s, d)
    }

    /// A 16-byte field (an IPv6 address) as two 8-byte loads.
    #[inline(always)]
    fn field16(&self, off: u32) -> [u8; 16] {
        let (a, b) = (self.field::<u64>(off), self.field::<u64>(off + 8));
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a.to_ne_bytes());
        out[8..].copy_from_slice(&b.to_ne_bytes());
        out
    }

    #[inline(always)]
    fn tuple(&self, netns: u32) -> TupleKey {
        let (family, saddr, daddr) = self.addrs();
        TupleKey {
            netns,
            family,
            sport: self.sport,
            dport: self.dport,
            _pad: 0,
            saddr,
            daddr,
        }
    }
}

/// Which program runs the shared logic: the main one, or the backup, which can meet a transition
/// the main one already took (its note overwritten while its run was held).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    Main,
    Backup,
}

#[inline(always)]
fn handle(tp: &Sock, line: Line) -> Option<()> {
    if tp.protocol() != IPPROTO_TCP {
        return None;
    }
    let (old, new) = (tp.old, tp.new);
    if old == new {
        return None;
    }
    let tp = &tp.with_ports();
    let (sk, sport, dport) = (tp.sk, tp.sport, tp.dport);
    let cfg = FLAGS.load();
    if new == tcp::LISTEN {
        return on_listen(cfg, sk, sport);
    }
    if old == tcp::LISTEN && new != tcp::SYN_RECV {
        return None; // a listener closed
    }
    let sport_flags = port_flags(sport);
    let local = sport_flags & PORT_LOCAL != 0;
    let remote = port_flags(dport) & PORT_REMOTE != 0;
    let connect = old == tcp::CLOSE && new == tcp::SYN_SENT;
    // A target's outbound connection: its connect(), or a later transition of one to a remote
    // port some target's connection was tracked to. Every seed of the snapshot passes too.
    let targets = cfg & flags::PROCESS_TARGETS != 0;
    let target_remote = targets && (connect || TARGET_REMOTES.get(dport as u32) == Some(&1));
    if !local && !remote && !target_remote {
        return None; // cannot be ours: the common case on a busy host
    }
    // A birth: a new inbound connection (the child socket), or connect().
    let birth = old == tcp::LISTEN || connect;
    if let Some(p) = SOCKETS.get_ptr_mut(sk) {
        // SAFETY: transitions of one socket are serialised by the socket's lock.
        let conn = unsafe { &mut *p };
        if !birth {
            return advance(tp, sk, conn, new, line);
        }
        // This birth, handled already: by the main program, where the backup could not find its
        // note (from 7.0 a preempted run lets other tasks' transitions come between the two).
        if conn.took_birth(new, birth_port(old, sport, dport)) {
            return None;
        }
        // The address was freed and reused without a CLOSE that we saw: retire the old entry,
        // once: its removal claims it (the reaping iterator may be retiring it too).
        let stale = *conn;
        if SOCKETS.remove(sk).is_ok() {
            retire_stale(&stale);
            emit_retired(sk, &stale);
        }
    }
    if old == tcp::LISTEN {
        if !local {
            return None;
        }
        let mut netns = NETNS_NOT_READ;
        let owner = local_owner(sk, sport, sport_flags, &mut netns)?;
        let conn = with_owner(first_sighting(DIR_INBOUND, sport, old, false), &owner);
        return track_new(tp, sk, conn, new, netns, true, false);
    }
    if birth {
        // connect() runs in the connecting process: it is the owner for sure.
        if !remote {
            if !(targets && is_target(sk)) {
                return None;
            }
            if let Some(p) = TARGET_REMOTES.get_ptr_mut(dport as u32) {
                // SAFETY: an element of the map; every writer writes 1.
                unsafe { core::ptr::write_volatile(p, 1) };
            }
        }
        let owner = current_owner();
        let conn = with_owner(first_sighting(DIR_OUTBOUND, dport, old, false), &owner);
        return track_new(tp, sk, conn, new, NETNS_NOT_READ, true, false);
    }
    adopt(tp, sk, old, new, sport_flags, remote, line)
}

/// First sighting of a socket that existed before observer: counted by the start-up snapshot if
/// the kernel holds its seed, otherwise from its new state on.
#[inline(always)]
fn adopt(
    tp: &Sock,
    sk: u64,
    old: u8,
    new: u8,
    sport_flags: u32,
    remote: bool,
    line: Line,
) -> Option<()> {
    let local = sport_flags & PORT_LOCAL != 0;
    let adopt_established = snapshot_open() || control(CONTROL_ADOPT_UNSEEDED) != 0;
    let child = tp.field::<u32>(SOCK_OFFSETS.load().max_ack_backlog) != 0;
    let mut sides = unseeded_sides(old, local, remote, adopt_established, child);
    // A CLOSE with no entry, met by the backup, may be one the main program took already (the
    // entry it removed; its note overwritten while this task was held between the two), not a
    // connection whose every earlier step was lost: counting it late would count that
    // connection twice. Where runs are not preemptible a note cannot be lost so.
    if line == Line::Backup && new == tcp::CLOSE && sides.late && PREEMPTIBLE.load() != 0 {
        let key = transition_key(sk, old, new);
        // SAFETY: a plain read of a map value.
        if unsafe { DONE.get(bpf_get_current_pid_tgid()) } == Some(&key) {
            sides.inbound = false;
            sides.outbound = false;
        }
    }
    let seeded = baseline_active();
    if !seeded && !sides.inbound && !sides.outbound {
        return None;
    }
    let mut netns = netns_of(sk);
    let key = tp.tuple(netns);
    // SAFETY: a plain read of a map value.
    if seeded && let Some(seed) = unsafe { BASELINE.get(key) } {
        let seed = *seed;
        let _ = BASELINE.remove(key);
        let conn = with_owner(
            first_sighting(seed.direction, seed.port, old, true),
            &seed.owner,
        );
        return track_new(tp, sk, conn, new, netns, false, false);
    }
    let sport = key.sport;
    let inbound = if sides.inbound {
        local_owner(sk, sport, sport_flags, &mut netns)
    } else {
        None
    };
    let conn = if let Some(owner) = inbound {
        with_owner(first_sighting(DIR_INBOUND, sport, old, false), &owner)
    } else if sides.outbound {
        first_sighting(DIR_OUTBOUND, key.dport, old, false)
    } else {
        return None;
    };
    track_new(tp, sk, conn, new, netns, true, sides.late)
}

#[inline(always)]
fn track_new(
    tp: &Sock,
    sk: u64,
    mut conn: Conn,
    new: u8,
    netns: u32,
    mark_seen: bool,
    late: bool,
) -> Option<()> {
    conn.slot = slot_of(StatsKey::new(conn.direction, conn.port))?;
    // A connection whose open was lost is counted opened first (see `unseeded_sides`).
    let open = if late {
        conn.open_late(now())
    } else {
        Step::default()
    };
    let step = conn.advance(new, now);
    if !step.ended && SOCKETS.insert(sk, conn, BPF_NOEXIST.into()).is_err() {
        count(counters::SOCKETS_FULL);
        return None; // untracked: counting its entry now would leave the gauge stuck
    }
    if late {
        count(counters::LATE_OPENS);
        finish(tp, sk, &conn, &open, netns, mark_seen);
    }
    finish(tp, sk, &conn, &step, netns, mark_seen)
}

#[inline(always)]
fn advance(tp: &Sock, sk: u64, conn: &mut Conn, new: u8, line: Line) -> Option<()> {
    let step = conn.advance(new, now);
    let conn = *conn;
    if step.ended {
        let _ = SOCKETS.remove(sk);
        if line == Line::Main && PREEMPTIBLE.load() != 0 {
            let _ = DONE.insert(
                bpf_get_current_pid_tgid(),
                transition_key(sk, tp.old, new),
                0,
            );
        }
    }
    finish(tp, sk, &conn, &step, NETNS_NOT_READ, true)
}

#[inline(always)]
fn finish(tp: &Sock, sk: u64, conn: &Conn, step: &Step, netns: u32, mark_seen: bool) -> Option<()> {
    let seen = mark_seen && snapshot_open();
    let emits = step.event != EVENT_NONE && FLAGS.load() & flags::EMIT_EVENTS != 0;
    // The namespace takes two reads from the socket: only when the snapshot or a record uses it.
    let netns = if !(seen || emits) {
        0
    } else if netns == NETNS_NOT_READ {
        netns_of(sk)
    } else {
        netns
    };
    if seen && SEEN.insert(tp.tuple(netns), 0, 0).is_err() {
        count(counters::SEEN_FULL);
    }
    count_step(conn, step);
    // Records carry what a person is shown: opens and closes, not every step between them.
    if emits {
        emit(tp, sk, conn, step, netns);
    }
    Some(())
}

#[inline(always)]
fn emit(tp: &Sock, sk: u64, conn: &Conn, step: &Step, netns: u32) {
    let (family, saddr, daddr) = tp.addrs();
    submit(&Record {
        ts_ns: step.now_ns,
        sock: sk,
        duration_ns: step.duration_ns,
        pid: conn.pid,
        netns,
        sport: tp.sport,
        dport: tp.dport,
        port: conn.port,
        family,
        oldstate: tp.old,
        newstate: tp.new,
        direction: conn.direction,
        event: step.event,
        flags: record_flags(conn, step),
        _pad: [0; 3],
        saddr,
        daddr,
        comm: conn.comm,
    });
}

#[inline(always)]
fn record_flags(conn: &Conn, step: &Step) -> u8 {
    let mut rflags = 0;
    if step.timed {
        rflags |= RECORD_HAS_DURATION;
    }
    if conn.flags & FLAG_PREEXISTING != 0 && conn.flags & FLAG_OPEN_SEEN == 0 {
        rflags |= RECORD_PREEXISTING;
    }
    rflags
}

/// Sends a record to the daemon, or counts it dropped when the ring is full.
#[inline(always)]
fn submit(record: &Record) {
    let Some(mut entry) = EVENTS.reserve::<Record>(0) else {
        count(counters::RING_FULL);
        return;
    };
    entry.write(*record);
    let wakeup = if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup.into());
}

/// A listen(): claims the port when every listener counts, or when a target process calls it.
#[inline(always)]
fn on_listen(cfg: u32, sk: u64, port: u16) -> Option<()> {
    if cfg & flags::ALL_LISTENERS == 0 && !(cfg & flags::PROCESS_TARGETS != 0 && is_target(sk)) {
        return None;
    }
    let key = LocalPortKey::new(netns_of(sk), port);
    if LOCAL_PORTS.insert(key, current_owner(), 0).is_err() {
        count(counters::LOCAL_PORTS_FULL);
        return None;
    }
    let bits = if key.netns == 0 {
        PORT_LOCAL
    } else {
        PORT_LOCAL | PORT_LOCAL_NETNS
    };
    let p = PORT_FLAGS.get_ptr_mut(port as u32)?;
    // SAFETY: bits are only ever set, so racing writers agree.
    unsafe { *p |= bits };
    Some(())
}

/// The close of an entry retired at its address's reuse: its socket's addresses are the new
/// socket's now, so the record carries none (`RECORD_ADDRESSES_GONE`).
#[inline(always)]
fn emit_retired(sk: u64, conn: &Conn) {
    let step = conn.retire();
    if step.event == EVENT_NONE || FLAGS.load() & flags::EMIT_EVENTS == 0 {
        return;
    }
    submit(&Record {
        ts_ns: now(),
        sock: sk,
        duration_ns: step.duration_ns,
        pid: conn.pid,
        netns: 0,
        sport: 0,
        dport: 0,
        port: conn.port,
        family: 0,
        oldstate: conn.state,
        newstate: tcp::CLOSE,
        direction: conn.direction,
        event: step.event,
        flags: record_flags(conn, &step) | RECORD_ADDRESSES_GONE,
        _pad: [0; 3],
        saddr: [0; 16],
        daddr: [0; 16],
        comm: conn.comm,
    });
}

/// An entry whose socket died without a CLOSE that the program saw (see `Conn::retire`).
#[inline(always)]
fn retire_stale(conn: &Conn) {
    count_step(conn, &conn.retire());
    count(counters::STALE_SOCKETS);
}

#[inline(always)]
fn count_step(conn: &Conn, step: &Step) {
    if let Some(stats) = STATS.get_ptr_mut(conn.slot as u32) {
        // SAFETY: this CPU's share of the counters; updates are atomic adds (a nested run).
        unsafe { &mut *stats }.apply(step, |d| bucket_of(d, N_BUCKETS.load() as usize, bound));
    }
}

/// The counters' slot of a (direction, port) pair, handed out on its first connection.
#[inline(always)]
fn slot_of(key: StatsKey) -> Option<u16> {
    // SAFETY: plain reads of map values.
    if let Some(slot) = unsafe { STATS_SLOTS.get(key) } {
        return Some(*slot as u16);
    }
    if let Ok(Some(slot)) = FREE_SLOTS.pop() {
        if STATS_SLOTS.insert(key, slot, BPF_NOEXIST.into()).is_ok() {
            return Some(slot as u16);
        }
        // Another CPU gave the pair a slot first: this one goes back.
        let _ = FREE_SLOTS.push(slot, 0);
    }
    // SAFETY: plain reads of map values.
    match unsafe { STATS_SLOTS.get(key) } {
        Some(slot) => Some(*slot as u16),
        None => {
            count(counters::PORTS_FULL);
            None
        }
    }
}

/// The owner of a watched local port. `netns` is the socket's namespace, read here when it is
/// needed and was not read yet: ports watched in every namespace (`--port`) need no read.
#[inline(always)]
fn local_owner(sk: u64, port: u16, port_flags: u32, netns: &mut u32) -> Option<Owner> {
    if port_flags & PORT_LOCAL_NETNS != 0 {
        if *netns == NETNS_NOT_READ {
            *netns = netns_of(sk);
        }
        // SAFETY: a plain read of a map value.
        if let Some(o) = unsafe { LOCAL_PORTS.get(LocalPortKey::new(*netns, port)) } {
            return Some(*o);
        }
    }
    // SAFETY: a plain read of a map value.
    let o = unsafe { LOCAL_PORTS.get(LocalPortKey::new(0, port)) }?;
    Some(*o)
}

#[inline(always)]
fn with_owner(mut conn: Conn, owner: &Owner) -> Conn {
    conn.pid = owner.pid;
    conn.comm = owner.comm;
    conn
}

#[inline(always)]
fn current_owner() -> Owner {
    Owner {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Whether a listen() or connect(), which run in the calling process, belongs to a target: the
/// process is a target, or the socket's cgroup is a target cgroup or lies below one.
#[inline(always)]
fn is_target(sk: u64) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a plain read of a map value.
    if unsafe { PIDS.get(tgid) }.is_some() {
        return true;
    }
    let n = N_CGROUPS.load();
    if n == 0 {
        return false;
    }
    let o = CGROUP_OFFSETS.load();
    if o.cgroup_kind == CGROUP_NONE {
        return false;
    }
    let word: u64 = read_kernel(sk + o.sk_cgroup as u64);
    // Before 5.15 a cgroup v1 net_prio/net_cls setting may hold this word instead (low bits set).
    if word == 0 || (o.cgroup_kind == CGROUP_TAGGED && word & 3 != 0) {
        count(counters::CGROUP_UNKNOWN);
        return false;
    }
    let level: i32 = read_kernel(word + o.level as u64);
    let mut i = 0;
    while i < MAX_CGROUPS {
        if i >= n {
            break;
        }
        if let Some(t) = CGROUPS.get(i)
            && t.level as i64 <= level as i64
            && ancestor_id(word, t.level, &o) == t.id
        {
            return true;
        }
        i += 1;
    }
    false
}

/// The id of cgroup `cgrp`'s ancestor at depth `level` (not deeper than the cgroup's own).
#[inline(always)]
fn ancestor_id(cgrp: u64, level: u32, o: &CgroupOffsets) -> u64 {
    // Masked so the verifier sees a bounded index; cgroup trees are far shallower.
    let at = cgrp + o.ancestors as u64 + 8 * (level & 0xff) as u64;
    if o.ancestors_are_pointers == 0 {
        return read_kernel(at);
    }
    let ancestor: u64 = read_kernel(at);
    let kn: u64 = read_kernel(ancestor + o.kn as u64);
    read_kernel(kn + o.kn_id as u64)
}

/// A kernel value at `addr`, or 0 when it cannot be read.
#[inline(always)]
fn read_kernel<T: Default>(addr: u64) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.unwrap_or_default()
}

/// The inode number of the socket's network namespace, or 0 when its offsets are unknown.
#[inline(always)]
fn netns_of(sk: u64) -> u32 {
    let off = SK_NET_OFFSET.load();
    if off == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the addresses.
    unsafe {
        let Ok(net) = bpf_probe_read_kernel((sk + off as u64) as *const u64) else {
            return 0;
        };
        bpf_probe_read_kernel((net + NET_INUM_OFFSET.load() as u64) as *const u32).unwrap_or(0)
    }
}

#[inline(always)]
fn port_flags(port: u16) -> u32 {
    PORT_FLAGS.get(port as u32).copied().unwrap_or(0)
}

#[inline(always)]
fn control(index: u32) -> u32 {
    CONTROL.get(index).copied().unwrap_or(0)
}

#[inline(always)]
fn snapshot_open() -> bool {
    control(CONTROL_SNAPSHOT_DONE) == 0
}

#[inline(always)]
fn baseline_active() -> bool {
    control(CONTROL_BASELINE_ACTIVE) != 0
}

#[inline(always)]
fn bound(i: usize) -> u64 {
    if i >= MAX_BUCKETS {
        return u64::MAX;
    }
    let p = &BUCKET_BOUNDS as *const Global<[u64; MAX_BUCKETS]> as *const u64;
    // SAFETY: i < MAX_BUCKETS, inside the global.
    unsafe { core::ptr::read_volatile(p.add(i)) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's counter; atomic against a nested run.
        observer_common::stats::add(unsafe { &mut *p }, 1);
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The context of an iterator over a map's elements (`struct bpf_iter__bpf_map_elem`): the
/// element is null on the last call, which marks the end.
#[repr(C)]
pub struct MapElem<K, V> {
    meta: *const IterMeta,
    map: *const u8,
    key: *const K,
    value: *const V,
}

/// `struct bpf_iter_meta`: the output file comes first.
#[repr(C)]
struct IterMeta {
    seq: *mut aya_ebpf::bindings::seq_file,
}

/// The element of a map-element iterator run, or None at the end.
///
/// # Safety
/// `ctx` is the context the kernel gave a map-element iterator over a map of `K` to `V`.
#[inline(always)]
unsafe fn element<K: Copy, V: Copy>(ctx: *const MapElem<K, V>) -> Option<(K, V)> {
    // SAFETY: as the caller promises; the kernel checks each load against the context's type.
    unsafe {
        let key = core::ptr::read_volatile(&(*ctx).key);
        let value = core::ptr::read_volatile(&(*ctx).value);
        if key.is_null() || value.is_null() {
            return None;
        }
        Some((*key, *value))
    }
}

/// The sweep (see `observer_common::sweep`): writes out every watched socket whose memory says
/// CLOSE while its entry does not, with what its close event needs. Read-only: the daemon
/// decides, from two sweeps, which are dead.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_map_elem")]
extern "C" fn observer_sweep(ctx: *mut MapElem<u64, Conn>) -> i32 {
    // SAFETY: the kernel runs this iterator over SOCKETS (the daemon attaches it so).
    let Some((sk, conn)) = (unsafe { element(ctx) }) else {
        return 0;
    };
    let o = SOCK_OFFSETS.load();
    // A freed TCP socket's memory stays a TCP socket's (type-stable slab): its state is CLOSE
    // then, or a new socket's at that address, whose birth retires this entry.
    let state: u8 = read_kernel(sk + o.state as u64);
    if state != tcp::CLOSE || conn.state == tcp::CLOSE {
        return 0;
    }
    let family: u16 = read_kernel(sk + o.family as u64);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        saddr[..4].copy_from_slice(&read_kernel::<u32>(sk + o.saddr as u64).to_ne_bytes());
        daddr[..4].copy_from_slice(&read_kernel::<u32>(sk + o.daddr as u64).to_ne_bytes());
    } else {
        saddr = read_kernel(sk + o.saddr_v6 as u64);
        daddr = read_kernel(sk + o.daddr_v6 as u64);
    }
    let doomed = Doomed {
        sk,
        conn,
        netns: netns_of(sk),
        family,
        sport: u16::from_be(read_kernel(sk + o.sport as u64)),
        dport: u16::from_be(read_kernel(sk + o.dport as u64)),
        _pad: [0; 6],
        saddr,
        daddr,
    };
    // SAFETY: the output file of this run, and a whole `Doomed` on the stack.
    unsafe {
        let seq = core::ptr::read_volatile(&(*(*ctx).meta).seq);
        bpf_seq_write(
            seq,
            &doomed as *const Doomed as *const core::ffi::c_void,
            Doomed::SIZE as u32,
        );
    }
    0
}

/// Retires the sockets the daemon confirmed dead, each once and only if its entry is still the
/// one the sweeps found: its removal claims it (a birth at its address may be retiring it too).
/// Its close is counted and sent like any other, with the lifetime up to the start of its close.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_map_elem")]
extern "C" fn observer_reap(ctx: *mut MapElem<u64, Doomed>) -> i32 {
    // SAFETY: the kernel runs this iterator over DOOMED (the daemon attaches it so).
    let Some((sk, d)) = (unsafe { element(ctx) }) else {
        return 0;
    };
    // SAFETY: a plain read of a map value.
    let Some(conn) = (unsafe { SOCKETS.get(sk) }).copied() else {
        return 0;
    };
    if conn != d.conn || SOCKETS.remove(sk).is_err() {
        return 0;
    }
    let step = conn.lost_close();
    count_step(&conn, &step);
    count(counters::STALE_SOCKETS);
    if step.event != EVENT_NONE && FLAGS.load() & flags::EMIT_EVENTS != 0 {
        submit(&Record {
            ts_ns: now(),
            sock: sk,
            duration_ns: step.duration_ns,
            pid: conn.pid,
            netns: d.netns,
            sport: d.sport,
            dport: d.dport,
            port: conn.port,
            family: d.family,
            oldstate: conn.state,
            newstate: tcp::CLOSE,
            direction: conn.direction,
            event: step.event,
            flags: record_flags(&conn, &step),
            _pad: [0; 3],
            saddr: d.saddr,
            daddr: d.daddr,
            comm: conn.comm,
        });
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
