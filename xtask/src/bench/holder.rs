//! The connection holders: the test harness's `tcp-helper` processes, each holding connections
//! from a source address of its own (`hold DST N SRC`) until its stdin closes.
use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    HOLD_TIMEOUT, PER_HOLDER, STOP_GRACE,
    interrupt::check_interrupt,
    process::{Proc, lines_in_background},
};
use crate::setup;

/// The harness's binary and its package; `cargo xtask bench` builds it (release) first.
pub(super) const HELPER: &str = "tcp-helper";
pub(super) const HELPER_PACKAGE: &str = "observer-tests";

fn helper() -> PathBuf {
    setup::workspace().join("target/release").join(HELPER)
}

/// Holders for `n` more connections, PER_HOLDER each, each from a source address of its own
/// (127.0.0.2 and up): the ephemeral ports of one source address would not reach 100,000.
pub(super) fn hold_more(dst: SocketAddr, n: usize, first: usize) -> Result<Vec<Holder>> {
    let mut pending = Vec::new();
    let mut left = n;
    while left > 0 {
        let count = left.min(PER_HOLDER);
        let index = u8::try_from(first + pending.len() + 2).context("too many holders")?;
        let src = Ipv4Addr::new(127, 0, 0, index);
        pending.push(Holder::spawn(dst, src, count)?);
        left -= count;
    }
    for holder in &mut pending {
        holder.wait_holding()?;
    }
    Ok(pending)
}

/// A `tcp-helper` holding connections until its stdin closes.
pub(super) struct Holder {
    pub(super) proc: Proc,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) stdout: mpsc::Receiver<String>,
    pub(super) held: usize,
}

impl Holder {
    pub(super) fn spawn(dst: SocketAddr, src: Ipv4Addr, n: usize) -> Result<Holder> {
        let mut cmd = Command::new(helper());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(HELPER, &mut cmd)?;
        let mut stdin = proc.child().stdin.take();
        if let Some(stdin) = &mut stdin {
            writeln!(stdin, "hold {dst} {n} {src}").context("asking tcp-helper to hold")?;
            stdin.flush()?;
        }
        let stdout = lines_in_background(proc.child().stdout.take());
        Ok(Holder {
            proc,
            stdin,
            stdout,
            held: 0,
        })
    }

    /// Waits for the holder's `holding N`: N may be short of what was asked if connecting failed.
    pub(super) fn wait_holding(&mut self) -> Result<()> {
        let deadline = Instant::now() + HOLD_TIMEOUT;
        while Instant::now() < deadline {
            check_interrupt()?;
            match self.stdout.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(n) = line.strip_prefix("holding ") {
                        self.held = n.trim().parse().context("the holder's count")?;
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("a holder exited ({:?})", self.proc.poll()?)
                }
            }
        }
        bail!("a holder did not report within {HOLD_TIMEOUT:?}")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // A closed stdin ends tcp-helper, which closes its connections; Proc's drop stops it
        // otherwise.
        drop(self.stdin.take());
        let _ = self.proc.wait_for(STOP_GRACE);
    }
}
