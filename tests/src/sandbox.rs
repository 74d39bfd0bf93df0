//! Network namespaces, cgroup v2 directories and temporary directories that a test makes for
//! itself and removes on drop, even when it fails.
use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn ip(args: &[&str]) {
    crate::output_of("ip", args);
}

/// A network namespace (`ip netns add`), with loopback up.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("obs");
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Joins two namespaces with a veth pair and gives each end an address in a /24 of the
    /// private range that only these two namespaces use. Returns (address in a, address in b).
    pub fn link(a: &Netns, b: &Netns, subnet: u8) -> (String, String) {
        let (va, vb) = (unique("va"), unique("vb"));
        // Interface names are limited to 15 bytes.
        let (va, vb) = (
            &va[va.len().saturating_sub(15)..],
            &vb[vb.len().saturating_sub(15)..],
        );
        ip(&[
            "link", "add", va, "netns", &a.name, "type", "veth", "peer", "name", vb, "netns",
            &b.name,
        ]);
        let (ia, ib) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
        ip(&["-n", &a.name, "addr", "add", &format!("{ia}/24"), "dev", va]);
        ip(&["-n", &b.name, "addr", "add", &format!("{ib}/24"), "dev", vb]);
        ip(&["-n", &a.name, "link", "set", va, "up"]);
        ip(&["-n", &b.name, "link", "set", vb, "up"]);
        (ia, ib)
    }
}

impl Netns {
    /// Runs `f` on a thread of this process that has entered this namespace (sockets it opens
    /// live there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd as _;
        let ns = std::fs::File::open(format!("/var/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("opening namespace {}: {e}", self.name));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a namespace fd; only this thread moves, and it ends here.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the thread in the namespace panicked")
        })
    }

    /// Sets a sysctl inside this namespace (net.* sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]);
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// A cgroup v2 directory under the v2 hierarchy, wherever it is mounted.
pub struct Cgroup {
    pub path: PathBuf,
    root: PathBuf,
}

impl Cgroup {
    pub fn new() -> Cgroup {
        Self::try_new().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same, or why it could not be made.
    pub fn try_new() -> Result<Cgroup, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .map_err(|e| format!("/proc/self/mounts: {e}"))?;
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .ok_or("no cgroup v2 hierarchy is mounted")?;
        let path = root.join(unique("observer-test"));
        std::fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Cgroup { path, root })
    }

    /// Moves a process into this cgroup.
    pub fn add(&self, pid: u32) {
        self.try_add(pid).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_add(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving {pid} into {}: {e}", self.path.display()))
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A cgroup with processes cannot be removed: move any left back to the root first.
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        // It can be removed a moment after its last process has gone.
        crate::wait_for(std::time::Duration::from_secs(5), || {
            (std::fs::remove_dir(&self.path).is_ok() || !self.path.exists()).then_some(())
        });
    }
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(&format!("observer-test-{prefix}")));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a file of the directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
