//! The load generator: ab.
use std::{process::Command, time::Instant};

use anyhow::{Result, anyhow};

use super::{AB_CLIENTS, AB_CONCURRENCY, LOAD_TIMEOUT, process::Running};

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Load {
    /// Responses ab received ("Complete requests", summed over the ab processes).
    pub(super) completed: u64,
    /// ab's "Failed requests".
    pub(super) failed: u64,
    pub(super) secs: f64,
}

impl Load {
    pub(super) fn rate(&self) -> f64 {
        self.completed as f64 / self.secs
    }
}

/// AB_CLIENTS ab processes at once, each making `per_client` requests over a new connection each
/// (no -k), AB_CONCURRENCY at a time.
pub(super) fn load(port: u16, per_client: u64) -> Result<Load> {
    let url = format!("http://127.0.0.1:{port}/");
    let (n, c) = (per_client.to_string(), AB_CONCURRENCY.to_string());
    let start = Instant::now();
    let runs = (0..AB_CLIENTS)
        .map(|_| {
            Running::start(
                "ab",
                Command::new("ab").args(["-q", "-r", "-n", &n, "-c", &c, &url]),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = Load::default();
    for run in runs {
        let out = run.finish(LOAD_TIMEOUT)?.checked("ab")?;
        total.completed += ab_field(&out.stdout, "Complete requests:")?;
        total.failed += ab_field(&out.stdout, "Failed requests:")?;
        total.secs = total.secs.max((out.ended - start).as_secs_f64());
    }
    Ok(total)
}

pub(super) fn ab_field(report: &str, field: &str) -> Result<u64> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no `{field}` in ab's report:\n{report}"))
}
