//! The floor of `cargo xtask bench`: a program that does nothing, on the tracepoint observer
//! watches and attached the way observer's are (by its BTF type, `tp_btf`). What it costs is
//! what any program attached so costs: the call and, with `bpf_stats_enabled`, the clock reads
//! around it. Debian's bpftrace 0.17 cannot attach one (no `rawtracepoint:` nor `kfunc:` here).
#![no_std]
#![no_main]
#![deny(warnings)]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn observer_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// A second empty program, attached with the first for the floor of two programs on the
/// tracepoint (observer's main and backup): with two, the tracepoint calls each through its
/// iterator instead of calling one directly.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn observer_floor_second(_ctx: BtfTracePointContext) -> i32 {
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
