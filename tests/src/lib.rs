//! Helpers for the integration tests: the real observer binary (loading the real eBPF program
//! into this kernel), real TCP servers and clients, scrapes of its metrics, and the kernel's own
//! view (`bpftool`, `ss`) as independent oracles. Everything started here is stopped on drop.
pub mod net;
pub mod observer;
pub mod process;
pub mod sandbox;
pub mod scrape;

use std::time::{Duration, Instant};

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Skips nothing: these tests need root, and say so plainly when they do not have it.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load eBPF programs and must run as root"
    );
}
