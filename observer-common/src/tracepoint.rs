//! The record of `sock:inet_sock_set_state`, as its format file in tracefs documents it
//! (`/sys/kernel/tracing/events/sock/inet_sock_set_state/format`). The daemon checks this layout
//! against the running kernel's format file before it loads anything.

pub const CATEGORY: &str = "sock";
pub const NAME: &str = "inet_sock_set_state";

/// IPPROTO_TCP: the tracepoint also fires for SCTP and MPTCP sockets.
pub const IPPROTO_TCP: u16 = 6;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InetSockSetState {
    /// The common trace-event header (type, flags, preempt count, pid).
    pub common: [u8; 8],
    /// The `struct sock *`: unique while the socket lives, reused once it is freed.
    pub skaddr: u64,
    pub oldstate: i32,
    pub newstate: i32,
    /// Ports in host byte order.
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub saddr_v6: [u8; 16],
    pub daddr_v6: [u8; 16],
}

/// (field name, byte offset, size) of every field the program reads, for the start-up check.
pub const FIELDS: [(&str, usize, usize); 11] = [
    ("skaddr", 8, 8),
    ("oldstate", 16, 4),
    ("newstate", 20, 4),
    ("sport", 24, 2),
    ("dport", 26, 2),
    ("family", 28, 2),
    ("protocol", 30, 2),
    ("saddr", 32, 4),
    ("daddr", 36, 4),
    ("saddr_v6", 40, 16),
    ("daddr_v6", 56, 16),
];

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(InetSockSetState, skaddr) == FIELDS[0].1);
    assert!(offset_of!(InetSockSetState, oldstate) == FIELDS[1].1);
    assert!(offset_of!(InetSockSetState, newstate) == FIELDS[2].1);
    assert!(offset_of!(InetSockSetState, sport) == FIELDS[3].1);
    assert!(offset_of!(InetSockSetState, dport) == FIELDS[4].1);
    assert!(offset_of!(InetSockSetState, family) == FIELDS[5].1);
    assert!(offset_of!(InetSockSetState, protocol) == FIELDS[6].1);
    assert!(offset_of!(InetSockSetState, saddr) == FIELDS[7].1);
    assert!(offset_of!(InetSockSetState, daddr) == FIELDS[8].1);
    assert!(offset_of!(InetSockSetState, saddr_v6) == FIELDS[9].1);
    assert!(offset_of!(InetSockSetState, daddr_v6) == FIELDS[10].1);
    assert!(size_of::<InetSockSetState>() == 72);
};
