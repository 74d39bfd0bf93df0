//! Sizes of the kernel maps. Every per-connection structure is bounded; overflows are counted
//! (see `counters`) and exported, never silent.

/// Connections tracked at once (entries in the per-socket map): the most `--max-connections`
/// takes; the daemon sizes the map at load (see its `sizing`).
pub const MAX_SOCKETS: u32 = 16_777_216;
/// (direction, port) pairs with their own counters.
pub const MAX_PORTS: u32 = 4_096;
/// Listening (port, network namespace) pairs that count as watched.
pub const MAX_LOCAL_PORTS: u32 = 4_096;
/// Processes watched by PID: the `--pid` targets and the processes they fork.
pub const MAX_PIDS: u32 = 4_096;
/// Cgroup v2 directories watched.
pub const MAX_CGROUPS: u32 = 8;
/// Histogram bucket bounds (the +Inf bucket comes on top: 32 buckets, a power of two, so that an
/// index can be masked into range).
pub const MAX_BUCKETS: usize = 31;
/// Entries of the start-up snapshot handed to the kernel, at most (sized at load).
pub const MAX_BASELINE: u32 = 16_777_216;
/// Sockets the kernel saw change while the start-up snapshot was being taken, at most (sized at
/// load).
pub const MAX_SEEN: u32 = 16_777_216;
/// Default size of the event ring buffer, in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;
/// Dead sockets retired by one run of the reaping iterator (more wait for the next sweep).
pub const MAX_DOOMED: u32 = 4_096;
