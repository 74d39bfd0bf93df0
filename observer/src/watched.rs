//! What observer watches, found on the running system once the programs are attached: the
//! network namespaces to list, who owns which socket, which listening ports count; and the rule
//! that tells which existing connection is whose (`classify`), for the snapshot.
use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context as _, Result};
use observer_common::{
    DIR_INBOUND, DIR_OUTBOUND,
    filter::{LocalPortKey, Owner, PortOwner},
    tcp,
};

use crate::{
    config::Config,
    diag::{self, DiagSocket},
    kernel::Kernel,
    netns::{self, Namespace},
    targets::{self, Targets},
};

#[derive(Clone)]
pub struct Watched {
    /// The namespaces whose connections the snapshot lists.
    pub namespaces: Vec<Namespace>,
    /// Socket inode -> the process that holds it (the targets', or every process's).
    owners: HashMap<u32, Owner>,
    /// The sockets of the target processes (none without `--pid`/`--cgroup`).
    target_inodes: HashSet<u32>,
    /// Watched local ports: (namespace, port) -> owner; namespace 0 is every namespace.
    local: HashMap<(u32, u16), Owner>,
    /// Watched remote ports.
    remote: HashSet<u16>,
}

/// The network namespaces watched: every one where ports are watched in every namespace
/// (`--port`, `--remote-port`, no target), the targets' own otherwise; one, unnamed (inode 0),
/// where namespaces cannot be told apart.
pub fn namespaces(config: &Config, targets: &Targets, namespaces_known: bool) -> Vec<Namespace> {
    if !namespaces_known {
        vec![Namespace {
            inode: 0,
            ..Namespace::own()
        }]
    } else if config.all_listeners() || !config.ports.is_empty() || !config.remote_ports.is_empty()
    {
        netns::all()
    } else {
        targets::namespaces_of(&targets.pids())
    }
}

impl Watched {
    /// Finds the namespaces, the owners and the targets' listening ports, and hands the ports to
    /// the kernel. `own_endpoint` is the inode of observer's metrics socket: with no target every
    /// listener counts, but not observer's own (Prometheus's scrapes are not the server's
    /// traffic); `--port` still names it when wanted.
    pub fn discover(
        kernel: &mut Kernel,
        config: &Config,
        targets: &Targets,
        namespaces_known: bool,
        own_endpoint: Option<u32>,
    ) -> Result<Watched> {
        let all = config.all_listeners();
        let target_pids = targets.pids();
        let namespaces = namespaces(config, targets, namespaces_known);
        let owners = if all {
            targets::socket_owners(targets::all_pids())
        } else {
            targets::socket_owners(target_pids.iter().copied())
        }?;
        let target_inodes: HashSet<u32> = if targets.any() {
            owners.keys().copied().collect()
        } else {
            HashSet::new()
        };
        if all || !target_inodes.is_empty() {
            let mask = diag::state_mask(&[tcp::LISTEN]);
            for ns in &namespaces {
                let listening = ns
                    .dump(mask)
                    .with_context(|| format!("listing the listening sockets of {ns}"))?;
                // A port is watched when one of its listeners counts; its owner is known only
                // when every listener of it is one process's (see `PortOwner`).
                let mut ports: BTreeMap<u16, (bool, Vec<Owner>)> = BTreeMap::new();
                for s in listening {
                    let counts = if all {
                        own_endpoint != Some(s.inode)
                    } else {
                        target_inodes.contains(&s.inode)
                    };
                    let port = ports.entry(s.sport).or_default();
                    port.0 |= counts;
                    port.1
                        .push(owners.get(&s.inode).copied().unwrap_or(Owner::UNKNOWN));
                }
                for (port, (counts, listeners)) in ports {
                    if counts {
                        let owner = PortOwner::of_listeners(&listeners);
                        kernel.watch_local_port(ns.inode, port, &owner)?;
                    }
                }
            }
        }
        let mut watched = Watched {
            namespaces,
            owners,
            target_inodes,
            local: HashMap::new(),
            remote: config.remote_ports.iter().copied().collect(),
        };
        // The kernel's set: `--port`s, the listeners above, and those a target opened since.
        watched.follow(kernel.local_ports());
        Ok(watched)
    }

