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
    pub(super) hits_per_conn: Option<Spread>,
    pub(super) missing_counts: u64,
    pub(super) counted_total: u64,
    pub(super) peak_rss_mib: f64,
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
            hits_per_conn: Spread::of(
                rounds(Tool::Observer)
                    .filter_map(|x| Some(kernel(x, Prog::Main)?.runs as f64 / x.accepted as f64)),
            ),
            missing_counts: opened.iter().map(|x| missing(x.accepted, x.counted)).sum(),
            counted_total: opened.iter().map(|x| x.accepted).sum(),
            peak_rss_mib: r
                .rounds
                .iter()
                .filter_map(|x| x.own.as_ref())
                .map(|o| o.peak_rss_kib as f64 / 1024.0)
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
