//! The sweep's two iterators (see `observer_common::sweep`).
use crate::maps::{SOCKETS, sock_offset};
use crate::sock::{addrs_at, netns_of, read_kernel};
use crate::track::close_unseen;
use aya_ebpf::helpers::bpf_seq_write;
use observer_common::conn::Conn;
use observer_common::record::Ends;
use observer_common::sweep::Doomed;
use observer_common::tcp;

/// The context of an iterator over a map's elements (`struct bpf_iter__bpf_map_elem`): the
/// element is null on the last call, which marks the end.
#[repr(C)]
pub struct MapElem<K, V> {
    pub(crate) meta: *const IterMeta,
    pub(crate) map: *const u8,
    pub(crate) key: *const K,
    pub(crate) value: *const V,
}

/// `struct bpf_iter_meta`: the output file comes first.
#[repr(C)]
pub(crate) struct IterMeta {
    pub(crate) seq: *mut aya_ebpf::bindings::seq_file,
}

/// The element of a map-element iterator run, or None at the end.
///
/// # Safety
/// `ctx` is the context the kernel gave a map-element iterator over a map of `K` to `V`.
#[inline(always)]
pub(crate) unsafe fn element<K: Copy, V: Copy>(ctx: *const MapElem<K, V>) -> Option<(K, V)> {
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
    // A freed TCP socket's memory stays a TCP socket's (type-stable slab): its state is CLOSE
    // then, or a new socket's at that address, whose birth retires this entry.
    let state: u8 = read_kernel(sk + sock_offset!(state) as u64);
    if state != tcp::CLOSE || conn.state == tcp::CLOSE {
        return 0;
    }
    let (family, saddr, daddr) = addrs_at(sk);
    let doomed = Doomed {
        sk,
        conn,
        ends: Ends {
            netns: netns_of(sk),
            family,
            sport: u16::from_be(read_kernel(sk + sock_offset!(sport) as u64)),
            dport: u16::from_be(read_kernel(sk + sock_offset!(dport) as u64)),
            _pad: [0; 6],
            saddr,
            daddr,
        },
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
    close_unseen(sk, &conn, &conn.lost_close(), Some(&d.ends));
    0
}
