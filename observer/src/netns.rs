//! Network namespaces: which ones exist, and a dump of TCP sockets inside each.
use std::{
    collections::BTreeMap,
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::diag::{self, DiagSocket, Lister};

/// A network namespace, by the inode the kernel gives it (what the eBPF program reads from a
/// socket) and a path that opens it. Inode 0: namespaces are not told apart (no BTF offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u32,
    pub path: PathBuf,
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "network namespace {} ({})",
            self.inode,
            self.path.display()
        )
    }
}

impl Namespace {
    /// The namespace observer runs in.
    pub fn own() -> Namespace {
        let path = PathBuf::from("/proc/self/ns/net");
        Namespace {
            inode: inode(&path).unwrap_or(0),
            path,
        }
    }

    /// The namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Option<Namespace> {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        Some(Namespace {
            inode: inode(&path)?,
            path,
        })
    }

    /// Its TCP sockets in `states`. A namespace gone since it was found (its last process
    /// exited, `ip netns delete`) has none left: an empty list, not an error.
    pub fn dump(&self, states: u32) -> Result<Vec<DiagSocket>> {
        if self.inode == 0 || Some(self.inode) == inode(Path::new("/proc/self/ns/net")) {
            return diag::dump(states);
        }
        match diag::dump_in(&self.path, states) {
            Err(e) if gone(&e) => Ok(Vec::new()),
            listed => listed,
        }
    }
}

/// A sock_diag socket kept open in each namespace, with its inode, opened now (at start, while
/// observer may still enter namespaces) for a part of observer that lists sockets later
/// (`purpose`, for the warnings). A namespace gone since it was found (its last process exited)
/// has nothing left to list: a warning, not an error.
pub fn listers(namespaces: &[Namespace], purpose: &str) -> Result<Vec<(u32, Lister)>> {
    let own = Namespace::own().inode;
    let mut listers = Vec::new();
    for ns in namespaces {
        if ns.inode == 0 || ns.inode == own {
            let l = Lister::open().with_context(|| format!("opening sock_diag for {purpose}"))?;
            listers.push((ns.inode, l));
            continue;
        }
        match Lister::open_in(&ns.path) {
            Ok(l) => listers.push((ns.inode, l)),
            Err(e) => eprintln!("observer: warning: {ns} is not listed for {purpose}: {e:#}"),
        }
    }
    Ok(listers)
}

/// Whether listing a namespace failed because it no longer exists: its file (a /proc/PID/ns/net
/// of an exited process, a deleted /run/netns entry) is not there any more.
fn gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// Every network namespace that a process is in, or that `ip netns` holds.
pub fn all() -> Vec<Namespace> {
    let mut found: BTreeMap<u32, PathBuf> = BTreeMap::new();
    let own = Namespace::own();
    found.insert(own.inode, own.path);
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten();
    for path in procs
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"))
        .chain(named.map(|e| e.path()))
    {
        if let Some(ino) = inode(&path) {
            found.entry(ino).or_insert(path);
        }
    }
    found
        .into_iter()
        .map(|(inode, path)| Namespace { inode, path })
        .collect()
}

/// What observer can see of the host's network namespaces before it starts: whether any other
/// than its own exists, and whether some process's could not be read (another user's, without
/// CAP_SYS_PTRACE), so that others may exist unseen.
pub fn survey() -> (bool, bool) {
    let own = Namespace::own().inode;
    let (mut others, mut hidden) = (false, false);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        match std::fs::metadata(e.path().join("ns/net")) {
            Ok(m) => others |= m.ino() as u32 != own,
            // A process that exited meanwhile hides nothing.
            Err(err) => hidden |= err.kind() == std::io::ErrorKind::PermissionDenied,
        }
    }
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten();
    others |= named.filter_map(|e| inode(&e.path())).any(|ino| ino != own);
    (others, hidden)
}

fn inode(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_whose_file_is_gone_is_gone_and_nothing_else_is() {
        let path = PathBuf::from("/run/netns/observer-no-such-namespace");
        let e = crate::diag::dump_in(&path, 0).unwrap_err();
        assert!(gone(&e), "{e:#}");
        let vanished = Namespace { inode: 1, path };
        assert!(vanished.dump(0).unwrap().is_empty());
        let refused =
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
                .context("opening /run/netns/x");
        assert!(!gone(&refused));
    }
}
