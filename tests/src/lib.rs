//! Helpers for the integration tests: the real observer binary (loading the real eBPF program
//! into this kernel), real TCP servers and clients, scrapes of its metrics, and the kernel's own
//! view (`bpftool`, `ss`) as independent oracles. Everything started here is stopped on drop.
pub mod bpftool;
pub mod child;
pub mod curl;
pub mod deploy;
pub mod events;
pub mod net;
pub mod nginx;
pub mod observer;
pub mod pki;
pub mod privilege;
pub mod process;
pub mod prometheus;
pub mod promql;
pub mod sandbox;
pub mod scrape;

use std::{
    process::Command,
    time::{Duration, Instant},
};

/// Runs `program` with `args`, and returns its stdout; panics with its stderr if it fails.
pub fn output_of(program: &str, args: &[&str]) -> Vec<u8> {
    try_output_of(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// The same, for callers that report errors rather than panic (the bench): Err names the
/// command and carries its stderr.
pub fn try_output_of(program: &str, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

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
