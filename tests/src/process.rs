//! The `tcp-helper` binary as a child process, optionally inside a network namespace.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::Duration,
};

/// The `tcp-helper` binary beside this one (the VM guest's /bin), or where cargo builds it
/// beside the integration tests (target/<profile>/, one up from their deps/).
fn binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this binary's path: {e}"))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("tcp-helper"))
        .collect();
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| {
            format!("tcp-helper is missing (cargo builds it with the tests): not in {candidates:?}")
        })
}

/// How long a command may take to answer: the largest (`connect` of a few hundred) take
/// well under a second.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `tcp-helper`; killed on drop.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<String>,
}

impl Helper {
    /// Starts a helper in the current network namespace.
    pub fn start() -> Helper {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same, or why it could not start.
    pub fn try_start() -> Result<Helper, String> {
        Self::spawn(Command::new(binary()?))
    }

    /// Starts a helper that gets PID `pid` (free now): the kernel hands out the PID after
    /// `ns_last_pid`, unless another process on the host forks first, so it tries again a few
    /// times. None if every try lost that race.
    pub fn start_with_pid(pid: u32) -> Option<Helper> {
        for _ in 0..100 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                .expect("writing ns_last_pid (root)");
            let h = Self::start();
            if h.pid() == pid {
                return Some(h);
            }
        }
        None
    }

    /// Starts a helper inside network namespace `ns` (made with `ip netns add`).
    pub fn start_in(ns: &str) -> Helper {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(binary().unwrap_or_else(|e| panic!("{e}")));
        Self::spawn(c).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn(mut cmd: Command) -> Result<Helper, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting tcp-helper: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let out = child.stdout.take().expect("piped");
        // A thread reads the replies, so that waiting for one is bounded.
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Helper {
            child,
            stdin,
            replies,
        })
    }

    /// The helper's PID (`ip netns exec` execs it, so this is the helper itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ask(&mut self, line: &str) -> String {
        self.try_ask(line).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends one command; its reply, or why there is none (an `error` reply, an exit, no reply
    /// within 30 s).
    pub fn try_ask(&mut self, line: &str) -> Result<String, String> {
        writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("tcp-helper `{line}`: {e}"))?;
        let reply = self.replies.recv_timeout(REPLY_TIMEOUT).map_err(|_| {
            format!("tcp-helper `{line}`: no reply (it exited, or took over {REPLY_TIMEOUT:?})")
        })?;
        if reply.starts_with("error") {
            return Err(format!("tcp-helper `{line}`: {reply}"));
        }
        Ok(reply.trim().to_string())
    }

    /// Sends one command, which must get exactly `reply`.
    pub fn expect(&mut self, line: &str, reply: &str) -> Result<(), String> {
        let got = self.try_ask(line)?;
        if got == reply {
            Ok(())
        } else {
            Err(format!("tcp-helper `{line}` said `{got}`, not `{reply}`"))
        }
    }

    /// Listens on `addr`; returns the port.
    pub fn listen(&mut self, addr: &str) -> u16 {
        let r = self.ask(&format!("listen {addr}"));
        r.strip_prefix("listening ").unwrap().parse().unwrap()
    }

    /// Listens on `addr` with SO_REUSEPORT (other processes may listen on the same port).
    pub fn listen_reuseport(&mut self, addr: &str) -> u16 {
        let r = self.ask(&format!("listen {addr} reuseport"));
        r.strip_prefix("listening ").unwrap().parse().unwrap()
    }

    /// Closes every listening socket; returns how many.
    pub fn unlisten(&mut self) -> usize {
        let r = self.ask("unlisten");
        r.strip_prefix("unlistened ").unwrap().parse().unwrap()
    }

    /// The client ports of the connections this helper accepted.
    pub fn accepted(&mut self) -> Vec<u16> {
        let r = self.ask("accepted");
        r.split_whitespace()
            .skip(1)
            .map(|p| p.parse().unwrap())
            .collect()
    }

    /// Starts a child helper (a process this one forks); returns its index and PID. It is
    /// stopped when this helper is.
    pub fn spawn_child(&mut self) -> (usize, u32) {
        let r = self.ask("spawn");
        let v: Vec<u32> = r
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        (v[0] as usize, v[1])
    }

    /// Sends `cmd` to child `index`; its reply.
    pub fn child(&mut self, index: usize, cmd: &str) -> String {
        self.ask(&format!("child {index} {cmd}"))
    }

    /// Stops child `index` and waits for it to exit.
    pub fn reap(&mut self, index: usize) {
        self.ask(&format!("reap {index}"));
    }

    /// Opens and closes `n` connections; returns (succeeded, failed).
    pub fn connect(&mut self, addr: &str, n: usize) -> (usize, usize) {
        let r = self.ask(&format!("connect {addr} {n}"));
        let v: Vec<usize> = r
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        (v[0], v[1])
    }

    /// Opens `n` connections and keeps them until `release`.
    pub fn hold(&mut self, addr: &str, n: usize) {
        self.expect(&format!("hold {addr} {n}"), &format!("holding {n}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Closes the held connections.
    pub fn release(&mut self) {
        self.ask("release");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}
