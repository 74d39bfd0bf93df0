//! The processes the bench starts, each in a process group of its own that a guard stops on
//! drop (the harness's `Guarded`); the commands it runs with their output captured; the temporary directory for their
//! configs and output.
use observer_tests::child::Guarded;
use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};

use super::{STOP_GRACE, TOOL_TIMEOUT, interrupt::check_interrupt};

/// A process the bench started: the harness's guarded child (a process group of its own, stopped
/// on drop, PR_SET_PDEATHSIG), with waits that give way to an interruption.
pub(super) struct Proc(pub(super) Guarded);

impl Proc {
    pub(super) fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        Ok(Proc(Guarded::spawn(name, cmd)?))
    }

    pub(super) fn pid(&self) -> u32 {
        self.0.pid()
    }

    pub(super) fn child(&mut self) -> &mut Child {
        &mut self.0.child
    }

    pub(super) fn poll(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.0.poll();
        status.with_context(|| format!("waiting for {}", self.0.name))
    }

    /// Waits up to `timeout` for the process to exit.
    pub(super) fn wait_for(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if let Some(status) = self.0.wait_for(slice)? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            check_interrupt()?;
        }
    }

    /// Sends `sig` to its group and waits for the exit; SIGKILL after STOP_GRACE.
    pub(super) fn stop(&mut self, sig: libc::c_int) -> Result<ExitStatus> {
        let name = self.0.name.clone();
        let status = self.0.stop(sig, STOP_GRACE);
        status.with_context(|| format!("stopping {name}"))
    }
}

/// A directory for configs, logs and captured output, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn create() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("observer-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What a finished command printed; `ended` is when it closed its stdout (normally: when it
/// exited), which times it more finely than polling for its exit.
pub(super) struct Output {
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) ended: Instant,
}

impl Output {
    pub(super) fn checked(self, name: &str) -> Result<Output> {
        ensure!(
            self.status.success(),
            "{name} failed ({}): {}",
            self.status,
            self.stderr.trim()
        );
        Ok(self)
    }
}

/// A command running with its output captured.
pub(super) struct Running {
    pub(super) name: String,
    pub(super) proc: Proc,
    pub(super) stdout: thread::JoinHandle<(String, Instant)>,
    pub(super) stderr: thread::JoinHandle<(String, Instant)>,
}

impl Running {
    pub(super) fn start(name: &str, cmd: &mut Command) -> Result<Running> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(name, cmd)?;
        let stdout = read_in_background(proc.child().stdout.take());
        let stderr = read_in_background(proc.child().stderr.take());
        Ok(Running {
            name: name.to_string(),
            proc,
            stdout,
            stderr,
        })
    }

    pub(super) fn finish(mut self, timeout: Duration) -> Result<Output> {
        let status = self
            .proc
            .wait_for(timeout)?
            .ok_or_else(|| anyhow!("{} did not finish within {timeout:?}", self.name))?;
        let joined = |h: thread::JoinHandle<(String, Instant)>| {
            h.join()
                .map_err(|_| anyhow!("reading the output of {}", self.name))
        };
        let (stdout, ended) = joined(self.stdout)?;
        let (stderr, _) = joined(self.stderr)?;
        Ok(Output {
            status,
            stdout,
            stderr,
            ended,
        })
    }
}

pub(super) fn read_in_background(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> thread::JoinHandle<(String, Instant)> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        (String::from_utf8_lossy(&buf).into_owned(), Instant::now())
    })
}

pub(super) fn run_bounded(name: &str, cmd: &mut Command, timeout: Duration) -> Result<Output> {
    Running::start(name, cmd)?.finish(timeout)?.checked(name)
}

/// A command's output, for the machine description.
pub(super) fn capture(program: &str, args: &[&str]) -> Result<String> {
    let out = run_bounded(program, Command::new(program).args(args), TOOL_TIMEOUT)?;
    Ok(format!("{}{}", out.stdout, out.stderr).trim().to_string())
}

pub(super) fn lines_in_background(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = pipe {
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}
