//! The start-up snapshot: connections that existed before observer attached, counted exactly
//! once although they keep changing while the snapshot is taken.
//!
//! The protocol, between this module and the eBPF program:
//! 1. The program is attached with its "snapshot window" open: from then on, every transition
//!    of a watched socket is counted by the kernel, and the socket's addresses are recorded in
//!    `SEEN`. A socket the kernel meets for the first time (not born under its eyes) is counted
//!    from its new state on: nothing is decremented that nobody incremented.
//! 2. sock_diag lists the connections; each watched one is handed to the kernel as a seed
//!    (`BASELINE`, keyed by namespace and addresses) with the state it was listed in.
//! 3. The window closes; the daemon reads `SEEN`.
//!
//! A listed connection that is in `SEEN` had a transition before its seed existed: the kernel
//! counts it already, so the snapshot drops it. Every other listed connection is counted by the
//! snapshot in its listed state; its seed makes the kernel, at its first transition, leave that
//! same state (nothing can have changed it in between: that change would be in `SEEN`). A
//! connection closed before the listing is in neither. Sockets born after attach are recorded in
//! `SEEN` by their handshake, so the listing never counts them twice.
use std::collections::HashMap;

use anyhow::{Context as _, Result};
use observer_common::{
    DIR_OUTBOUND,
    filter::Owner,
    snapshot::{CONTROL_ADOPT_UNSEEDED, Seed, TupleKey},
    stats::StatsKey,
    tcp::{self, NUM_STATES},
    tracepoint::{AF_INET, AF_INET6},
};

use crate::{
    diag::{self, DiagSocket},
    kernel::Kernel,
    netns::Namespace,
};

/// States a listed connection can be counted in: those of an established connection. Handshake
/// states are left to the kernel: a listed SYN_RECV is a request socket, which this tracepoint
/// never reports, and a SYN_SENT socket's local port was unknown to the kernel at connect().
pub const COUNTED_STATES: [u8; 6] = [
    tcp::ESTABLISHED,
    tcp::FIN_WAIT1,
    tcp::FIN_WAIT2,
    tcp::CLOSE_WAIT,
    tcp::LAST_ACK,
    tcp::CLOSING,
];

/// The gauges the snapshot counted, per port and state; constant once taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    pub gauges: HashMap<StatsKey, [i64; NUM_STATES]>,
    /// Listed connections that the kernel counts already (they changed during the snapshot).
    pub seen: usize,
    /// Listed connections the kernel had no room to seed: counted from their next transition.
    pub unseeded: usize,
}

impl Baseline {
    /// The connections of `key` the snapshot counted in `state`.
    pub fn count(&self, key: &StatsKey, state: u8) -> i64 {
        self.gauges.get(key).map_or(0, |g| g[state as usize])
    }
}

/// Who the kernel would count a socket as: (direction, port, owner), or None if unwatched.
pub type Classify<'a> = dyn Fn(u32, &DiagSocket) -> Option<(u8, u16, Owner)> + 'a;

/// Runs the protocol above. The program must be attached with its window open.
pub fn take(
    kernel: &mut Kernel,
    namespaces: &[Namespace],
    classify: &Classify,
) -> Result<Baseline> {
    let mask = diag::state_mask(&COUNTED_STATES);
    let mut listed: Vec<(TupleKey, StatsKey, u8)> = Vec::new();
    let mut unseeded = 0;
    for ns in namespaces {
        let sockets = ns
            .dump(mask)
            .with_context(|| format!("listing the TCP connections of {ns}"))?;
        for s in sockets {
            let Some((direction, port, owner)) = classify(ns.inode, &s) else {
                continue;
            };
            let key = tuple(ns.inode, &s);
            let seed = Seed {
                state: s.state,
                direction,
                port,
                owner,
            };
            if direction == DIR_OUTBOUND {
                // Before the seed: its socket's next transition must reach it.
                kernel.mark_target_remote(port)?;
            }
            // A full map leaves this connection to be counted from its next transition on.
            if kernel.seed(&key, &seed).is_ok() {
                listed.push((key, StatsKey::new(direction, port), s.state));
            } else {
                unseeded += 1;
            }
        }
    }
    if unseeded > 0 {
        kernel.set_control(CONTROL_ADOPT_UNSEEDED, 1)?;
    }
    let seen = kernel.close_snapshot_window()?;
    let mut baseline = count(listed, |k| {
        let changed = seen.contains(k);
        if changed {
            kernel.unseed(k);
        }
        changed
    });
    baseline.unseeded = unseeded;
    Ok(baseline)
}

