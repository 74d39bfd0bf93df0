//! What the program keeps: the watched ports, processes and cgroups, and the switches the daemon
//! sets before loading it.

/// `PORT_FLAGS[port]` bit: some (namespace, port) entry of `LOCAL_PORTS` names this port.
pub const PORT_LOCAL: u32 = 1;
/// `PORT_FLAGS[port]` bit: outbound connections to this remote port are watched.
pub const PORT_REMOTE: u32 = 2;
/// `PORT_FLAGS[port]` bit: some `LOCAL_PORTS` entry names this port in one namespace (not 0),
/// so finding its owner needs the socket's namespace.
pub const PORT_LOCAL_NETNS: u32 = 4;

/// Key of `LOCAL_PORTS`: a local port watched for inbound connections in one network namespace
/// (its inode number, as in `/proc/PID/ns/net`), or in all of them when `netns` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalPortKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}
crate::pod!(LocalPortKey);

impl LocalPortKey {
    pub const fn new(netns: u32, port: u16) -> Self {
        LocalPortKey {
            netns,
            port,
            _pad: 0,
        }
    }
}

/// The process a connection belongs to for sure; `pid` 0 means it cannot be known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: [u8; 16],
}
crate::pod!(Owner);

impl Owner {
    pub const UNKNOWN: Owner = Owner {
        pid: 0,
        comm: [0; 16],
    };
}

/// A watched local port (value of `LOCAL_PORTS`): who its listeners belong to, and how many
/// there are. `owner` is a process only while every listener of the port is that process's:
/// with several owners (SO_REUSEPORT, or separate IPv4 and IPv6 listeners) the accepting
/// process cannot be told from the connection, and the owner is unknown. When the last
/// listener closes, the next one's process owns the port (a restarted server).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortOwner {
    pub owner: Owner,
    /// Listening sockets of this port (in this namespace) that are open, as far as known.
    pub listeners: u32,
    /// `PORT_NAMED` or `PORT_FOLLOWED`.
    pub kind: u32,
}
crate::pod!(PortOwner);

/// `PortOwner::kind`: a port named with `--port`: watched in every namespace, its owner never
/// known (the program leaves it alone).
pub const PORT_NAMED: u32 = 1;
/// `PortOwner::kind`: a listener found (by the daemon, or by the program at listen()).
pub const PORT_FOLLOWED: u32 = 0;

impl PortOwner {
    pub const NAMED: PortOwner = PortOwner {
        owner: Owner::UNKNOWN,
        listeners: 0,
        kind: PORT_NAMED,
    };

    /// The owner of `listeners`, one per listening socket of a port: a process only when they
    /// all are that one's.
    pub fn of_listeners(listeners: &[Owner]) -> PortOwner {
        let owner = match listeners.first() {
            Some(first) if listeners.iter().all(|o| o.pid == first.pid) => *first,
            _ => Owner::UNKNOWN,
        };
        PortOwner {
            owner,
            listeners: listeners.len() as u32,
            kind: PORT_FOLLOWED,
        }
    }

    /// A listen() by `by` on this port.
    #[inline(always)]
    pub fn listen(&mut self, by: &Owner) {
        if self.kind == PORT_NAMED {
            return;
        }
        if self.listeners == 0 {
            self.owner = *by;
        } else if self.owner.pid != by.pid {
            self.owner = Owner::UNKNOWN;
        }
        self.listeners = self.listeners.saturating_add(1);
    }

    /// One of the port's listeners closed.
    #[inline(always)]
    pub fn listener_closed(&mut self) {
        if self.kind != PORT_NAMED {
            self.listeners = self.listeners.saturating_sub(1);
        }
    }
}

/// A cgroup v2 directory: its id (the directory's inode) and its depth below the v2 root. A task
/// is in it or below it when its ancestor at `level` has this id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupTarget {
    pub id: u64,
    pub level: u32,
    pub _pad: u32,
}
crate::pod!(CgroupTarget);

/// Value of `PIDS`: a process named with `--pid`.
pub const PID_TARGET: u8 = 1;
/// Value of `PIDS`: a process a target forked, directly or not (found at start, or by the
/// program at its fork).
pub const PID_DESCENDANT: u8 = 2;

/// Bits of the `FLAGS` global.
pub mod flags {
    /// Send a record per kept transition through the ring buffer.
    pub const EMIT_EVENTS: u32 = 1;
    /// Every listen() on the host adds its port (observer with no target).
    pub const ALL_LISTENERS: u32 = 2;
    /// Processes are targets (`--pid`, `--cgroup`): their listen() and connect() are watched.
    pub const PROCESS_TARGETS: u32 = 4;
}

