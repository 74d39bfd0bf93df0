//! `--by-remote`: established connections per remote address or prefix, as the kernel's
//! iterators list them (`observer_common::remote`). This module chooses which remotes get a
//! series of their own, and names them.
//!
//! Which remotes keep a series is sticky, so that series do not flap between scrapes: per
//! watched (direction, port), a remote with connections gets a series while fewer than
//! `--max-remotes` have one; a remote keeps its series while it has connections, and at 0 keeps
//! it until another remote with connections needs the room. The rest are summed under
//! `remote="other"`.
use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
};

use observer_common::{
    remote::{FAMILY_V4, Masks, RemoteKey},
    stats::StatsKey,
};

/// The `--remote-prefix` lengths, and the most remotes with a series per (direction, port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub max_remotes: usize,
}

impl Settings {
    pub fn masks(&self) -> Masks {
        observer_common::remote::masks(self.v4_prefix, self.v6_prefix)
    }

    /// The `remote` label: the address, or the prefix as `10.1.2.0/24` when one was asked.
    pub fn label(&self, key: &RemoteKey) -> String {
        let (addr, bits, full) = if key.family == FAMILY_V4 {
            let a: [u8; 4] = key.addr[..4].try_into().expect("4 bytes");
            (Ipv4Addr::from(a).to_string(), self.v4_prefix, 32)
        } else {
            (Ipv6Addr::from(key.addr).to_string(), self.v6_prefix, 128)
        };
        if bits == full {
            addr
        } else {
            format!("{addr}/{bits}")
        }
    }
}

/// The per-remote series of one watched (direction, port), as a scrape shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    /// The remotes with a series of their own, in address order, with their count.
    pub remotes: Vec<(RemoteKey, i64)>,
    /// Everything else.
    pub other: i64,
}

/// The remotes that have a series, per (direction, port), from one scrape to the next.
#[derive(Debug)]
pub struct Selection {
    max: usize,
    chosen: HashMap<StatsKey, BTreeSet<RemoteKey>>,
}

impl Selection {
    pub fn new(max: usize) -> Selection {
        Selection {
            max,
            chosen: HashMap::new(),
        }
    }

    /// This scrape's series for each of `groups`, from the established connections per remote.
    pub fn series(
        &mut self,
        groups: &[StatsKey],
        counts: &HashMap<RemoteKey, i64>,
    ) -> HashMap<StatsKey, Series> {
        let mut by_group: HashMap<StatsKey, HashMap<RemoteKey, i64>> = HashMap::new();
        for (k, n) in counts {
            by_group
                .entry(StatsKey::new(k.direction, k.port))
                .or_default()
                .insert(*k, *n);
        }
        let mut out = HashMap::with_capacity(groups.len());
        for g in groups {
            let live = by_group.remove(g).unwrap_or_default();
            let chosen = self.chosen.entry(*g).or_default();
            choose(chosen, &live, self.max);
            let mut series = Series::default();
            for (k, n) in &live {
                if !chosen.contains(k) {
                    series.other += n;
                }
            }
            series.remotes = chosen
                .iter()
                .map(|k| (*k, live.get(k).copied().unwrap_or(0)))
                .collect();
            out.insert(*g, series);
        }
        out
    }
}

/// Gives remotes with connections a series while there is room, or room at 0 (see the module).
fn choose(chosen: &mut BTreeSet<RemoteKey>, live: &HashMap<RemoteKey, i64>, max: usize) {
    let mut waiting: Vec<(&RemoteKey, &i64)> = live
        .iter()
        .filter(|(k, n)| **n > 0 && !chosen.contains(k))
        .collect();
    // The most connections first; the address breaks ties, so the choice is reproducible.
    waiting.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut at_zero: Vec<RemoteKey> = chosen
        .iter()
        .filter(|k| live.get(k).is_none_or(|n| *n <= 0))
        .copied()
        .collect();
    // Room at 0 is taken from the highest address first (`pop`), the same way every time.
    for (k, _) in waiting {
        if chosen.len() >= max {
            let Some(gone) = at_zero.pop() else { break };
            chosen.remove(&gone);
        }
        chosen.insert(*k);
    }
}

#[cfg(test)]
mod tests {
    use observer_common::{
        DIR_INBOUND, DIR_OUTBOUND,
        remote::{FULL_MASKS, key_of_bytes},
        tracepoint::{AF_INET, AF_INET6},
    };

