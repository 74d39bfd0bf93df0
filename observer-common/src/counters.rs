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
/// A watched connection's CLOSE was never delivered and its entry was retired: when its socket's
/// address came back for a new connection, or when two sweeps found its socket dead (see
/// `sweep`).
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
/// Connections first met past ESTABLISHED, after the snapshot, whose open the kernel never
/// delivered (its birth and its move to ESTABLISHED both lost): counted opened then (see
/// `conn::unseeded_sides`).
pub const LATE_OPENS: u32 = 9;
/// A target's child process not made a target: the map of target processes was full.
pub const PIDS_FULL: u32 = 10;
/// A map update or delete refused because this CPU was inside an update of the same map (a
/// bucket lock's per-CPU guard, `-EBUSY`): on kernels before about 6.3 a hash map marks the lock
/// taken before it disables interrupts, and a softirq's transition in that instant finds it
/// taken. The transition's connection was then not tracked, or its slot not had: counted
/// here rather than as a full map. (A delete refused so leaves an entry already CLOSE, which
/// nothing counts again: see `track`.)
pub const MAP_BUSY: u32 = 11;
pub const LEN: u32 = 12;

/// The error a map helper returns for a bucket whose lock this CPU holds already.
pub const EBUSY: i64 = -16;

/// What an update that failed with `err` counts as: `MAP_BUSY` for a lock held on this CPU,
/// otherwise `full` (the map's own reason).
pub const fn update_failure(err: i64, full: u32) -> u32 {
    if err == EBUSY { MAP_BUSY } else { full }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_bucket_is_not_a_full_map() {
        assert_eq!(update_failure(EBUSY, SOCKETS_FULL), MAP_BUSY);
        // -E2BIG (a full preallocated map) and -ENOMEM keep the map's reason.
        assert_eq!(update_failure(-7, SOCKETS_FULL), SOCKETS_FULL);
        assert_eq!(update_failure(-12, PORTS_FULL), PORTS_FULL);
    }
}