/// Names of the program's read-only globals, set by the daemon at load time.
pub mod globals {
    /// u32, bits of `flags`.
    pub const FLAGS: &str = "FLAGS";
    /// u32: offset of `sock_common.skc_net` in `struct sock`; 0 when unknown (no namespaces).
    pub const SK_NET_OFFSET: &str = "SK_NET_OFFSET";
    /// u32: offset of `net.ns.inum` in `struct net`.
    pub const NET_INUM_OFFSET: &str = "NET_INUM_OFFSET";
    /// u32: number of histogram bucket bounds in `BUCKET_BOUNDS`.
    pub const N_BUCKETS: &str = "N_BUCKETS";
    /// [u64; MAX_BUCKETS]: histogram bucket upper bounds in nanoseconds, ascending.
    pub const BUCKET_BOUNDS: &str = "BUCKET_BOUNDS";
    /// u32: number of entries of the `CGROUPS` map in use.
    pub const N_CGROUPS: &str = "N_CGROUPS";
    /// u64: bytes waiting in the event ring above which a record wakes the reader.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// `u32`: 1 where tracepoint programs are preemptible (Linux 7.0 on, or PREEMPT_RT).
    pub const PREEMPTIBLE: &str = "PREEMPTIBLE";
    /// `SockOffsets`: where the backup program reads a socket's fields.
    pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    /// `CgroupOffsets`: where the programs find a socket's cgroup and its ancestors.
    pub const CGROUP_OFFSETS: &str = "CGROUP_OFFSETS";
    /// u32: offset of `tgid` in `struct task_struct`.
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// `remote::Masks`: the `--remote-prefix` masks.
    pub const REMOTE_MASKS: &str = "REMOTE_MASKS";
    /// `request::RequestOffsets`: where the request programs read a request socket's fields.
    pub const REQUEST_OFFSETS: &str = "REQUEST_OFFSETS";
}

