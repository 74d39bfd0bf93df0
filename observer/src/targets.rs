//! Turns `--pid` and `--cgroup` into what the kernel program filters on, from procfs and the
//! cgroup v2 filesystem, and finds the listening sockets and connections that the targets hold.
use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{FromRawFd as _, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use observer_common::filter::{CgroupTarget, Owner};

use crate::netns::Namespace;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--pid {0}: no such process")]
    NoSuchPid(u32),
    #[error("--pid {0}: {1} is a kernel thread, which has no sockets of its own")]
    KernelThread(u32, String),
    #[error("--pid {0}: {1} has exited (a zombie waiting for its parent): it has no sockets left")]
    Zombie(u32, String),
    #[error("--cgroup {0}: no such directory")]
    NoSuchCgroup(PathBuf),
    #[error("--cgroup {path}: not a cgroup v2 directory ({hint})")]
    NotCgroup2 { path: PathBuf, hint: String },
    #[error("--cgroup {0}: {1}")]
    CgroupIo(PathBuf, std::io::Error),
    #[error(
        "cannot read the open files of process {0} ({1}): its sockets would go uncounted \
         (CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE are needed for other users' processes)"
    )]
    Unreadable(u32, String),
}

/// `--pid` and `--cgroup`, resolved: each one checked to exist before anything is loaded.
#[derive(Clone)]
pub struct Targets {
    pub processes: Vec<Process>,
    pub cgroups: Vec<Cgroup>,
}

impl Targets {
    pub fn resolve(pids: &[u32], cgroups: &[PathBuf]) -> Result<Targets, TargetError> {
        Ok(Targets {
            processes: pids
                .iter()
                .map(|p| resolve_pid(*p))
                .collect::<Result<_, _>>()?,
            cgroups: cgroups
                .iter()
                .map(|p| resolve_cgroup(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether there is a process target at all (`--pid` or `--cgroup`).
    pub fn any(&self) -> bool {
        !self.processes.is_empty() || !self.cgroups.is_empty()
    }

    /// The target processes now: each `--pid` and the processes it forked, and every process
    /// of each `--cgroup`.
    pub fn pids(&self) -> Vec<u32> {
        let roots: Vec<u32> = self.processes.iter().map(|p| p.pid).collect();
        roots
            .iter()
            .copied()
            .chain(descendants(&roots))
            .chain(self.cgroups.iter().flat_map(|c| cgroup_pids(&c.path)))
            .collect()
    }
}

/// The processes below `roots` in the process tree now (children, theirs, ...), from each
/// process's parent in procfs; threads are not processes.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    if roots.is_empty() {
        return Vec::new(); // no process to read for
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    below(roots, &parents)
}

/// The parent (PPid) of process `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    u32::try_from(stat.ppid).ok()
}

/// The pids below `roots` in a list of (process, parent).
fn below(roots: &[u32], parents: &[(u32, u32)]) -> Vec<u32> {
    let mut found: Vec<u32> = Vec::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(p) = frontier.pop() {
        for (child, parent) in parents {
            if *parent == p && !roots.contains(child) && !found.contains(child) {
                found.push(*child);
                frontier.push(*child);
            }
        }
    }
    found.sort_unstable();
    found
}

/// A target process, with a pidfd that stands for that very process: it reports its exit, and
/// a later process given the same PID is not it.
#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    pub pidfd: Arc<OwnedFd>,
}

const PF_KTHREAD: u32 = 0x0020_0000;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub fn resolve_pid(pid: u32) -> Result<Process, TargetError> {
    let proc =
        procfs::process::Process::new(pid as i32).map_err(|_| TargetError::NoSuchPid(pid))?;
    let stat = proc.stat().map_err(|_| TargetError::NoSuchPid(pid))?;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(TargetError::KernelThread(pid, stat.comm));
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(TargetError::Zombie(pid, stat.comm));
    }
    // SAFETY: a plain system call; the fd it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(TargetError::NoSuchPid(pid));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let pidfd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(Process { pid, pidfd })
}

pub fn owner(pid: u32, comm: &str) -> Owner {
    let mut c = [0u8; 16];
    let n = comm.len().min(15);
    c[..n].copy_from_slice(&comm.as_bytes()[..n]);
    Owner { pid, comm: c }
}

/// A target cgroup v2 directory.
#[derive(Clone, Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    pub target: CgroupTarget,
}