/// The snapshot's gauges: the listed connections that did not change while it was taken.
fn count(
    listed: Vec<(TupleKey, StatsKey, u8)>,
    mut changed: impl FnMut(&TupleKey) -> bool,
) -> Baseline {
    let mut b = Baseline::default();
    for (tuple, key, state) in listed {
        if changed(&tuple) {
            b.seen += 1;
            continue;
        }
        b.gauges.entry(key).or_insert([0; NUM_STATES])[state as usize] += 1;
    }
    b
}

/// The identity the eBPF program builds from the tracepoint for the same socket.
pub fn tuple(netns: u32, s: &DiagSocket) -> TupleKey {
    let (family, saddr, daddr) = match (s.saddr, s.daddr) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
            let (mut sa, mut da) = ([0u8; 16], [0u8; 16]);
            sa[..4].copy_from_slice(&a.octets());
            da[..4].copy_from_slice(&b.octets());
            (AF_INET, sa, da)
        }
        (a, b) => (AF_INET6, v6(a), v6(b)),
    };
    TupleKey {
        netns,
        family,
        sport: s.sport,
        dport: s.dport,
        _pad: 0,
        saddr,
        daddr,
    }
}

fn v6(a: std::net::IpAddr) -> [u8; 16] {
    match a {
        std::net::IpAddr::V6(a) => a.octets(),
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use observer_common::DIR_INBOUND;

    use super::*;

    fn sock(sport: u16, dport: u16, state: u8) -> DiagSocket {
        DiagSocket {
            state,
            sport,
            dport,
            saddr: "127.0.0.1".parse::<IpAddr>().unwrap(),
            daddr: "127.0.0.1".parse::<IpAddr>().unwrap(),
            inode: 0,
        }
    }

    #[test]
    fn changed_connections_are_left_to_the_kernel() {
        let k = StatsKey::new(DIR_INBOUND, 8080);
        let listed = vec![
            (
                tuple(1, &sock(8080, 40000, tcp::ESTABLISHED)),
                k,
                tcp::ESTABLISHED,
            ),
            (
                tuple(1, &sock(8080, 40001, tcp::ESTABLISHED)),
                k,
                tcp::ESTABLISHED,
            ),
            (
                tuple(1, &sock(8080, 40002, tcp::CLOSE_WAIT)),
                k,
                tcp::CLOSE_WAIT,
            ),
        ];
        let changed = tuple(1, &sock(8080, 40001, tcp::ESTABLISHED));
        let b = count(listed, |t| *t == changed);
        assert_eq!(b.seen, 1);
        let g = b.gauges[&k];
        assert_eq!(g[tcp::ESTABLISHED as usize], 1);
        assert_eq!(g[tcp::CLOSE_WAIT as usize], 1);
    }

    #[test]
    fn tuple_matches_the_kernel_layout() {
        let t = tuple(7, &sock(8080, 40000, tcp::ESTABLISHED));
        assert_eq!(
            (t.family, t.netns, t.sport, t.dport),
            (AF_INET, 7, 8080, 40000)
        );
        assert_eq!(&t.saddr[..5], &[127, 0, 0, 1, 0]);
        let mut s6 = sock(8080, 1, tcp::ESTABLISHED);
        s6.saddr = "::1".parse().unwrap();
        s6.daddr = "::ffff:127.0.0.1".parse().unwrap();
        let t = tuple(7, &s6);
        assert_eq!(t.family, AF_INET6);
        assert_eq!(t.saddr[15], 1);
        assert_eq!(&t.daddr[10..], &[0xff, 0xff, 127, 0, 0, 1]);
    }
}
