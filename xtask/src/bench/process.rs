//! The processes the bench starts, each in a process group of its own that a guard stops on
//! drop; the commands it runs with their output captured; the temporary directory for their
//! configs and output.
use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};

use super::{STOP_GRACE, TOOL_TIMEOUT, interrupt::check_interrupt};

/// A child process in a process group of its own. Dropping it stops the whole group (nginx's
/// workers too); PR_SET_PDEATHSIG stops it should the bench itself be killed.
pub(super) struct Proc {
    pub(super) name: String,
    pub(super) child: Child,
    pub(super) status: Option<ExitStatus>,
}

impl Proc {
    pub(super) fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and changes only the new process.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            status: None,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn poll(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit.
    pub(super) fn wait_for(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            check_interrupt()?;
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Signals the process group, as long as its leader has not been reaped (its ID cannot have
    /// been reused before that).
    pub(super) fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(self.pid() as libc::pid_t), sig) };
        }
    }

    /// Sends `sig` and waits for the exit; SIGKILL after STOP_GRACE.
    pub(super) fn stop(&mut self, sig: libc::c_int) -> Result<ExitStatus> {
        self.signal(sig);
        if let Some(status) = self.wait_for(STOP_GRACE)? {
            return Ok(status);
        }
        eprintln!("bench: {} ignored signal {sig}; killing it", self.name);
        self.signal(libc::SIGKILL);
        let status = self.child.wait().context("waiting for a killed child")?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
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
        let stdout = read_in_background(proc.child.stdout.take());
        let stderr = read_in_background(proc.child.stderr.take());
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
