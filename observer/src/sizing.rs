//! How big the kernel's maps are. Map memory is kernel memory: it is what observer costs a host
//! most, and from 5.11 it is charged to observer's memory cgroup (a DaemonSet pod's limit). So
//! every map is sized at load to what is watched, from the flags and from a count of what is on
//! the system (`Survey`, taken just before load); hash maps of tracing programs must stay
//! preallocated on the oldest kernels, so sizing is the only way to spend less.
use observer_common::limits::{
    MAX_BASELINE, MAX_LOCAL_PORTS, MAX_PIDS, MAX_PORTS, MAX_SEEN, MAX_SOCKETS,
};

use crate::{netns::Namespace, snapshot::COUNTED_STATES};

/// Default `--max-connections`: connections tracked at once, unless the host has more watched
/// connections at start (then twice those).
pub const DEFAULT_CONNECTIONS: u32 = 65_536;
/// Watched (direction, port) pairs with counters of their own, where they are found as they
/// come (`--pid`, `--cgroup`, no target), unless `--max-ports` says: a per-CPU map, so each
/// costs ~450 bytes per CPU.
pub const DEFAULT_FOUND_PORTS: u32 = 1_024;

/// What was watched on the system just before load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Survey {
    /// Connections the snapshot may count (an upper bound: every established one of the
    /// watched ports, or of the watched namespaces when ports are found as they come).
    pub connections: u32,
}

/// The sizes of the maps that can be sized (max entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Connections tracked at once (`SOCKETS`).
    pub sockets: u32,
    /// The snapshot's seeds (`BASELINE`) and what changed while it was taken (`SEEN`).
    pub baseline: u32,
    pub seen: u32,
    /// (direction, port) pairs with counters (`STATS`, `STATS_SLOTS`, `FREE_SLOTS`).
    pub ports: u32,
    /// Watched listening (namespace, port) pairs (`LOCAL_PORTS`).
    pub local_ports: u32,
    /// Target processes (`PIDS`): with `--pid` only.
    pub pids: u32,
    /// Per remote port, whether a target connects there (`TARGET_REMOTES`): with process
    /// targets only.
    pub target_remotes: u32,
    /// The CLOSEs the main program took, until their backup run (`DONE`): where runs are
    /// preemptible only.
    pub done: u32,
}

/// What a configuration asks of the maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// `--max-connections`, when given.
    pub max_connections: Option<u32>,
    /// `--max-ports`, when given.
    pub max_ports: Option<u32>,
    /// The (direction, port) pairs named with `--port` and `--remote-port`.
    pub named_ports: u32,
    /// Ports are found as they come: `--pid`, `--cgroup`, or no target.
    pub found_ports: bool,
    pub pid_targets: bool,
    pub process_targets: bool,
    pub preemptible: bool,
}

/// The sizes for `wants`, given what `survey` found.
pub fn sizes(wants: &Wants, survey: &Survey) -> MapSizes {
    let existing = survey.connections;
    let sockets = wants.max_connections.unwrap_or_else(|| {
        DEFAULT_CONNECTIONS
            .max(existing.saturating_mul(2))
            .min(MAX_SOCKETS)
    });
    // Room for every connection listed, and a quarter more for those opened while it lists.
    let baseline = existing
        .saturating_add(existing / 4)
        .saturating_add(1_024)
        .min(MAX_BASELINE);
    let ports = match wants.max_ports {
        Some(n) => n,
        None if wants.found_ports => DEFAULT_FOUND_PORTS.max(wants.named_ports),
        None => wants.named_ports.max(1),
    };
    MapSizes {
        sockets,
        baseline,
        // The sockets that change while the snapshot is taken: at most every listed one, and
        // those born meanwhile.
        seen: baseline.clamp(8_192, MAX_SEEN),
        ports,
        local_ports: if wants.found_ports {
            MAX_LOCAL_PORTS
        } else {
            wants.named_ports.max(1)
        },
        pids: if wants.pid_targets { MAX_PIDS } else { 1 },
        target_remotes: if wants.process_targets { 65_536 } else { 1 },
        done: if wants.preemptible { 4_096 } else { 1 },
    }
    .bounded()
}

impl MapSizes {
    fn bounded(mut self) -> MapSizes {
        self.ports = self.ports.clamp(1, MAX_PORTS);
        self
    }
}

/// Counts what the snapshot may find: the connections in the states it counts, in
/// `namespaces`, of the watched ports (`ports`, local; `remote_ports`), or all of them when
/// ports are found as they come. A namespace that cannot be listed counts nothing (the snapshot
/// says so later).
pub fn survey(
    namespaces: &[Namespace],
    ports: &[u16],
    remote_ports: &[u16],
    every_port: bool,
) -> Survey {
    let mask = crate::diag::state_mask(&COUNTED_STATES);
    let mut connections = 0u32;
    for ns in namespaces {
        let Ok(sockets) = ns.dump(mask) else { continue };
        let watched = sockets
            .iter()
            .filter(|s| every_port || ports.contains(&s.sport) || remote_ports.contains(&s.dport));
        connections = connections.saturating_add(watched.count() as u32);
    }
    Survey { connections }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_only() -> Wants {
        Wants {
            named_ports: 1,
            ..Wants::default()
        }
    }

    #[test]
    fn one_named_port_on_a_quiet_host_is_small() {
        let s = sizes(&port_only(), &Survey::default());
        assert_eq!(s.sockets, DEFAULT_CONNECTIONS);
        assert_eq!((s.baseline, s.seen), (1_024, 8_192));
        assert_eq!((s.ports, s.local_ports), (1, 1));
        assert_eq!((s.pids, s.target_remotes, s.done), (1, 1, 1));
    }

    #[test]
    fn what_exists_at_start_makes_room() {
        let s = sizes(
            &port_only(),
            &Survey {
                connections: 100_000,
            },
        );
        assert_eq!(s.sockets, 200_000);
        assert_eq!(s.baseline, 100_000 + 25_000 + 1_024);
        assert_eq!(s.seen, s.baseline);
        // Never more than the limits.
        let s = sizes(
            &port_only(),
            &Survey {
                connections: u32::MAX,
            },
        );
        assert_eq!(
            (s.sockets, s.baseline, s.seen),
            (MAX_SOCKETS, MAX_BASELINE, MAX_SEEN)
        );
    }

    #[test]
    fn flags_win() {
        let w = Wants {
            max_connections: Some(3_000_000),
            max_ports: Some(20),
            found_ports: true,
            pid_targets: true,
            process_targets: true,
            preemptible: true,
            ..Wants::default()
        };
        let s = sizes(&w, &Survey::default());
        assert_eq!((s.sockets, s.ports), (3_000_000, 20));
        assert_eq!(
            (s.pids, s.target_remotes, s.done),
            (MAX_PIDS, 65_536, 4_096)
        );
        assert_eq!(s.local_ports, MAX_LOCAL_PORTS);
        // Found ports: a default room, at least the named ones.
        let w = Wants {
            found_ports: true,
            named_ports: 2_000,
            ..Wants::default()
        };
        assert_eq!(sizes(&w, &Survey::default()).ports, 2_000);
        let w = Wants {
            found_ports: true,
            ..Wants::default()
        };
        assert_eq!(sizes(&w, &Survey::default()).ports, DEFAULT_FOUND_PORTS);
    }
}
