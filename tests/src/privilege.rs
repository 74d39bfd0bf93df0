//! What a process may do, as /proc tells it: its effective capabilities and its memlock limit.

/// The README's capabilities for `--port` and `--pid` on a host whose processes belong to
/// other users: loading and attaching, finding who holds each socket.
pub const DOCUMENTED: [&str; 4] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search"];

/// Bit 39 of a capability set: CAP_BPF.
pub const CAP_BPF: u64 = 1 << 39;

/// A process's effective capabilities, from /proc/PID/status.
pub fn effective_caps(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    cap_eff(&status)
}

fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// A process's soft and hard RLIMIT_MEMLOCK as /proc/PID/limits writes them (`65536`,
/// `unlimited`).
pub fn memlock_limit(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    memlock_in(&limits)
}

fn memlock_in(limits: &str) -> Option<(String, String)> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))?;
    let mut w = line.split_whitespace().map(str::to_string);
    Some((w.next()?, w.next()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_capabilities_and_the_memlock_limit() {
        let status = "Name:\tobserver\nCapInh:\t0000000000000000\nCapPrm:\t0000008000000000\nCapEff:\t0000008000000000\n";
        assert_eq!(super::cap_eff(status), Some(super::CAP_BPF));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \nMax locked memory         65536                unlimited            bytes     \n";
        assert_eq!(
            super::memlock_in(limits),
            Some(("65536".into(), "unlimited".into()))
        );
        assert_eq!(super::memlock_in("Max open files 1 2 files\n"), None);
    }
}
