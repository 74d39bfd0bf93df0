//! The figures the report derives from the measurements: ratios, costs per hit, counts.

use super::{
    bpf::RunStats,
    measure::{Results, Round},
    stats::Spread,
    tool::{Prog, Tool},
};

/// The figures the goals and notes refer to.
pub(super) struct Figures {
    pub(super) baseline: Option<Spread>,
    pub(super) main_ns: Option<Spread>,
    pub(super) both_ns: Option<Spread>,
    pub(super) count_ns: Option<Spread>,
    pub(super) empty_ns: Option<Spread>,
    /// The floor's empty program, attached by BTF type as observer's are.
    pub(super) floor_ns: Option<Spread>,
    pub(super) hits_per_conn: Option<Spread>,
    pub(super) missing_counts: u64,
    pub(super) counted_total: u64,
    pub(super) peak_rss_mib: f64,
    /// The largest kernel memory of `observer --port P` (metrics only) for its BPF maps.
    pub(super) maps_mib: f64,
}

impl Figures {
    pub(super) fn of(r: &Results) -> Figures {
        let rounds = |tool| r.rounds.iter().filter(move |x: &&Round| x.tool == tool);
        let ns =
            |tool, prog| Spread::of(rounds(tool).filter_map(|x| kernel(x, prog)?.ns_per_run()));
        let opened: Vec<&Round> = rounds(Tool::Observer)
            .chain(rounds(Tool::ObserverOpen))
            .chain(rounds(Tool::ObserverEvents))
            .collect();
        Figures {
            baseline: Spread::of(r.rounds.iter().map(|x| x.without.rate())),
            main_ns: ns(Tool::Observer, Prog::Main),
            both_ns: Spread::of(rounds(Tool::Observer).filter_map(both_per_hit)),
            count_ns: ns(Tool::BpftraceCount, Prog::Bpftrace),
            empty_ns: ns(Tool::BpftraceEmpty, Prog::Bpftrace),
            floor_ns: ns(Tool::Floor, Prog::Floor),
            hits_per_conn: Spread::of(
                rounds(Tool::Observer)
                    .filter_map(|x| Some(kernel(x, Prog::Main)?.runs as f64 / x.accepted as f64)),
            ),
            missing_counts: opened.iter().map(|x| missing(x.accepted, x.counted)).sum(),
            counted_total: opened.iter().map(|x| x.accepted).sum(),
            peak_rss_mib: r
                .rounds
                .iter()
                .filter(|x| x.own.is_some())
                .map(|x| x.memory.peak_rss_mib())
                .fold(0.0, f64::max),
            maps_mib: rounds(Tool::Observer)
                .map(|x| x.memory.maps_mib())
                .fold(0.0, f64::max),
        }
    }
}

/// Throughput with `tool` over throughput without it, over its pairs.
pub(super) fn ratio(r: &Results, tool: Tool) -> Option<Spread> {
    Spread::of(
        r.rounds
            .iter()
            .filter(|x| x.tool == tool)
            .map(|x| x.with.rate() / x.without.rate()),
    )
}

pub(super) fn kernel(round: &Round, prog: Prog) -> Option<RunStats> {
    round
        .kernel
        .iter()
        .find(|(p, _)| *p == prog)
        .map(|(_, s)| *s)
}

/// ns per hit of observer's two programs together (both run on every hit).
pub(super) fn both_per_hit(round: &Round) -> Option<f64> {
    let (main, backup) = (kernel(round, Prog::Main)?, kernel(round, Prog::Backup)?);
    (main.runs > 0).then(|| (main.ns + backup.ns) as f64 / main.runs as f64)
}

pub(super) fn missing(accepted: u64, counted: Option<u64>) -> u64 {
    counted.map_or(accepted, |c| accepted.saturating_sub(c))
}

pub(super) fn extra(accepted: u64, counted: Option<u64>) -> u64 {
    counted.map_or(0, |c| c.saturating_sub(accepted))
}

pub(super) fn kernel_us_per_conn(round: &Round) -> Option<f64> {
    let ns: u64 = round.kernel.iter().map(|(_, s)| s.ns).sum();
    (round.accepted > 0).then(|| ns as f64 / round.accepted as f64 / 1e3)
}

/// The ratio the kernel time alone predicts, if the machine was saturated without the tool.
pub(super) fn expected_ratio(round: &Round, cores: usize) -> Option<f64> {
    let cpu_per_conn_us = cores as f64 * 1e6 / round.without.rate();
    Some(1.0 - kernel_us_per_conn(round)? / cpu_per_conn_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::sample::{memory, results, round};

    #[test]
    fn the_throughput_ratio_of_each_pair() {
        let r = results();
        let s = ratio(&r, Tool::Observer).unwrap();
        assert!((s.median - 0.93).abs() < 1e-9);
        assert_eq!((s.min, s.max), (0.9, 0.96));
        assert_eq!(ratio(&r, Tool::BpftraceCount).unwrap().median, 0.75);
        assert!(ratio(&r, Tool::BpftraceEmpty).is_none());
    }

    #[test]
    fn kernel_cost_per_hit_and_per_connection() {
        let r = results();
        let first = &r.rounds[0];
        assert_eq!(kernel(first, Prog::Main).unwrap().runs, 40_000);
        assert!(kernel(first, Prog::Bpftrace).is_none());
        // (8 ms + 2 ms) over 40,000 hits of the main program.
        assert_eq!(both_per_hit(first), Some(250.0));
        assert_eq!(both_per_hit(&r.rounds[2]), None);
        // 10 ms of both programs over 20,000 connections.
        assert_eq!(kernel_us_per_conn(first), Some(0.5));
        // 2 cores at 10,000 conn/s: 200 µs of CPU per connection, 0.5 of them in the kernel.
        assert!((expected_ratio(first, 2).unwrap() - 0.9975).abs() < 1e-12);
        let idle = round(Tool::Observer, 1.0, 1.0, 0, Some(0), &[], memory(1, 1, 1));
        assert_eq!(kernel_us_per_conn(&idle), None);
    }

    #[test]
    fn counts_missing_and_extra() {
        assert_eq!(missing(100, Some(98)), 2);
        assert_eq!(missing(100, Some(103)), 0);
        assert_eq!(missing(100, None), 100);
        assert_eq!(extra(100, Some(103)), 3);
        assert_eq!(extra(100, Some(98)), 0);
        assert_eq!(extra(100, None), 0);
    }

    #[test]
    fn the_figures_of_the_goals() {
        let f = Figures::of(&results());
        assert_eq!(f.main_ns.unwrap().median, 175.0);
        assert_eq!(f.both_ns.unwrap().median, 225.0);
        assert_eq!(f.count_ns.unwrap().median, 100.0);
        assert!(f.empty_ns.is_none());
        assert_eq!(f.floor_ns.unwrap().median, 40.0);
        assert_eq!(f.hits_per_conn.unwrap().median, 2.0);
        // Observer's rounds only: 10 of 40,000 missing.
        assert_eq!((f.missing_counts, f.counted_total), (10, 40_000));
        // The largest of observer's rounds, not bpftrace's.
        assert_eq!(f.peak_rss_mib, 30.0);
        assert_eq!(f.maps_mib, 102.0);
        assert_eq!(f.baseline.unwrap().median, 10_000.0);
    }
}
