//! The `tcp-helper` binary as a child process, optionally inside a network namespace.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

/// The `tcp-helper` binary cargo builds beside the integration tests (target/<profile>/).
fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let path = dir.join("tcp-helper");
    assert!(
        path.exists(),
        "{} is missing (cargo builds it with the tests)",
        path.display()
    );
    path
}

/// A running `tcp-helper`; killed on drop.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts a helper in the current network namespace.
    pub fn start() -> Helper {
        Self::spawn(Command::new(binary()))
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
        c.args(["netns", "exec", ns]).arg(binary());
        Self::spawn(c)
    }

    fn spawn(mut cmd: Command) -> Helper {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tcp-helper");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Helper {
            child,
            stdin,
            stdout,
        }
    }

    /// The helper's PID (`ip netns exec` execs it, so this is the helper itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        assert!(
            !reply.starts_with("error") && !reply.is_empty(),
            "tcp-helper: {line}: {reply}"
        );
        reply.trim().to_string()
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
        assert_eq!(
            self.ask(&format!("hold {addr} {n}")),
            format!("holding {n}")
        );
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
