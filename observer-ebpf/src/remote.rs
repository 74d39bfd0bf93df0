//! Per-client counts (`--by-remote`): two iterators that list the remote of every established
//! watched connection, which the daemon counts at each scrape (see `observer_common::remote`).
use crate::maps::{REMOTE_MASKS, sock_offset};
use crate::sock::read_kernel;
use crate::sweep::{MapElem, element};
use aya_ebpf::helpers::bpf_seq_write;
use observer_common::conn::Conn;
use observer_common::remote::{self, RemoteKey};
use observer_common::snapshot::{Seed, TupleKey};
use observer_common::tcp;
use observer_common::tracepoint::AF_INET;

/// Over `SOCKETS`: the remote of each connection the counters hold in ESTABLISHED, read from
/// its socket (live: its entry leaves the map at its CLOSE).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_map_elem")]
extern "C" fn observer_remotes(ctx: *mut MapElem<u64, Conn>) -> i32 {
    // SAFETY: the kernel runs this iterator over SOCKETS (the daemon attaches it so).
    let Some((sk, conn)) = (unsafe { element(ctx) }) else {
        return 0;
    };
    if conn.state != tcp::ESTABLISHED {
        return 0;
    }
    let family: u16 = read_kernel(sk + sock_offset!(family) as u64);
    let (a, b) = if family == AF_INET {
        (
            read_kernel::<u32>(sk + sock_offset!(daddr) as u64) as u64,
            0,
        )
    } else {
        (
            read_kernel::<u64>(sk + sock_offset!(daddr_v6) as u64),
            read_kernel::<u64>(sk + sock_offset!(daddr_v6) as u64 + 8),
        )
    };
    let key = remote::key(
        conn.direction,
        conn.port,
        family,
        a,
        b,
        &REMOTE_MASKS.load(),
    );
    // SAFETY: the iterator's own context.
    unsafe { write(ctx as *const u8, &key) };
    0
}

/// Over `BASELINE`: the remote of each connection the start-up snapshot counted established
/// that has not changed since (a seed leaves the map at its first transition).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_map_elem")]
extern "C" fn observer_seeds(ctx: *mut MapElem<TupleKey, Seed>) -> i32 {
    // SAFETY: the kernel runs this iterator over BASELINE (the daemon attaches it so).
    let Some((tuple, seed)) = (unsafe { element(ctx) }) else {
        return 0;
    };
    if seed.state != tcp::ESTABLISHED {
        return 0;
    }
    let key = remote::key_of_bytes(
        seed.direction,
        seed.port,
        tuple.family,
        &tuple.daddr,
        &REMOTE_MASKS.load(),
    );
    // SAFETY: the iterator's own context.
    unsafe { write(ctx as *const u8, &key) };
    0
}

/// Writes one key to the run's output.
///
/// # Safety
/// `ctx` is a map-element iterator's context.
#[inline(always)]
unsafe fn write(ctx: *const u8, key: &RemoteKey) {
    let ctx = ctx as *const MapElem<u64, Conn>;
    // SAFETY: as the caller promises: the run's output file, and a whole key on the stack.
    unsafe {
        let seq = core::ptr::read_volatile(&(*(*ctx).meta).seq);
        bpf_seq_write(
            seq,
            key as *const RemoteKey as *const core::ffi::c_void,
            core::mem::size_of::<RemoteKey>() as u32,
        );
    }
}
