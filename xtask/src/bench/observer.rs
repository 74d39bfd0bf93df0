//! observer, the tool measured.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use observer_tests::scrape::Scrape;

use super::{
    START_TIMEOUT,
    bpf::{RunStats, progs_of, run_stats},
    interrupt::check_interrupt,
    net::http_get,
    process::{Proc, lines_in_background},
    stats::ms,
    usage::cpu_secs,
};

/// The feature that builds observer without its backup program, for the one figure that
/// measures what the backup costs (`Tool::ObserverAlone`); never a release's.
pub(super) const WITHOUT_BACKUP: &str = "without-backup";

/// Where `cargo xtask bench` keeps that build (cargo puts every build's binary at one path).
pub(super) fn without_backup() -> PathBuf {
    crate::setup::workspace().join("target/release/observer-without-backup")
}

/// Builds observer with `WITHOUT_BACKUP` (release) and keeps its binary at `without_backup()`:
/// cargo keeps each feature set's build, so the ordinary build after it is only a copy.
pub(super) fn build_without_backup() -> Result<()> {
    crate::cargo(&[
        "build",
        "--release",
        "--package",
        "observer",
        "--bin",
        "observer",
        "--features",
        WITHOUT_BACKUP,
    ])?;
    let built = crate::setup::workspace().join("target/release/observer");
    std::fs::copy(&built, without_backup())
        .with_context(|| format!("copying {} aside", built.display()))?;
    Ok(())
}

/// A running observer, watching inbound connections to one port.
pub(super) struct Observer {
    pub(super) proc: Proc,
    pub(super) metrics: SocketAddr,
    /// The main program and the backup.
    pub(super) main: u32,
    pub(super) backup: u32,
    /// Every program it holds, those two included: none of them is someone else's tracer.
    pub(super) progs: Vec<u32>,
    pub(super) ready_line: String,
    pub(super) ready_ms: f64,
    pub(super) stderr: mpsc::Receiver<String>,
}

/// What one scrape of observer and the kernel's program statistics said.
#[derive(Clone, Copy, Debug)]
pub(super) struct ObserverReading {
    pub(super) opened: f64,
    /// utime + stime from /proc/PID/stat (clock ticks, 10 ms).
    pub(super) cpu_secs: f64,
    /// observer's own process_cpu_seconds_total (to the clock tick).
    pub(super) cpu_metric: f64,
    pub(super) dropped: f64,
    pub(super) lost: f64,
    pub(super) retired: f64,
    pub(super) backup_counted: f64,
    pub(super) main: RunStats,
    pub(super) backup: RunStats,
}

impl ObserverReading {
    /// A scrape's counters, with the figures read beside it.
    fn of(
        m: &Metrics,
        port: u16,
        cpu_secs: f64,
        main: RunStats,
        backup: RunStats,
    ) -> ObserverReading {
        let conn = [("direction", "inbound"), ("port", &port.to_string())];
        let error = |reason| m.value("observer_kernel_errors_total", &[("reason", reason)]);
        ObserverReading {
            opened: m.value("observer_tcp_connections_opened_total", &conn),
            cpu_secs,
            cpu_metric: m.value("process_cpu_seconds_total", &[]),
            dropped: m.value("observer_events_dropped_total", &[]),
            lost: error("lost_transition"),
            retired: error("stale_socket_retired"),
            backup_counted: m.value("observer_kernel_backup_transitions_total", &[]),
            main,
            backup,
        }
    }
}

impl Observer {
    pub(super) fn start(bin: &Path, port: u16, events: Option<Stdio>) -> Result<Observer> {
        Self::start_with(bin, port, events, &[])
    }

    /// The same with more flags.
    pub(super) fn start_with(
        bin: &Path,
        port: u16,
        events: Option<Stdio>,
        extra: &[&str],
    ) -> Result<Observer> {
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--metrics-addr", "127.0.0.1:0"]);
        cmd.args(extra);
        match events {
            Some(out) => cmd.args(["--events", "json"]).stdout(out),
            None => cmd.stdout(Stdio::null()),
        };
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut proc = Proc::spawn("observer", &mut cmd)?;
        let stderr = lines_in_background(proc.child().stderr.take());
        let ready_line = wait_ready(&mut proc, &stderr)?;
        let ready_ms = ms(start.elapsed());
        let metrics = observer_tests::observer::metrics_addr(&ready_line)
            .ok_or_else(|| anyhow!("no metrics address in `{ready_line}`"))?;
        let progs = progs_of(proc.pid())?;
        let find = |name: &str| {
            progs
                .iter()
                .find(|(_, n, _)| n == name)
                .map(|(id, _, _)| *id)
                .ok_or_else(|| anyhow!("observer holds no program {name}: {progs:?}"))
        };
        Ok(Observer {
            main: find("observer_main")?,
            backup: find("observer_backup")?,
            progs: progs.iter().map(|(id, _, _)| *id).collect(),
            proc,
            metrics,
            ready_line,
            ready_ms,
            stderr,
        })
    }