/// Offsets of the fields the programs read in a socket: what the tracepoint's own record holds.
/// From the kernel's BTF at start. The programs load them directly (the verifier checks each
/// load against `struct sock`), so all but one lie in `struct sock` itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock.sk_protocol` (u16).
    pub protocol: u32,
    /// `sock_common.skc_family` (u16).
    pub family: u32,
    /// `sock_common.skc_num` (u16, host byte order): the local port.
    pub num: u32,
    /// `inet_sock.inet_sport` (__be16): the local port where `skc_num` is already 0, when
    /// CLOSE is reported (the port is released first). Beyond `struct sock`: read with a helper.
    pub sport: u32,
    /// `sock_common.skc_dport` (__be16).
    pub dport: u32,
    /// `sock_common.skc_rcv_saddr` (__be32): the local address, as sock_diag reports it.
    pub saddr: u32,
    /// `sock_common.skc_daddr` (__be32).
    pub daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr` (16 bytes).
    pub saddr_v6: u32,
    /// `sock_common.skc_v6_daddr` (16 bytes).
    pub daddr_v6: u32,
    /// `sock_common.skc_state` (u8): what the sweep reads in a socket's memory.
    pub state: u32,
    /// `sock.sk_max_ack_backlog` (u32): a listener's child inherits it, a connect()ed socket
    /// has 0 (see `conn::unseeded_sides`).
    pub max_ack_backlog: u32,
    /// `sock.sk_err` (int): why the kernel ended the connection, read at CLOSE (see `ending`).
    pub err: u32,
    /// `sock.sk_shutdown` (u8): RCV_SHUTDOWN once the peer's FIN came, which the kernel counts
    /// as one byte received.
    pub shutdown: u32,
    /// What a close record carries, from `struct tcp_sock` (beyond `struct sock`: read with a
    /// helper): `bytes_sent` and `bytes_retrans` (u64: data bytes sent, retransmissions
    /// included, and those retransmitted), `bytes_received` (u64, the peer's FIN counted),
    /// `srtt_us` (u32, the smoothed RTT in 1/8 µs) and `total_retrans` (u32, segments).
    pub bytes_sent: u32,
    pub bytes_retrans: u32,
    pub bytes_received: u32,
    pub srtt_us: u32,
    pub total_retrans: u32,
}
crate::pod!(SockOffsets);

/// `CgroupOffsets::cgroup_kind`: no cgroup can be read (no cgroup target, or the kernel's BTF
/// lacks a field).
pub const CGROUP_NONE: u32 = 0;
/// `sock_cgroup_data.cgroup` is a plain `struct cgroup *` (Linux 5.15 and later).
pub const CGROUP_POINTER: u32 = 1;
/// `sock_cgroup_data.val` (before 5.15): a `struct cgroup *`, unless a cgroup v1 net_prio or
/// net_cls setting took the word over (its low bits set); the socket's cgroup is then unknown.
pub const CGROUP_TAGGED: u32 = 2;

/// How to go from a socket to the id of its cgroup v2 ancestor at some level: the socket keeps
/// the cgroup of the process that made it (`sk_cgrp_data`), and a cgroup keeps its ancestors.
/// This is the socket's own data, the same on every kernel, where the helper
/// `bpf_get_current_ancestor_cgroup_id` is offered to tracing programs only from about 5.14 and
/// names the current task, not the socket's owner. From the kernel's BTF at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupOffsets {
    /// `CGROUP_NONE`, `CGROUP_POINTER` or `CGROUP_TAGGED`.
    pub cgroup_kind: u32,
    /// `sock.sk_cgrp_data` plus the offset of its cgroup word.
    pub sk_cgroup: u32,
    /// `cgroup.level` (int): depth below the root.
    pub level: u32,
    /// `cgroup.ancestor_ids` (u64 ids, before 6.2) or `cgroup.ancestors` (pointers, 6.2 on).
    pub ancestors: u32,
    /// 1 when `ancestors` holds `struct cgroup *`, whose id is `kn->id`.
    pub ancestors_are_pointers: u32,
    /// `cgroup.kn`.
    pub kn: u32,
    /// `kernfs_node.id` (u64).
    pub kn_id: u32,
}
crate::pod!(CgroupOffsets);

/// Names of the program's maps.
pub mod maps {
    pub const SOCKETS: &str = "SOCKETS";
    pub const STATS: &str = "STATS";
    pub const STATS_SLOTS: &str = "STATS_SLOTS";
    pub const FREE_SLOTS: &str = "FREE_SLOTS";
    pub const PORT_FLAGS: &str = "PORT_FLAGS";
    pub const TARGET_REMOTES: &str = "TARGET_REMOTES";
    pub const LOCAL_PORTS: &str = "LOCAL_PORTS";
    pub const PIDS: &str = "PIDS";
    pub const CGROUPS: &str = "CGROUPS";
    pub const BASELINE: &str = "BASELINE";
    pub const SEEN: &str = "SEEN";
    pub const CONTROL: &str = "CONTROL";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const DOOMED: &str = "DOOMED";
    pub const DONE: &str = "DONE";
}

/// Name of the main program (what `bpftool prog show` lists; at most 15 characters).
pub const PROGRAM: &str = "observer_main";
/// Name of the backup program, which handles the transitions the kernel skips for the main
/// program because they interrupted it on the same CPU.
pub const BACKUP_PROGRAM: &str = "observer_backup";
/// Names of the programs that count the inbound handshakes that fail as request sockets (see
/// `request`), on IPv4's and IPv6's request socket destructor.
pub const REQUEST_PROGRAMS: [(&str, &str); 2] = [
    ("observer_req4", "tcp_v4_reqsk_destructor"),
    ("observer_req6", "tcp_v6_reqsk_destructor"),
];
/// Name of the program that makes a target's new child process a target (`--pid`).
pub const FORK_PROGRAM: &str = "observer_fork";
/// Name of the program that takes an exited descendant's PID out of the filter.
pub const EXIT_PROGRAM: &str = "observer_exit";
/// Name of the iterator that lists the remotes of the established watched connections
/// (`--by-remote`).
pub const REMOTES_PROGRAM: &str = "observer_remotes";
/// Name of the iterator that lists the remotes of the start-up snapshot's established
/// connections that have not changed since.
pub const SEEDS_PROGRAM: &str = "observer_seeds";
/// Name of the iterator that lists the watched sockets whose memory says CLOSE (see `sweep`).
pub const SWEEP_PROGRAM: &str = "observer_sweep";
/// Name of the iterator that retires the sockets the daemon confirmed dead (see `sweep`).
pub const REAP_PROGRAM: &str = "observer_reap";

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: [b'x'; 16],
        }
    }

    #[test]
    fn one_owner_only_while_every_listener_is_its() {
        let p = PortOwner::of_listeners(&[owner(7), owner(7)]);
        assert_eq!((p.owner.pid, p.listeners), (7, 2));
        let mut p = PortOwner::of_listeners(&[owner(7), owner(8)]);
        assert_eq!((p.owner, p.listeners), (Owner::UNKNOWN, 2));
        // Unknown until every listener is gone; then the next listen()'s process owns it.
        p.listen(&owner(7));
        assert_eq!(p.owner, Owner::UNKNOWN);
        for _ in 0..3 {
            p.listener_closed();
        }
        p.listener_closed();
        assert_eq!(p.listeners, 0);
        p.listen(&owner(9));
        assert_eq!((p.owner.pid, p.listeners), (9, 1));
        // The same process listening again (IPv4 and IPv6) stays the owner; another does not.
        p.listen(&owner(9));
        assert_eq!((p.owner.pid, p.listeners), (9, 2));
        p.listen(&owner(10));
        assert_eq!(p.owner, Owner::UNKNOWN);
    }

    #[test]
    fn a_named_port_is_left_alone() {
        let mut p = PortOwner::NAMED;
        p.listen(&owner(7));
        p.listener_closed();
        assert_eq!(p, PortOwner::NAMED);
        assert_eq!(PortOwner::of_listeners(&[]).owner, Owner::UNKNOWN);
    }
}
