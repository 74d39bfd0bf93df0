//! The start-up snapshot's handshake with the kernel, so that each connection that existed before
//! observer is counted exactly once (the daemon's `snapshot` module explains the protocol).

use crate::filter::Owner;

/// A connection's identity that both the tracepoint and sock_diag can tell: its network namespace
/// and its addresses. IPv4 addresses fill the first 4 bytes. Unique among live full sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub netns: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
crate::pod!(TupleKey);

/// A connection the snapshot counted, handed to the kernel (`BASELINE` map) so that its first
/// transition leaves the state the snapshot counted it in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub state: u8,
    pub direction: u8,
    pub port: u16,
    pub owner: Owner,
}
crate::pod!(Seed);

/// Index in the `CONTROL` array: 0 while the snapshot is being taken (the kernel records every
/// socket it sees in `SEEN`), 1 once it is done.
pub const CONTROL_SNAPSHOT_DONE: u32 = 0;
/// Index in the `CONTROL` array: 1 while `BASELINE` may hold seeds (worth a lookup).
pub const CONTROL_BASELINE_ACTIVE: u32 = 1;
/// Index in the `CONTROL` array: 1 when the snapshot could not seed every connection it listed
/// (a full `BASELINE`): the kernel then keeps adopting established sockets it meets for the
/// first time, as it does while the window is open (see `conn::unseeded_sides`).
pub const CONTROL_ADOPT_UNSEEDED: u32 = 2;
pub const CONTROL_LEN: u32 = 4;