    pub(super) fn scrape(&self) -> Result<Metrics> {
        Ok(Metrics(Scrape {
            text: http_get(self.metrics, "/metrics")?,
        }))
    }

    pub(super) fn read(&self, port: u16) -> Result<ObserverReading> {
        let m = self.scrape()?;
        let cpu_secs = cpu_secs(self.proc.pid())?;
        let main = run_stats(self.main)?;
        let backup = run_stats(self.backup)?;
        Ok(ObserverReading::of(&m, port, cpu_secs, main, backup))
    }

    pub(super) fn established(&self, port: u16) -> Result<f64> {
        let port = port.to_string();
        Ok(self.scrape()?.value(
            "observer_tcp_connections",
            &[
                ("direction", "inbound"),
                ("port", &port),
                ("state", "established"),
            ],
        ))
    }

    /// SIGTERM: observer detaches and exits 0. Returns a complaint when it did not.
    pub(super) fn stop(mut self) -> Result<Option<String>> {
        let status = self.proc.stop(libc::SIGTERM)?;
        if status.success() {
            return Ok(None);
        }
        let said: Vec<String> = self.stderr.try_iter().collect();
        Ok(Some(format!(
            "observer exited with {status} on SIGTERM: {}",
            said.join(" / ")
        )))
    }
}

/// Waits for observer's `observer: ready:` line, which it prints once attached.
pub(super) fn wait_ready(proc: &mut Proc, stderr: &mpsc::Receiver<String>) -> Result<String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut said = Vec::new();
    while Instant::now() < deadline {
        check_interrupt()?;
        match stderr.recv_timeout(Duration::from_millis(50)) {
            Ok(line) if line.starts_with("observer: ready:") => return Ok(line),
            Ok(line) => said.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if proc.poll()?.is_some() {
            break;
        }
    }
    bail!("observer did not get ready: {}", said.join(" / "))
}

/// A scrape of observer, read with the test harness's parser; a series with no sample reads
/// as 0 (a counter that has not counted anything yet).
pub(super) struct Metrics(pub(super) Scrape);

impl Metrics {
    /// The first sample of `name` whose labels include `labels`; 0 when there is none.
    pub(super) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.value(name, labels).unwrap_or(0.0)
    }

    /// All samples of `name` summed; 0 when there is none.
    pub(super) fn sum(&self, name: &str) -> f64 {
        self.0.sum(name, &[]).unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape of `observer --port 19100` after 500 connections from ab.
    fn scrape() -> Metrics {
        Metrics(Scrape {
            text: include_str!("testdata/observer_metrics.txt").into(),
        })
    }

    #[test]
    fn reads_its_counters_from_a_real_scrape() {
        let m = scrape();
        let main = RunStats { ns: 7, runs: 2 };
        let r = ObserverReading::of(&m, 19100, 1.5, main, RunStats::default());
        assert_eq!(r.opened, 504.0);
        assert_eq!(r.cpu_metric, 0.75);
        assert_eq!(r.cpu_secs, 1.5);
        assert_eq!(
            (r.dropped, r.lost, r.retired, r.backup_counted),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert_eq!(r.main.runs, 2);
        // Another port's counter has no sample: it reads as 0.
        assert_eq!(ObserverReading::of(&m, 80, 0.0, main, main).opened, 0.0);
        assert_eq!(m.sum("observer_kernel_errors_total"), 0.0);
        // The zeros above are samples observer exports, not series missing from the scrape.
        for (name, labels) in [
            ("observer_events_dropped_total", &[][..]),
            (
                "observer_kernel_errors_total",
                &[("reason", "lost_transition")][..],
            ),
            (
                "observer_kernel_errors_total",
                &[("reason", "stale_socket_retired")][..],
            ),
            ("observer_kernel_backup_transitions_total", &[][..]),
        ] {
            assert_eq!(m.0.value(name, labels), Some(0.0), "{name} {labels:?}");
        }
    }

    #[test]
    fn reads_the_established_gauge_of_a_real_scrape() {
        let m = scrape();
        let labels = [
            ("direction", "inbound"),
            ("port", "19100"),
            ("state", "established"),
        ];
        assert_eq!(m.0.value("observer_tcp_connections", &labels), Some(0.0));
        assert_eq!(m.sum("observer_tcp_connections"), 0.0);
        assert_eq!(m.sum("observer_tcp_connections_opened_total"), 504.0);
    }
}
