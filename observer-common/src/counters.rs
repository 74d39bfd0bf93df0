//! Indices of the kernel's per-CPU health counters (`COUNTERS` map): everything the program could
//! not do, so that nothing is lost silently.

/// A record did not fit in the event ring (the reader is behind): an event was dropped.
pub const RING_FULL: u32 = 0;
/// The per-socket map was full: a connection could not be tracked.
pub const SOCKETS_FULL: u32 = 1;
/// The per-port counter map was full: a port could not get its counters.
pub const PORTS_FULL: u32 = 2;
/// The snapshot's SEEN map was full while the snapshot was taken.
pub const SEEN_FULL: u32 = 3;
/// The watched-ports map was full when a listen() should have added a port.
pub const LOCAL_PORTS_FULL: u32 = 4;
/// A socket address came back for a new connection while its old entry never saw CLOSE (a
/// transition the kernel did not deliver): the old entry was retired.
pub const STALE_SOCKETS: u32 = 5;
/// Transitions that the kernel skipped for the main program (it was running on that CPU when a
/// softirq brought another transition) and that the backup program handled. The kernel's count
/// of the main program's skipped runs minus this is what was lost.
pub const NESTED_HANDLED: u32 = 6;
/// A socket's cgroup could not be read under `--cgroup` (before 5.15, a cgroup v1 net_prio or
/// net_cls setting takes over the word that holds it): its connect() or listen() was not
/// matched against the target cgroups.
pub const CGROUP_UNKNOWN: u32 = 7;
/// Runs of the main program that began while another run of it was under way on the same CPU:
/// kernels without a recursion guard for BTF-typed tracepoints (5.10) let a softirq's
/// transition run the program inside the run it interrupted, where newer kernels skip it.
pub const NESTED_RUNS: u32 = 8;
pub const LEN: u32 = 9;
