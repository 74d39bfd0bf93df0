//! What the observer eBPF program and the observer daemon agree on.
//!
//! Every type here is `#[repr(C)]` and crosses the kernel/user boundary, through a map or the event
//! ring. Each module is one concept; the kernel half of a concept is its layout and its pure rules
//! (which the eBPF program runs), the user half is `aya::Pod` (feature `user`).
#![no_std]
// The eBPF build (RUSTC_BOOTSTRAP=1, see observer/build.rs) reaches the atomic-add intrinsic.
#![cfg_attr(
    target_arch = "bpf",
    allow(internal_features),
    feature(core_intrinsics)
)]

pub mod conn;
pub mod counters;
pub mod ending;
pub mod filter;
pub mod limits;
pub mod record;
pub mod remote;
pub mod request;
pub mod snapshot;
pub mod stats;
pub mod sweep;
pub mod tcp;
pub mod tracepoint;

/// Connection seen from the socket that accepted it: `port` is the local port.
pub const DIR_INBOUND: u8 = 0;
/// Connection this host opened: `port` is the remote port.
pub const DIR_OUTBOUND: u8 = 1;

/// `aya::Pod` for types whose every bit pattern is valid (plain integers and byte arrays).
#[macro_export]
#[doc(hidden)]
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: #[repr(C)], integers and byte arrays only, explicit padding.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
