//! BPF programs: which ones a process holds, and what the kernel measured of their runs.
use std::{collections::BTreeSet, fs, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::{BPF_STATS, START_TIMEOUT, interrupt::wait_until, net::Poker, process::Proc};

/// `sysctl -w kernel.bpf_stats_enabled=1` for the bench (the kernel counts run_time_ns and
/// run_cnt only then); the previous value comes back on drop.
pub(super) struct BpfStats {
    pub(super) previous: String,
}

impl BpfStats {
    pub(super) fn enable() -> Result<BpfStats> {
        let previous = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_string();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.previous) {
            eprintln!(
                "bench: could not restore {BPF_STATS} to {}: {e}",
                self.previous
            );
        }
    }
}

/// run_time_ns and run_cnt of one program (counted while kernel.bpf_stats_enabled=1).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RunStats {
    pub(super) ns: u64,
    pub(super) runs: u64,
}

impl RunStats {
    /// From one program of `bpftool prog show --json`: 0 runs when the kernel counted none
    /// (bpftool leaves the fields out while kernel.bpf_stats_enabled is 0).
    pub(super) fn of(prog: &Value) -> RunStats {
        let field = |name: &str| prog[name].as_u64().unwrap_or(0);
        RunStats {
            ns: field("run_time_ns"),
            runs: field("run_cnt"),
        }
    }

    pub(super) fn since(self, before: RunStats) -> RunStats {
        RunStats {
            ns: self.ns.saturating_sub(before.ns),
            runs: self.runs.saturating_sub(before.runs),
        }
    }

    pub(super) fn ns_per_run(self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

/// `bpftool prog show [id ID] --json`, through the test harness.
pub(super) fn bpftool_progs(id: Option<u32>) -> Result<Value> {
    let id = id.map(|id| id.to_string());
    let mut args = vec!["prog", "show"];
    if let Some(id) = &id {
        args.extend(["id", id]);
    }
    observer_tests::bpftool::try_json(&args).map_err(|e| anyhow!(e))
}

pub(super) fn run_stats(id: u32) -> Result<RunStats> {
    Ok(RunStats::of(&bpftool_progs(Some(id))?))
}

/// The programs a process holds (id, name, type), from the `prog_id:` lines of its fdinfo
/// (this bpftool does not show PIDs).
pub(super) fn progs_of(pid: u32) -> Result<Vec<(u32, String, String)>> {
    observer_tests::observer::programs_of(pid)
        .into_iter()
        .map(|id| {
            let id = u32::try_from(id).context("a program ID")?;
            let prog = bpftool_progs(Some(id))?;
            let field = |k: &str| prog[k].as_str().unwrap_or_default().to_string();
            Ok((id, field("name"), field("type")))
        })
        .collect()
}

/// Waits until the programs of `proc` that `pick` keeps run: a poke of `poker` makes a
/// transition, which every program on the tracepoint sees. Returns their IDs. `said` is what
/// the tool wrote to stderr, for the error when it exits first.
pub(super) fn wait_running(
    name: &str,
    proc: &mut Proc,
    said: impl Fn() -> String,
    poker: &Poker,
    pick: impl Fn(&str) -> bool,
) -> Result<Vec<u32>> {
    wait_until(
        &format!("{name} to attach"),
        START_TIMEOUT,
        Duration::from_millis(50),
        || {
            if let Some(status) = proc.poll()? {
                bail!("{name} exited ({status}): {}", said().trim());
            }
            let progs: Vec<u32> = progs_of(proc.pid())?
                .into_iter()
                .filter(|(_, _, kind)| pick(kind))
                .map(|(id, _, _)| id)
                .collect();
            if progs.is_empty() {
                return Ok(None);
            }
            poker.poke()?;
            Ok((sum_run_stats(&progs)?.runs > 0).then_some(progs))
        },
    )
}

/// What the kernel measured of some programs' runs, summed.
pub(super) fn sum_run_stats(progs: &[u32]) -> Result<RunStats> {
    let mut sum = RunStats::default();
    for id in progs {
        let s = run_stats(*id)?;
        sum.ns += s.ns;
        sum.runs += s.runs;
    }
    Ok(sum)
}

/// Programs on sock:inet_sock_set_state that are not the bench's (another user's tracers, or
/// another observer).
pub(super) fn foreign_tracers(ours: &BTreeSet<u32>) -> Result<Vec<String>> {
    Ok(foreign_in(&bpftool_progs(None)?, ours))
}

/// The programs of `bpftool prog show --json` that sit on the tracepoint and are not `ours`.
fn foreign_in(all: &Value, ours: &BTreeSet<u32>) -> Vec<String> {
    all.as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            let id = p["id"].as_u64().unwrap_or(0);
            let name = p["name"].as_str().unwrap_or_default();
            // bpftrace and tcplife name a tracepoint's program after it; observer names its
            // own, and the bench's floor is observer_floor; tcpstates calls its program
            // handle_set_state.
            let on_tracepoint = name.starts_with("inet_sock_set")
                || name.starts_with("observer_")
                || name == "handle_set_state";
            on_tracepoint && !ours.contains(&(id as u32))
        })
        .map(|p| {
            let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            format!("`{}` ({})", field("name"), field("type"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bpftool prog show --json` with kernel.bpf_stats_enabled=1, while the bench's observer
    /// (14768-14771) and bpftrace (14767) ran, and someone else's observer too.
    fn all() -> Value {
        serde_json::from_str(include_str!("testdata/bpftool_all.json")).unwrap()
    }

    #[test]
    fn reads_run_stats_from_bpftool() {
        let prog: Value = serde_json::from_str(include_str!("testdata/bpftool_prog.json")).unwrap();
        let stats = RunStats::of(&prog);
        assert_eq!((stats.ns, stats.runs), (660_641, 3_030));
        assert!((stats.ns_per_run().unwrap() - 218.033).abs() < 0.001);
        // A program the kernel has not counted: bpftool leaves the fields out.
        let reap = all()
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == 14771)
            .cloned()
            .unwrap();
        assert_eq!(RunStats::of(&reap).runs, 0);
        assert_eq!(RunStats::of(&reap).ns_per_run(), None);
    }

    #[test]
    fn a_difference_of_run_stats_never_goes_below_zero() {
        let before = RunStats { ns: 100, runs: 4 };
        let after = RunStats { ns: 700, runs: 7 };
        let d = after.since(before);
        assert_eq!((d.ns, d.runs), (600, 3));
        assert_eq!(d.ns_per_run(), Some(200.0));
        // A program reloaded between the readings: counts start again from 0.
        let d = before.since(after);
        assert_eq!((d.ns, d.runs), (0, 0));
    }

    #[test]
    fn finds_the_tracers_that_are_not_the_benchs() {
        let ours: BTreeSet<u32> = (14767..=14771).collect();
        assert_eq!(
            foreign_in(&all(), &ours),
            [
                "`observer_main` (tracing)",
                "`observer_backup` (tracing)",
                "`observer_sweep` (tracing)",
                "`observer_reap` (tracing)",
            ]
        );
        let none = foreign_in(&all(), &BTreeSet::new());
        assert_eq!(none.len(), 9);
        assert!(none.contains(&"`inet_sock_set_s` (tracepoint)".to_string()));
    }
}
