//! bpftrace, the peer: the same tracepoint with a script that does nothing, counts or prints.
use std::{
    fs::{self, File},
    path::Path,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result};

use super::{TCP_ESTABLISHED, bpf::wait_running, net::Poker, process::Proc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Script {
    /// Does nothing: what any program on the classic tracepoint costs.
    Empty,
    /// Counts transitions per new state in the kernel; prints the map at exit.
    Count,
    /// Prints every transition.
    Print,
}

/// The same tracepoint and the same filter as `observer --port`: the socket's local port.
pub(super) fn bpftrace_script(script: Script, port: impl std::fmt::Display) -> String {
    let probe = format!("tracepoint:sock:inet_sock_set_state /args->sport == {port}/");
    match script {
        Script::Empty => "tracepoint:sock:inet_sock_set_state { }".to_string(),
        Script::Count => format!("{probe} {{ @[args->newstate] = count(); }}"),
        Script::Print => format!(
            "{probe} {{ printf(\"%s:%d %s:%d %d %d\\n\", ntop(args->saddr), args->sport, \
             ntop(args->daddr), args->dport, args->oldstate, args->newstate); }}"
        ),
    }
}

pub(super) struct Bpftrace {
    pub(super) proc: Proc,
    pub(super) prog: u32,
}

impl Bpftrace {
    /// Starts bpftrace and waits until its program runs (a poke makes a transition).
    pub(super) fn start(
        script: Script,
        port: u16,
        out: &Path,
        err: &Path,
        poker: &Poker,
    ) -> Result<Bpftrace> {
        let mut cmd = Command::new("bpftrace");
        cmd.args(["-e", &bpftrace_script(script, port)])
            .stdin(Stdio::null())
            .stdout(File::create(out).with_context(|| format!("creating {}", out.display()))?)
            .stderr(File::create(err).with_context(|| format!("creating {}", err.display()))?);
        let mut proc = Proc::spawn("bpftrace", &mut cmd)?;
        let said = || fs::read_to_string(err).unwrap_or_default();
        let prog = wait_running("bpftrace", &mut proc, said, poker, |t| t == "tracepoint")?[0];
        Ok(Bpftrace { proc, prog })
    }

    /// SIGINT, as at a terminal: bpftrace prints its maps and exits.
    pub(super) fn stop(mut self) -> Result<ExitStatus> {
        self.proc.stop(libc::SIGINT)
    }
}

/// The `@[1]: N` line of the counting script's output: transitions into ESTABLISHED.
pub(super) fn counted_established(output: &str) -> Option<u64> {
    let key = format!("@[{TCP_ESTABLISHED}]:");
    output
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
}

/// Lines of the printing script that are transitions into ESTABLISHED.
pub(super) fn printed_established(output: &str) -> u64 {
    output
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() == 4 && fields[3] == TCP_ESTABLISHED
        })
        .count() as u64
}

/// bpftrace's "Lost N events" reports (perf buffer overruns).
pub(super) fn lost_events(output: &str) -> u64 {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Lost "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the counting script printed after 300 connections (303 with the bench's pokes and
    /// the like), at SIGINT; and the printing script after 20, at SIGINT. Both start with the
    /// warning this bpftrace prints when root cannot raise RLIMIT_MEMLOCK.
    const COUNT: &str = include_str!("testdata/bpftrace_count.txt");
    const PRINT: &str = include_str!("testdata/bpftrace_print.txt");

    #[test]
    fn reads_the_counting_scripts_map() {
        assert_eq!(counted_established(COUNT), Some(303));
        assert_eq!(counted_established("Attaching 1 probe...\n"), None);
    }

    #[test]
    fn counts_the_printed_transitions_into_established() {
        assert_eq!(printed_established(PRINT), 20);
        assert_eq!(lost_events(PRINT), 0);
        // bpftrace's report of a perf buffer overrun, between the printed lines.
        let lost = "127.0.0.1:19100 127.0.0.1:36334 3 1\nLost 17 events\n  Lost 3 events\n";
        assert_eq!(lost_events(lost), 20);
        assert_eq!(printed_established(lost), 1);
    }

    #[test]
    fn the_scripts_filter_on_the_watched_port() {
        assert_eq!(
            bpftrace_script(Script::Count, 19100),
            "tracepoint:sock:inet_sock_set_state /args->sport == 19100/ { @[args->newstate] = count(); }"
        );
        assert!(bpftrace_script(Script::Print, 80).contains("/args->sport == 80/"));
        assert!(!bpftrace_script(Script::Empty, 80).contains("sport"));
    }
}
