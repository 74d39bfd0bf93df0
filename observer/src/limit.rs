//! `--warn-connections N`: a warning level for the established connections of each watched
//! (direction, port). The count is the one `observer_tcp_connections{state="established"}`
//! shows, read from the kernel's counters (plus the snapshot) every `TICK`; `Crossings` turns
//! the counts into one `limit` event per crossing, with hysteresis.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use observer_common::{stats::StatsKey, tcp};
use tokio::sync::mpsc;

use crate::{
    kernel::Kernel,
    output::{Format, LimitEvent},
    snapshot::Baseline,
};

/// How often the counts are read: a crossing is told within a quarter of a second, soon enough
/// for a warning, while a read (one map lookup per watched port) stays far below 1% of a core
/// for a few ports. A count that goes over and back within a tick is not told: a warning is
/// about a level that holds, not a spike.
pub const TICK: Duration = Duration::from_millis(250);

/// How far under the limit a count must fall before it is back under: a tenth of the limit, at
/// least 1, so that a count going N-1, N, N-1, N... gives one event, not one per change. Up at
/// `count >= limit`; back under at `count < limit - margin` (for N = 10: at 8). A limit of 1 has
/// no room for a margin: back under at 0.
pub fn margin(limit: u32) -> u32 {
    (limit / 10).max(1).min(limit.saturating_sub(1))
}

/// A (direction, port) whose count crossed the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub key: StatsKey,
    pub connections: i64,
    /// True going up (the count reached the limit), false coming back under.
    pub over: bool,
}

/// Which (direction, port) are over the limit: the hysteresis rule on plain counts.
#[derive(Debug)]
pub struct Crossings {
    limit: u32,
    over: HashSet<StatsKey>,
}

impl Crossings {
    pub fn new(limit: u32) -> Crossings {
        Crossings {
            limit,
            over: HashSet::new(),
        }
    }

    /// The crossings since the last counts. A key not in `counts` keeps its side.
    pub fn observe(&mut self, counts: impl IntoIterator<Item = (StatsKey, i64)>) -> Vec<Crossing> {
        let up = i64::from(self.limit);
        let down = up - i64::from(margin(self.limit));
        let mut out = Vec::new();
        for (key, n) in counts {
            let over = self.over.contains(&key);
            if !over && n >= up {
                self.over.insert(key);
            } else if over && n < down {
                self.over.remove(&key);
            } else {
                continue;
            }
            out.push(Crossing {
                key,
                connections: n,
                over: !over,
            });
        }
        out
    }

    /// A crossing whose event could not be handed on (the event stream is full): taken back,
    /// so that the next counts tell it again if it still holds.
    pub fn undo(&mut self, c: &Crossing) {
        if c.over {
            self.over.remove(&c.key);
        } else {
            self.over.insert(c.key);
        }
    }
}

/// Established connections per (direction, port), as `observer_tcp_connections` shows them.
pub fn established(kernel: &Kernel, baseline: &Baseline) -> Vec<(StatsKey, i64)> {
    let mut counts: HashMap<StatsKey, i64> = kernel
        .stats()
        .iter()
        .map(|(k, s)| (*k, s.gauge(tcp::ESTABLISHED)))
        .collect();
    for k in baseline.gauges.keys() {
        *counts.entry(*k).or_default() += baseline.count(k, tcp::ESTABLISHED);
    }
    counts.into_iter().collect()
}

/// Reads the counts every `TICK` and sends one `limit` event per crossing to `events` (with
/// none, the crossings are only followed). Runs until aborted.
pub async fn run(
    kernel: Arc<Mutex<Kernel>>,
    baseline: Baseline,
    limit: u32,
    events: Option<(mpsc::Sender<String>, Format)>,
) {
    let mut crossings = Crossings::new(limit);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let counts = established(&kernel.lock().expect("kernel lock"), &baseline);
        let now = crate::output::now_ns();
        for c in crossings.observe(counts) {
            let Some((tx, format)) = &events else {
                continue;
            };
            let line = LimitEvent::new(now, c.key, c.connections, limit, c.over).format(*format);
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(line) {
                crossings.undo(&c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use observer_common::DIR_INBOUND;

    use super::*;

    const K: StatsKey = StatsKey::new(DIR_INBOUND, 80);

    fn run(limit: u32, counts: &[i64]) -> Vec<(i64, bool)> {
        let mut c = Crossings::new(limit);
        counts
            .iter()
            .flat_map(|n| c.observe([(K, *n)]))
            .map(|c| (c.connections, c.over))
            .collect()
    }

    #[test]
    fn one_event_each_way() {
        assert_eq!(
            run(10, &[0, 5, 9, 10, 12, 10, 9, 8, 3, 0]),
            [(10, true), (8, false)]
        );
        // A jump past the limit and back is one crossing each way too.
        assert_eq!(run(10, &[0, 50, 0]), [(50, true), (0, false)]);
    }

    #[test]
    fn a_count_oscillating_at_the_limit_does_not_flood() {
        let counts: Vec<i64> = (0..100).map(|i| 9 + i % 2).collect();
        assert_eq!(run(10, &counts), [(10, true)]);
        let counts: Vec<i64> = (0..100).map(|i| 999 + i % 2).collect();
        assert_eq!(run(1000, &counts), [(1000, true)]);
        // Back under needs a tenth of the limit below it.
        assert_eq!(
            run(1000, &[1000, 901, 900, 899]),
            [(1000, true), (899, false)]
        );
    }

    #[test]
    fn margins() {
        assert_eq!(margin(1), 0);
        assert_eq!(margin(2), 1);
        assert_eq!(margin(10), 1);
        assert_eq!(margin(25), 2);
        assert_eq!(margin(1000), 100);
        assert_eq!(run(1, &[0, 1, 0, 1]), [(1, true), (0, false), (1, true)]);
        assert_eq!(run(2, &[2, 1, 0]), [(2, true), (0, false)]);
    }

    #[test]
    fn ports_cross_on_their_own() {
        let other = StatsKey::new(DIR_INBOUND, 443);
        let mut c = Crossings::new(3);
        assert_eq!(c.observe([(K, 3), (other, 1)]).len(), 1);
        let up = c.observe([(K, 3), (other, 4)]);
        assert_eq!(up.iter().map(|c| c.key).collect::<Vec<_>>(), [other]);
        // A key missing from the counts keeps its side.
        assert!(c.observe([(other, 4)]).is_empty());
        assert_eq!(c.observe([(K, 0)]).len(), 1);
    }

    #[test]
    fn an_undone_crossing_is_told_again() {
        let mut c = Crossings::new(10);
        let up = c.observe([(K, 11)]);
        c.undo(&up[0]);
        assert_eq!(c.observe([(K, 11)]), up);
        assert!(c.observe([(K, 11)]).is_empty());
    }
}
