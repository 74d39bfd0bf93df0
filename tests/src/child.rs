//! A child process in a process group of its own: stopping it stops the whole group (nginx's
//! workers too), dropping it stops it, and PR_SET_PDEATHSIG stops it should the parent (a test,
//! the bench) be killed without a chance to drop anything.
use std::{
    io,
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

pub struct Guarded {
    pub name: String,
    pub child: Child,
    status: Option<ExitStatus>,
}

impl Guarded {
    pub fn spawn(name: &str, cmd: &mut Command) -> io::Result<Guarded> {
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and changes only the new process.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {name}: {e}")))?;
        Ok(Guarded {
            name: name.to_string(),
            child,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has exited.
    pub fn poll(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_for(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Signals the process group, as long as its leader has not been reaped (its ID cannot have
    /// been reused before that).
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(self.pid() as libc::pid_t), sig) };
        }
    }

    /// Sends `sig` to the group and waits for the exit; SIGKILL after `grace`.
    pub fn stop(&mut self, sig: libc::c_int, grace: Duration) -> io::Result<ExitStatus> {
        self.signal(sig);
        if let Some(status) = self.wait_for(grace)? {
            return Ok(status);
        }
        eprintln!(
            "{} ignored signal {sig} for {grace:?}; killing it",
            self.name
        );
        self.signal(libc::SIGKILL);
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.stop(libc::SIGTERM, Duration::from_secs(3));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_it_stops_its_whole_group() {
        // A shell whose own child sleeps: the group's signal reaches both.
        let mut g =
            Guarded::spawn("sh", Command::new("sh").args(["-c", "sleep 30 & wait"])).expect("sh");
        let status = g.stop(libc::SIGTERM, Duration::from_secs(5)).unwrap();
        assert!(!status.success());
        // Nothing of the group is left (once the sleep, reparented, is reaped): kill(-pgid, 0)
        // finds no process.
        // SAFETY: signal 0 only checks.
        let gone = || unsafe { libc::kill(-(g.pid() as libc::pid_t), 0) } == -1;
        assert!(crate::wait_for(Duration::from_secs(5), || gone().then_some(())).is_some());
    }
}