    /// Takes the watched local ports as the kernel holds them now: the program adds a target's
    /// new listeners itself.
    pub fn follow(&mut self, local: Vec<(LocalPortKey, Owner)>) {
        self.local = local
            .into_iter()
            .map(|(k, o)| ((k.netns, k.port), o))
            .collect();
    }

    /// Reads the target processes' sockets again (a connection they opened since): true when
    /// they could be read. When one cannot be read (another user's: observer has dropped the
    /// capabilities to read those), the sockets found before stay.
    pub fn refresh_targets(&mut self, targets: &Targets) -> bool {
        match targets::socket_owners(targets.pids()) {
            Ok(owners) => {
                // Replaced, not added to: the sockets closed since are forgotten.
                self.target_inodes = owners.keys().copied().collect();
                self.owners = owners;
                true
            }
            Err(_) => false,
        }
    }

    /// Whose an existing connection in namespace `ns` is: (direction, port, owner), or None when
    /// it is not watched. A local port that is watched makes it inbound, as the kernel program
    /// counts a listener's child; then a watched remote port, or a target's socket, outbound.
    pub fn classify(&self, ns: u32, s: &DiagSocket) -> Option<(u8, u16, Owner)> {
        if let Some(o) = self
            .local
            .get(&(ns, s.sport))
            .or_else(|| self.local.get(&(0, s.sport)))
        {
            return Some((DIR_INBOUND, s.sport, *o));
        }
        self.classify_outbound(s)
    }

    /// `classify` for a socket known not to be an accepted connection: outbound, or None.
    pub fn classify_outbound(&self, s: &DiagSocket) -> Option<(u8, u16, Owner)> {
        let owner = self.owners.get(&s.inode).copied().unwrap_or(Owner::UNKNOWN);
        if self.remote.contains(&s.dport) || self.target_inodes.contains(&s.inode) {
            return Some((DIR_OUTBOUND, s.dport, owner));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(sport: u16, dport: u16, inode: u32) -> DiagSocket {
        let lo = std::net::IpAddr::from([127, 0, 0, 1]);
        DiagSocket {
            state: tcp::ESTABLISHED,
            sport,
            dport,
            saddr: lo,
            daddr: lo,
            inode,
        }
    }

    fn watched() -> Watched {
        let nginx = crate::targets::owner(10, "nginx");
        let client = crate::targets::owner(20, "client");
        Watched {
            namespaces: Vec::new(),
            owners: HashMap::from([(100, nginx), (200, client)]),
            target_inodes: HashSet::from([200]),
            local: HashMap::from([((0, 8080), Owner::UNKNOWN), ((7, 9090), nginx)]),
            remote: HashSet::from([5432]),
        }
    }

    #[test]
    fn a_watched_local_port_is_inbound_in_its_namespace() {
        let w = watched();
        assert_eq!(
            w.classify(1, &socket(8080, 40_000, 0)),
            Some((DIR_INBOUND, 8080, Owner::UNKNOWN))
        );
        assert_eq!(
            w.classify(7, &socket(9090, 40_000, 100))
                .map(|c| (c.0, c.1)),
            Some((DIR_INBOUND, 9090))
        );
        // Port 9090 is watched in namespace 7 only.
        assert_eq!(w.classify(8, &socket(9090, 40_000, 0)), None);
    }

    #[test]
    fn a_watched_remote_port_or_a_targets_socket_is_outbound() {
        let w = watched();
        let c = w.classify(1, &socket(41_000, 5432, 300)).unwrap();
        assert_eq!((c.0, c.1, c.2), (DIR_OUTBOUND, 5432, Owner::UNKNOWN));
        let c = w.classify(1, &socket(41_001, 443, 200)).unwrap();
        assert_eq!((c.0, c.1, c.2.pid), (DIR_OUTBOUND, 443, 20));
        assert_eq!(w.classify(1, &socket(41_002, 443, 300)), None);
    }
}