pub fn resolve_cgroup(path: &Path) -> Result<Cgroup, TargetError> {
    let real = path
        .canonicalize()
        .map_err(|_| TargetError::NoSuchCgroup(path.to_path_buf()))?;
    let meta = std::fs::metadata(&real).map_err(|e| TargetError::CgroupIo(path.into(), e))?;
    let mount = cgroup2_mount();
    let hint = || match &mount {
        Some(m) => format!("cgroup v2 is mounted at {}", m.display()),
        None => "no cgroup v2 hierarchy is mounted".to_string(),
    };
    if !meta.is_dir() || !is_cgroup2(&real) {
        return Err(TargetError::NotCgroup2 {
            path: path.into(),
            hint: hint(),
        });
    }
    let root = mount.clone().ok_or_else(|| TargetError::NotCgroup2 {
        path: path.into(),
        hint: hint(),
    })?;
    let rel = real
        .strip_prefix(&root)
        .map_err(|_| TargetError::NotCgroup2 {
            path: path.into(),
            hint: hint(),
        })?;
    Ok(Cgroup {
        path: real.clone(),
        target: CgroupTarget {
            // The cgroup id is the directory's inode number in cgroupfs.
            id: meta.ino(),
            level: rel.components().count() as u32,
            _pad: 0,
        },
    })
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data, for which all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a writable out-struct.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    ok && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
/// hybrid hosts), from /proc/mounts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The processes in a cgroup directory and below.
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Socket inode -> the process that holds it, for the given processes (the lowest PID wins
/// when several share a socket: the parent of a pre-forked server). A process whose open files
/// cannot be read (another user's, without the capabilities `privilege` asks for) is an error:
/// its sockets would silently go uncounted. One that exited meanwhile is skipped.
pub fn socket_owners(
    pids: impl IntoIterator<Item = u32>,
) -> Result<HashMap<u32, Owner>, TargetError> {
    let mut sorted: Vec<u32> = pids.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = HashMap::new();
    for pid in sorted {
        let Ok(proc) = procfs::process::Process::new(pid as i32) else {
            continue;
        };
        let comm = proc.stat().map(|s| s.comm).unwrap_or_default();
        let fds = match proc.fd() {
            Ok(fds) => fds,
            Err(procfs::ProcError::PermissionDenied(_)) => {
                return Err(TargetError::Unreadable(pid, comm));
            }
            Err(_) => continue,
        };
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(inode) = fd.target {
                out.entry(inode as u32).or_insert_with(|| owner(pid, &comm));
            }
        }
    }
    Ok(out)
}

/// Every process on the host.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The distinct namespaces of some processes.
pub fn namespaces_of(pids: &[u32]) -> Vec<Namespace> {
    let mut m: BTreeMap<u32, Namespace> = BTreeMap::new();
    for ns in pids.iter().filter_map(|p| Namespace::of_pid(*p)) {
        m.entry(ns.inode).or_insert(ns);
    }
    m.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_finds_every_generation() {
        // 10 -> 11 -> 13, 10 -> 12; 20 -> 21 is another tree; 1 -> 10.
        let parents = [(10, 1), (11, 10), (12, 10), (13, 11), (21, 20), (20, 1)];
        assert_eq!(below(&[10], &parents), vec![11, 12, 13]);
        assert_eq!(below(&[11, 20], &parents), vec![13, 21]);
        assert!(below(&[13], &parents).is_empty());
    }

    #[test]
    fn pid_errors_name_the_culprit() {
        let e = resolve_pid(u32::MAX - 1).unwrap_err().to_string();
        assert_eq!(e, format!("--pid {}: no such process", u32::MAX - 1));
        // PID 2 is kthreadd on Linux.
        let e = resolve_pid(2).unwrap_err().to_string();
        assert!(e.contains("kernel thread"), "{e}");
    }

    #[test]
    fn cgroup_errors_name_the_culprit() {
        let e = resolve_cgroup(Path::new("/no/such/cgroup"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--cgroup /no/such/cgroup: no such directory");
        let e = resolve_cgroup(Path::new("/tmp")).unwrap_err().to_string();
        assert!(
            e.starts_with("--cgroup /tmp: not a cgroup v2 directory"),
            "{e}"
        );
    }

    #[test]
    fn the_v2_root_is_level_zero() {
        if let Some(root) = cgroup2_mount() {
            let c = resolve_cgroup(&root).unwrap();
            assert_eq!(c.target.level, 0);
        }
    }

    #[test]
    fn own_sockets_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = {
            use std::os::fd::AsRawFd as _;
            std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
                .unwrap()
                .ino() as u32
        };
        let owners = socket_owners([std::process::id()]).unwrap();
        assert_eq!(owners.get(&ino).map(|o| o.pid), Some(std::process::id()));
    }
}
