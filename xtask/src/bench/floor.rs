//! The floor: an empty program on the tracepoint, attached the way observer's are (by BTF type,
//! `tp_btf`), in a process of its own (`bench-floor`, crate xtask/floor). Debian's bpftrace 0.17
//! cannot attach one here (`rawtracepoint:` is no probe type of it, `kfunc:` is unavailable).
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
};

use anyhow::{Context as _, Result};

use super::{STOP_GRACE, bpf::wait_running, net::Poker, process::Proc};
use crate::setup;

/// The loader's package and binary; `cargo xtask bench` builds it (release) with observer.
pub(super) const PACKAGE: &str = "bench-floor";

pub(super) fn binary() -> PathBuf {
    setup::workspace().join("target/release").join(PACKAGE)
}

/// The loader, holding the empty program attached until its stdin closes.
pub(super) struct Floor {
    pub(super) proc: Proc,
    stdin: Option<ChildStdin>,
    pub(super) prog: u32,
}

impl Floor {
    /// Starts the loader and waits until its program runs (a poke makes a transition).
    pub(super) fn start(err: &Path, poker: &Poker) -> Result<Floor> {
        let mut cmd = Command::new(binary());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(File::create(err).with_context(|| format!("creating {}", err.display()))?);
        let mut proc = Proc::spawn(PACKAGE, &mut cmd)?;
        let stdin = proc.child().stdin.take();
        let said = || fs::read_to_string(err).unwrap_or_default();
        let prog = wait_running(PACKAGE, &mut proc, said, poker, |t| t == "tracing")?[0];
        Ok(Floor { proc, stdin, prog })
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