    use super::*;

    fn remote(port: u16, last: u8) -> RemoteKey {
        key_of_bytes(
            DIR_INBOUND,
            port,
            AF_INET,
            &[127, 0, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &FULL_MASKS,
        )
    }

    fn counts(v: &[(RemoteKey, i64)]) -> HashMap<RemoteKey, i64> {
        v.iter().copied().collect()
    }

    const G: StatsKey = StatsKey {
        port: 80,
        direction: DIR_INBOUND,
        _pad: 0,
    };

    #[test]
    fn every_remote_has_a_series_under_the_limit() {
        let mut s = Selection::new(100);
        let c = counts(&[(remote(80, 2), 30), (remote(80, 3), 20)]);
        let out = s.series(&[G], &c);
        assert_eq!(
            out[&G].remotes,
            vec![(remote(80, 2), 30), (remote(80, 3), 20)]
        );
        assert_eq!(out[&G].other, 0);
        // Gone to 0: the series stay, at 0.
        let out = s.series(&[G], &HashMap::new());
        assert_eq!(
            out[&G].remotes,
            vec![(remote(80, 2), 0), (remote(80, 3), 0)]
        );
    }

    #[test]
    fn the_rest_is_other_and_the_choice_does_not_flap() {
        let mut s = Selection::new(1);
        let c = counts(&[(remote(80, 2), 30), (remote(80, 3), 20)]);
        let out = s.series(&[G], &c);
        assert_eq!(out[&G].remotes, vec![(remote(80, 2), 30)]);
        assert_eq!(out[&G].other, 20);
        // .3 overtakes .2: .2 keeps its series while it has connections.
        let c = counts(&[(remote(80, 2), 1), (remote(80, 3), 50)]);
        let out = s.series(&[G], &c);
        assert_eq!(out[&G].remotes, vec![(remote(80, 2), 1)]);
        assert_eq!(out[&G].other, 50);
        // .2 at 0 and nobody waiting: it keeps its series.
        let c = counts(&[(remote(80, 2), 0)]);
        let out = s.series(&[G], &c);
        assert_eq!(out[&G].remotes, vec![(remote(80, 2), 0)]);
        // .2 at 0 and .3 waiting: .3 takes the room.
        let c = counts(&[(remote(80, 3), 5)]);
        let out = s.series(&[G], &c);
        assert_eq!(out[&G].remotes, vec![(remote(80, 3), 5)]);
        assert_eq!(out[&G].other, 0);
    }

    #[test]
    fn groups_are_apart_and_listed_even_empty() {
        let mut s = Selection::new(1);
        let h = StatsKey::new(DIR_OUTBOUND, 5432);
        let mut out_key = remote(5432, 9);
        out_key.direction = DIR_OUTBOUND;
        let c = counts(&[(remote(80, 2), 1), (out_key, 4)]);
        let out = s.series(&[G, h, StatsKey::new(DIR_INBOUND, 81)], &c);
        assert_eq!(out[&G].remotes, vec![(remote(80, 2), 1)]);
        assert_eq!(out[&h].remotes, vec![(out_key, 4)]);
        assert_eq!(out[&StatsKey::new(DIR_INBOUND, 81)], Series::default());
    }

    #[test]
    fn labels() {
        let s = Settings {
            v4_prefix: 32,
            v6_prefix: 128,
            max_remotes: 1,
        };
        assert_eq!(s.label(&remote(80, 2)), "127.0.0.2");
        let v6 = key_of_bytes(
            0,
            80,
            AF_INET6,
            &"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets(),
            &FULL_MASKS,
        );
        assert_eq!(s.label(&v6), "2001:db8::7");
        let p = Settings {
            v4_prefix: 24,
            v6_prefix: 64,
            max_remotes: 1,
        };
        let k = key_of_bytes(0, 80, AF_INET, &remote(80, 2).addr, &p.masks());
        assert_eq!(p.label(&k), "127.0.0.0/24");
        let k = key_of_bytes(
            0,
            80,
            AF_INET6,
            &"2001:db8:1:2:3::7".parse::<Ipv6Addr>().unwrap().octets(),
            &p.masks(),
        );
        assert_eq!(p.label(&k), "2001:db8:1:2::/64");
    }
}
