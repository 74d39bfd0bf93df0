//! The floor: an empty program on the tracepoint, attached the way observer's are (by BTF type,
//! `tp_btf`), in a process of its own (`bench-floor`, crate xtask/floor). Debian's bpftrace 0.17
//! cannot attach one here (`rawtracepoint:` is no probe type of it, `kfunc:` is unavailable).
//! Two such programs, as many as observer attaches, are the floor of a two-program design.
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    START_TIMEOUT, STOP_GRACE,
    bpf::{run_stats, wait_running},
    interrupt::wait_until,
    net::Poker,
    process::Proc,
};
use crate::setup;

/// The loader's package and binary; `cargo xtask bench` builds it (release) with observer.
pub(super) const PACKAGE: &str = "bench-floor";

pub(super) fn binary() -> PathBuf {
    setup::workspace().join("target/release").join(PACKAGE)
}

/// The loader, holding its empty programs attached until its stdin closes.
pub(super) struct Floor {
    pub(super) proc: Proc,
    stdin: Option<ChildStdin>,
    /// Its programs, the one of the floor first.
    pub(super) progs: Vec<u32>,
}

impl Floor {
    /// Starts the loader with `programs` empty programs (1 or 2) and waits until each runs (a
    /// poke makes a transition).
    pub(super) fn start(err: &Path, poker: &Poker, programs: usize) -> Result<Floor> {
        let mut cmd = Command::new(binary());
        cmd.arg(programs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(File::create(err).with_context(|| format!("creating {}", err.display()))?);
        let mut proc = Proc::spawn(PACKAGE, &mut cmd)?;
        let stdin = proc.child().stdin.take();
        let said = || fs::read_to_string(err).unwrap_or_default();
        let mut progs = wait_running(PACKAGE, &mut proc, said, poker, |t| t == "tracing")?;
        progs.sort_unstable();
        if progs.len() != programs {
            bail!("{PACKAGE} holds {} programs, not {programs}", progs.len());
        }
        // The loader loads every program before it attaches any: each must run, not one.
        wait_until(
            &format!("each program of {PACKAGE} to run"),
            START_TIMEOUT,
            Duration::from_millis(50),
            || {
                poker.poke()?;
                for id in &progs {
                    if run_stats(*id)?.runs == 0 {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )?;
        Ok(Floor { proc, stdin, progs })
    }

    /// Closes its stdin: it detaches and exits 0. Returns a complaint when it did not.
    pub(super) fn stop(mut self) -> Result<Option<String>> {
        drop(self.stdin.take());
        let status = match self.proc.wait_for(STOP_GRACE)? {
            Some(status) => status,
            None => self.proc.stop(libc::SIGTERM)?,
        };
        Ok((!status.success()).then(|| format!("{PACKAGE} exited with {status}")))
    }
}
