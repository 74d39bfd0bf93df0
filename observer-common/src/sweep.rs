//! The sweep: how a connection whose final CLOSE the programs never saw still gets closed.
//!
//! The kernel skips a tracing program's run when that program is already running on the CPU.
//! The backup program catches what a softirq's nesting makes the main program miss; but from
//! Linux 7.0 a run can also be preempted, and a transition that comes while both programs are
//! held by preempted tasks on that CPU reaches neither. A step in the middle of a connection's
//! life heals at its next transition (`Conn::advance` moves from the state the counters hold),
//! and an address freed and reused retires its stale entry at the new socket's birth; what is
//! left is a final CLOSE, after which nothing comes.
//!
//! So the daemon sweeps the per-socket map when the kernel reports a lost transition, and now
//! and then anyway: an iterator reads, in each watched socket's memory, the state the kernel
//! holds it in (TCP sockets live in type-stable slabs, so that memory is a socket's even once
//! freed). One that says CLOSE while its entry does not lost its final transition, unless it is
//! caught in the instant between the tracepoint and the store of the new state; so only an entry
//! found so in two sweeps a second apart, unchanged, is retired (`Doomed`), by a second iterator
//! that counts its close like any other, through the same code and into the same counters.

use crate::{conn::Conn, record::Ends};

/// A watched socket whose memory says CLOSE while its entry does not, as the sweep reports it,
/// with what its close event needs (read from the socket's memory).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doomed {
    /// The socket's kernel address (the key of its entry).
    pub sk: u64,
    /// The entry as the sweep found it: retired only if it is still exactly this.
    pub conn: Conn,
    pub ends: Ends,
}
crate::pod!(Doomed);

impl Doomed {
    pub const SIZE: usize = core::mem::size_of::<Doomed>();
}
