//! The connection holders: child processes (`bench --hold`) that keep connections open.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    HOLD_ARG, HOLD_TIMEOUT, PER_HOLDER, STOP_GRACE,
    interrupt::check_interrupt,
    process::{Proc, lines_in_background},
};

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

/// A holder process (`bench --hold`): holds its connections until its stdin closes.
pub(super) struct Holder {
    pub(super) proc: Proc,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) stdout: mpsc::Receiver<String>,
    pub(super) held: usize,
}

impl Holder {
    pub(super) fn spawn(dst: SocketAddr, src: Ipv4Addr, n: usize) -> Result<Holder> {
        let exe = std::env::current_exe().context("finding xtask's own binary")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench",
            HOLD_ARG,
            &dst.to_string(),
            &src.to_string(),
            &n.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("holder", &mut cmd)?;
        let stdin = proc.child.stdin.take();
        let stdout = lines_in_background(proc.child.stdout.take());
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
        // A closed stdin tells the holder to close its connections and exit; Proc's drop
        // stops it otherwise.
        drop(self.stdin.take());
        let _ = self.proc.wait_for(STOP_GRACE);
    }
}

/// The holder process: opens N connections from SRC to DST, says `holding <count>`, and keeps
/// them until its stdin closes (or the bench dies, which PR_SET_PDEATHSIG turns into SIGTERM).
pub fn hold(args: &[String]) -> Result<()> {
    let [dst, src, n] = args else {
        bail!("usage: cargo xtask bench {HOLD_ARG} DST SRC N");
    };
    let dst: SocketAddr = dst.parse().context("DST")?;
    let src: IpAddr = src.parse().context("SRC")?;
    let n: usize = n.parse().context("N")?;
    let deadline = Instant::now() + HOLD_TIMEOUT / 2;
    let mut held = Vec::with_capacity(n);
    while held.len() < n && Instant::now() < deadline {
        match observer_tests::net::try_connect_from(SocketAddr::new(src, 0), dst) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                eprintln!("bench holder {src}: stopped at {}: {e}", held.len());
                break;
            }
        }
    }
    println!("holding {}", held.len());
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
