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

#[cfg(test)]
mod tests {
    use super::*;

    /// `ab -q -r -n 2000 -c 16` against nginx, as printed.
    const AB: &str = include_str!("testdata/ab.txt");

    #[test]
    fn reads_abs_report() {
        assert_eq!(ab_field(AB, "Complete requests:").unwrap(), 2000);
        assert_eq!(ab_field(AB, "Failed requests:").unwrap(), 0);
        assert!(ab_field(AB, "Non-2xx responses:").is_err());
        assert!(ab_field("", "Complete requests:").is_err());
        // With failures ab adds their kinds on the next line; the count is the first number.
        let failed =
            "Failed requests:        3\n   (Connect: 0, Receive: 0, Length: 3, Exceptions: 0)\n";
        assert_eq!(ab_field(failed, "Failed requests:").unwrap(), 3);
    }

    #[test]
    fn a_rate_is_responses_per_second() {
        let load = Load {
            completed: 3_000,
            failed: 0,
            secs: 1.5,
        };
        assert_eq!(load.rate(), 2_000.0);
    }
}
