//! perf: where the CPU goes.
use std::process::Command;

use super::{stats::Spread, tool::Tool};

/// The tools profiled (the printing script's cost is mostly in userspace: section 1 shows it).
pub(super) const PROFILED: [Tool; 9] = [
    Tool::Observer,
    Tool::ObserverAlone,
    Tool::ObserverEvents,
    Tool::Floor,
    Tool::FloorPair,
    Tool::BpftraceEmpty,
    Tool::BpftraceCount,
    Tool::ObserverElsewhere,
    Tool::BpftraceCountElsewhere,
];

/// Kernel functions that run for a hit of the tracepoint, up to and inside the programs: the
/// tracepoint's iterator, perf's tracepoint hook (classic interface), the BPF trampoline of a
/// BTF or raw tracepoint, the programs and the helpers and maps they call.
pub(super) const TRACING_SYMBOLS: &[&str] = &[
    "bpf_prog_",
    "__traceiter_inet_sock_set_state",
    "perf_trace_",
    "trace_call_bpf",
    "bpf_trace_run",
    "__bpf_trace_",
    "__bpf_prog_enter",
    "__bpf_prog_exit",
    "htab_",
    "__htab_",
    "bpf_map_",
    "bpf_ringbuf_",
    "bpf_probe_read",
    "bpf_ktime_get",
    "ktime_get_mono_fast_ns",
    "bpf_get_current",
    "percpu_array_",
    "array_map_",
];

pub(super) fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One profiled run: the share of all CPU samples (every CPU) spent on the tracepoint's path.
#[derive(Clone, Debug)]
pub(super) struct Profile {
    pub(super) tool: Tool,
    /// Percent of all samples.
    pub(super) share: f64,
    /// The largest of those functions, with their percent.
    pub(super) top: Vec<(String, f64)>,
    /// observer's count over the run next to nginx's (observer's runs only).
    pub(super) counted: Option<Tally>,
}

/// Connections nginx accepted over a run, the connections observer counted opened, and the
/// transitions neither of its programs took (`lost_transition`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Tally {
    pub(super) accepted: u64,
    pub(super) opened: u64,
    pub(super) lost: u64,
}

/// The spread of `tool`'s shares over its profiled runs; None without any.
pub(super) fn share_of(profiles: &[Profile], tool: Tool) -> Option<Spread> {
    Spread::of(profiles.iter().filter(|p| p.tool == tool).map(|p| p.share))
}

impl Profile {
    /// From `perf report --stdio --sort sym -q`: lines like `   4.40%  [k] trace_call_bpf`.
    pub(super) fn of(tool: Tool, report: &str) -> Profile {
        let mut hits: Vec<(String, f64)> = report
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let pct = words.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
                let sym = words.nth(1)?;
                let ours = TRACING_SYMBOLS.iter().any(|p| sym.starts_with(p));
                ours.then(|| (sym.to_string(), pct))
            })
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        Profile {
            tool,
            share: hits.iter().map(|(_, p)| p).sum(),
            top: hits.into_iter().take(4).collect(),
            counted: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `perf report --stdio --sort sym -q` of 1 s of `perf record -a` with observer attached
    /// under ab: its first 30 lines and every line on the tracepoint's path (the rest cut).
    const REPORT: &str = include_str!("testdata/perf_report.txt");

    #[test]
    fn sums_the_tracepoints_path() {
        let p = Profile::of(Tool::Observer, REPORT);
        assert!((p.share - 2.32).abs() < 1e-9, "{}", p.share);
        let top: Vec<(&str, f64)> = p.top.iter().map(|(s, v)| (s.as_str(), *v)).collect();
        assert_eq!(
            top,
            [
                ("bpf_trace_run3", 0.75),
                ("bpf_prog_8cc2b7f8226e39cf_observer_main", 0.52),
                ("htab_map_update_elem", 0.18),
                ("__traceiter_inet_sock_set_state", 0.13),
            ]
        );
        assert_eq!(Profile::of(Tool::Observer, "").share, 0.0);
    }
}
