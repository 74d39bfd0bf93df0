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
//! there. (Every transition, ours or not: the backup tells the main program's skipped runs from
//! the ones it took by the notes alone, and counts each skipped run it covers, for
//! `lost_transition`.) Counter updates are single atomic adds, so a nested update and the
//! interrupted one never overwrite each other.
//!
//! One concept a module: `maps` (the maps, and the settings the daemon fixes at load time),
//! `scratch` (per-CPU state and the notes between the two programs), `sock` (the socket's
//! fields), `track` (filter, first sighting, each transition, counters), `target` (who owns a
//! port, whose a connect() or listen() is), `emit` (records), `remote` (per-client counts), `sweep` (the two iterators that
//! close the connections whose CLOSE never came), `tree` (a `--pid` target's descendants),
//! `request` (inbound handshakes that fail before they become sockets). This file holds the
//! programs.
//!
//! Written for the verifiers of every kernel from 5.10 on (the VM matrix, `cargo xtask vm-test`,
//! proves it), which refuse more than this machine's:
//! - only helpers offered to tracing programs since 5.10 (not the cgroup ancestor helper, 5.14;
//!   a target's cgroup comes from the socket's own cgroup data, read through BTF offsets);
//! - nothing with an undefined part is copied: no `Option` or enum with a payload crosses a
//!   branch into a struct or the stack (a flag and a plain value instead), since verifiers
//!   before ~6.8 refuse to read an uninitialised stack slot;
//! - every function of this crate is `#[inline(always)]`: few BPF-to-BPF calls, whose argument
//!   tracking differs between verifiers (older ones explored paths that left a register unset).
//!   The JIT image still has some: the macro's entry calls each program's function, on every hit
//!   (see `observer_main`), and LLVM calls `memset` and `ending::at_close`, off the common path;
//! - nesting is expected: 5.10 has no recursion guard for these programs, so the main
//!   program can interrupt itself on a CPU, and its notes for the backup stay right then
//!   (where the kernel skips no run, the daemon leaves the backup detached: it would only
//!   ever find its notes).
#![no_std]
#![no_main]
// Its warnings only reach cargo as build-script output, easy to miss: make them errors.
#![deny(warnings)]

mod emit;
mod maps;
mod remote;
mod request;
mod scratch;
mod sock;
mod sweep;
mod target;
mod track;
mod tree;

use crate::maps::{DONE, PREEMPTIBLE, SCRATCH, count};
use crate::scratch::{BACKUP, LEVELS, MAIN, enter, leave, put_note, take_note, transition_key};
use crate::sock::Sock;
use crate::track::{Line, handle};
use aya_ebpf::macros::{btf_tracepoint, fentry};
use aya_ebpf::programs::{BtfTracePointContext, FEntryContext};
use observer_common::{counters, tcp};

// Not `#[inline(always)]`, though the macro's entry calls this function, a call and a return
// (a return thunk on this machine) more on every hit: inlined into the entry, the program took
// 5.10's verifier over 120 s under qemu with `--events`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn observer_main(ctx: BtfTracePointContext) -> i32 {
    let tp = Sock::of(&ctx);
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch, fields of this program only (see `Scratch`).
    let depth = unsafe { enter(&mut (*s).depth[MAIN]) };
    if depth != 0 {
        count(counters::NESTED_RUNS);
    }
    // SAFETY: as above; the index is masked into range.
    let sock = tp.at(unsafe { &mut (*s).address[MAIN][depth as usize & (LEVELS - 1)] });
    let key = transition_key(sock.sk, sock.old, sock.new);
    // SAFETY: as above: the backup's depth is only read.
    let outermost = depth == 0 && unsafe { core::ptr::read_volatile(&(*s).depth[BACKUP]) } == 0;
    // SAFETY: as above.
    unsafe { put_note(s, key, outermost) };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    let _ = handle(&sock, Line::Main);
    // SAFETY: as above.
    unsafe { leave(&mut (*s).depth[MAIN], depth) };
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn observer_backup(ctx: BtfTracePointContext) -> i32 {
    let tp = Sock::of(&ctx);
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch, fields of this program only (see `Scratch`).
    let depth = unsafe { enter(&mut (*s).depth[BACKUP]) };
    // SAFETY: as above; the index is masked into range.
    let sock = tp.at(unsafe { &mut (*s).address[BACKUP][depth as usize & (LEVELS - 1)] });
    let key = transition_key(sock.sk, sock.old, sock.new);
    // SAFETY: the main program's notes; the backup only clears the one it takes.
    if !unsafe { take_note(&mut (*s).notes, key) } {
        count(counters::NESTED_HANDLED);
        let _ = handle(&sock, Line::Backup);
    }
    // Its backup run has come: the main program's record of this CLOSE, if any, has served.
    if sock.new == tcp::CLOSE && PREEMPTIBLE.load() != 0 {
        let _ = DONE.remove(key);
    }
    // SAFETY: as above.
    unsafe { leave(&mut (*s).depth[BACKUP], depth) };
    0
}

/// An IPv4 request socket is freed: a failed inbound handshake is counted (see `request`).
#[fentry(function = "tcp_v4_reqsk_destructor")]
pub fn observer_req4(ctx: FEntryContext) -> i32 {
    let _ = request::freed(ctx.arg::<u64>(0));
    0
}

/// The same for IPv6 (and IPv4 clients of a dual-stack listener).
#[fentry(function = "tcp_v6_reqsk_destructor")]
pub fn observer_req6(ctx: FEntryContext) -> i32 {
    let _ = request::freed(ctx.arg::<u64>(0));
    0
}

/// A target's fork: its child process is a target too (see `tree`).
#[btf_tracepoint(function = "sched_process_fork")]
pub fn observer_fork(ctx: BtfTracePointContext) -> i32 {
    let _ = tree::forked(&ctx);
    0
}

/// A descendant's exit: its PID leaves the filter (see `tree`).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn observer_exit(_ctx: BtfTracePointContext) -> i32 {
    let _ = tree::exited();
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
