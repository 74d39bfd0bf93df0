//! libbpf-tools, the peers a user would pick instead: `tcplife` prints a line per connection
//! when it closes, `tcpstates` a line per transition; both filtered on the local port, as
//! `observer --port` is, and both from Debian's libbpf-tools.
use std::{
    fs::File,
    path::Path,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result};

use super::{
    bpf::{RunStats, sum_run_stats, wait_running},
    net::Poker,
    process::Proc,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tracer {
    Tcplife,
    Tcpstates,
}

impl Tracer {
    pub(super) fn program(self) -> &'static str {
        match self {
            Tracer::Tcplife => "tcplife",
            Tracer::Tcpstates => "tcpstates",
        }
    }

    /// The connections a run of the tool printed: tcplife's lines, or tcpstates' transitions
    /// into ESTABLISHED.
    pub(super) fn counted(self, output: &str) -> u64 {
        match self {
            Tracer::Tcplife => tcplife_lines(output),
            Tracer::Tcpstates => tcpstates_established(output),
        }
    }
}

/// A running tcplife or tcpstates, its output in a file.
pub(super) struct LibbpfTool {
    pub(super) proc: Proc,
    pub(super) progs: Vec<u32>,
}

impl LibbpfTool {
    /// Starts the tool and waits until one of its programs runs (a poke makes a transition).
    pub(super) fn start(
        tracer: Tracer,
        port: u16,
        out: &Path,
        err: &Path,
        poker: &Poker,
    ) -> Result<LibbpfTool> {
        let name = tracer.program();
        let mut cmd = Command::new(name);
        cmd.args(["-L", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(out).with_context(|| format!("creating {}", out.display()))?)
            .stderr(File::create(err).with_context(|| format!("creating {}", err.display()))?);
        let mut proc = Proc::spawn(name, &mut cmd)?;
        let said = || std::fs::read_to_string(err).unwrap_or_default();
        let progs = wait_running(name, &mut proc, said, poker, |_| true)?;
        Ok(LibbpfTool { proc, progs })
    }

    /// What the kernel measured of all its programs' runs.
    pub(super) fn stats(&self) -> Result<RunStats> {
        sum_run_stats(&self.progs)
    }

    /// SIGINT, as at a terminal.
    pub(super) fn stop(mut self) -> Result<ExitStatus> {
        self.proc.stop(libc::SIGINT)
    }
}

/// tcplife's lines, one per connection, under its header
/// (`PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS`).
fn tcplife_lines(output: &str) -> u64 {
    output
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // Nine columns at least (a command name may hold spaces), a PID first.
            fields.len() >= 9 && fields[0].parse::<u32>().is_ok()
        })
        .count() as u64
}

/// tcpstates' transitions into ESTABLISHED (`... OLDSTATE -> NEWSTATE MS`).
fn tcpstates_established(output: &str) -> u64 {
    output
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let n = fields.len();
            n >= 4 && fields[n - 3] == "->" && fields[n - 2] == "ESTABLISHED"
        })
        .count() as u64
}

/// The events the tool reports it lost (a full perf buffer): libbpf-tools print
/// `lost N events on CPU #M` on stderr.
pub(super) fn lost_events(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("lost "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tcplife -L 19100` and `tcpstates -L 19100` while ab made 20 connections to nginx on
    /// port 19100 (and nginx's own 3 reading connections came in), stopped with SIGINT.
    const TCPLIFE: &str = include_str!("testdata/tcplife.txt");
    const TCPSTATES: &str = include_str!("testdata/tcpstates.txt");

    #[test]
    fn counts_tcplifes_connections() {
        assert_eq!(Tracer::Tcplife.counted(TCPLIFE), 23);
        assert_eq!(Tracer::Tcplife.counted(TCPLIFE.lines().next().unwrap()), 0);
    }

    #[test]
    fn counts_tcpstates_transitions_into_established() {
        assert_eq!(Tracer::Tcpstates.counted(TCPSTATES), 23);
        // ESTABLISHED as the state left is no new connection.
        let closing = "ffff8885619a9bc0 12686   ab         127.0.0.1       19100 127.0.0.1       48236 ESTABLISHED -> FIN_WAIT1   0.412\n";
        assert_eq!(Tracer::Tcpstates.counted(closing), 0);
    }

    #[test]
    fn reads_lost_events() {
        let said = "lost 12 events on CPU #0\nlost 3 events on CPU #1\n";
        assert_eq!(lost_events(said), 15);
        assert_eq!(lost_events(""), 0);
    }
}
