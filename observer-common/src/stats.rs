//! Per-port counters, kept per CPU in the kernel and summed by the daemon at scrape time.

use crate::{
    conn::{EVENT_CLOSE, EVENT_FAILED, EVENT_OPEN, Step},
    ending::{NUM_BY, NUM_REASONS},
    limits::MAX_BUCKETS,
    tcp::NUM_STATES,
};

/// Key of the per-port counters: one (direction, port) label pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatsKey {
    pub port: u16,
    pub direction: u8,
    pub _pad: u8,
}
crate::pod!(StatsKey);

impl StatsKey {
    pub const fn new(direction: u8, port: u16) -> Self {
        StatsKey {
            port,
            direction,
            _pad: 0,
        }
    }
}

/// One CPU's share of a port's counters. Gauges are wrapping: a connection may enter a state on
/// one CPU and leave it on another, so one CPU's share can wrap below zero; their sum cannot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortStats {
    pub gauges: [u64; NUM_STATES],
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    pub duration_count: u64,
    pub duration_sum_ns: u64,
    /// Closed connections per bucket (not cumulative); index `n_bounds` is the +Inf bucket.
    pub buckets: [u64; MAX_BUCKETS + 1],
    /// Failed handshakes by reason (`ending::REASON_*`); they sum to `failed`.
    pub failed_by: [u64; NUM_REASONS],
    /// Closed connections that ended with a reset.
    pub reset: u64,
    /// Closed connections by who closed first (`ending::BY_*`); they sum to `closed`.
    pub closed_by: [u64; NUM_BY],
}
crate::pod!(PortStats);

impl PortStats {
    pub const ZERO: PortStats = PortStats {
        gauges: [0; NUM_STATES],
        opened: 0,
        closed: 0,
        failed: 0,
        duration_count: 0,
        duration_sum_ns: 0,
        buckets: [0; MAX_BUCKETS + 1],
        failed_by: [0; NUM_REASONS],
        reset: 0,
        closed_by: [0; NUM_BY],
    };

    /// Applies one transition. `bucket_of` maps a duration to its bucket index.
    #[inline(always)]
    pub fn apply(&mut self, step: &Step, bucket_of: impl FnOnce(u64) -> usize) {
        // Indices are masked rather than bounds-checked: the verifier follows a mask, while
        // LLVM may check a copy of the index and dereference another.
        if step.leave != 0 {
            add(
                &mut self.gauges[step.leave as usize & (NUM_STATES - 1)],
                u64::MAX,
            );
        }
        if step.enter != 0 {
            add(&mut self.gauges[step.enter as usize & (NUM_STATES - 1)], 1);
        }
        match step.event {
            EVENT_OPEN => add(&mut self.opened, 1),
            EVENT_FAILED => {
                add(&mut self.failed, 1);
                add(
                    &mut self.failed_by[masked(step.ending.reason, NUM_REASONS)],
                    1,
                );
            }
            EVENT_CLOSE => {
                add(&mut self.closed, 1);
                add(&mut self.closed_by[masked(step.ending.by, NUM_BY)], 1);
                if step.ending.reset {
                    add(&mut self.reset, 1);
                }
                if step.timed {
                    let d = step.duration_ns;
                    add(&mut self.duration_count, 1);
                    add(&mut self.duration_sum_ns, d);
                    add(&mut self.buckets[bucket_of(d) & MAX_BUCKETS], 1);
                }
            }
            _ => {}
        }
    }

    /// Adds another CPU's share.
    pub fn merge(&mut self, other: &PortStats) {
        for (a, b) in self.gauges.iter_mut().zip(other.gauges.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.opened += other.opened;
        self.closed += other.closed;
        self.failed += other.failed;
        self.duration_count += other.duration_count;
        self.duration_sum_ns = self.duration_sum_ns.wrapping_add(other.duration_sum_ns);
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += *b;
        }
        for (a, b) in self.failed_by.iter_mut().zip(other.failed_by.iter()) {
            *a += *b;
        }
        self.reset += other.reset;
        for (a, b) in self.closed_by.iter_mut().zip(other.closed_by.iter()) {
            *a += *b;
        }
    }

    /// The summed gauge of a state, read as the signed number it is.
    pub fn gauge(&self, state: u8) -> i64 {
        self.gauges.get(state as usize).map_or(0, |g| *g as i64)
    }
}

/// `i` masked to an index below `len` (a power of two), with a mask the compiler cannot drop:
/// LLVM removes one it can prove redundant (the value's range is known where it was made), but
/// the verifier, having lost that range through a stack slot, still needs it.
#[inline(always)]
fn masked(i: u8, len: usize) -> usize {
    // SAFETY: a read of a local.
    let i = unsafe { core::ptr::read_volatile(&i) };
    i as usize & (len - 1)
}

/// Adds `delta` (wrapping) as one atomic instruction. The counters are per CPU, but the program
/// can run nested on one CPU (a softirq interrupting it, see the eBPF crate): a plain
/// read-modify-write there could lose the nested update.
#[inline(always)]
pub fn add(x: &mut u64, delta: u64) {
    // The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` is not offered there;
    // its atomic add instruction is reached through the intrinsic.
    #[cfg(target_arch = "bpf")]
    // SAFETY: `x` is a valid, aligned u64.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            x, delta,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: `x` is a valid, aligned u64.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(x) }
        .fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

/// Index of the first bucket whose upper bound (inclusive, as Prometheus's `le`) holds
/// `duration_ns`; `n_bounds` when none does (+Inf). `bound(i)` reads bound i, ascending.
#[inline(always)]
pub fn bucket_of(duration_ns: u64, n_bounds: usize, bound: impl Fn(usize) -> u64) -> usize {
    let mut i = 0;
    // Bounded by a constant so that the verifier sees the loop end.
    while i < MAX_BUCKETS {
        if i >= n_bounds || duration_ns <= bound(i) {
            return i;
        }
        i += 1;
    }
    MAX_BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{ESTABLISHED, SYN_RECV};

    #[test]
    fn bucket_bounds_are_inclusive() {
        let bounds = [10u64, 100, 1000];
        let b = |d| bucket_of(d, bounds.len(), |i| bounds[i]);
        assert_eq!(b(0), 0);
        assert_eq!(b(10), 0);
        assert_eq!(b(11), 1);
        assert_eq!(b(1000), 2);
        assert_eq!(b(1001), 3, "+Inf");
    }

    #[test]
    fn per_cpu_shares_wrap_but_sum_right() {
        let mut cpu0 = PortStats::ZERO;
        let mut cpu1 = PortStats::ZERO;
        let none = |_| 0;
        cpu0.apply(
            &Step {
                enter: SYN_RECV,
                ..Step::default()
            },
            none,
        );
        cpu0.apply(
            &Step {
                leave: SYN_RECV,
                enter: ESTABLISHED,
                event: EVENT_OPEN,
                ..Step::default()
            },
            none,
        );
        cpu1.apply(
            &Step {
                leave: ESTABLISHED,
                enter: 0,
                event: EVENT_CLOSE,
                ended: true,
                timed: true,
                duration_ns: 5,
                now_ns: 5,
                ending: crate::ending::close(crate::tcp::ESTABLISHED, 0),
            },
            |_| 1,
        );
        assert_eq!(cpu1.gauge(ESTABLISHED), -1);
        let mut sum = PortStats::ZERO;
        sum.merge(&cpu0);
        sum.merge(&cpu1);
        assert_eq!(sum.gauge(ESTABLISHED), 0);
        assert_eq!(sum.gauge(SYN_RECV), 0);
        assert_eq!((sum.opened, sum.closed, sum.failed), (1, 1, 0));
        assert_eq!(
            (sum.duration_count, sum.duration_sum_ns, sum.buckets[1]),
            (1, 5, 1)
        );
        // An abort by this host: a reset, closed by it.
        assert_eq!(
            (sum.reset, sum.closed_by[crate::ending::BY_LOCAL as usize]),
            (1, 1)
        );
    }

    #[test]
    fn failures_are_counted_by_reason_and_closes_by_side() {
        use crate::ending::*;
        let mut s = PortStats::ZERO;
        let failed = |reason| Step {
            leave: crate::tcp::SYN_SENT,
            event: EVENT_FAILED,
            ended: true,
            ending: Ending {
                reason,
                ..Ending::default()
            },
            ..Step::default()
        };
        for r in [REASON_REFUSED, REASON_REFUSED, REASON_TIMEOUT] {
            s.apply(&failed(r), |_| 0);
        }
        let closed = |left| Step {
            leave: left,
            event: EVENT_CLOSE,
            ended: true,
            ending: close(left, 0),
            ..Step::default()
        };
        for left in [
            crate::tcp::LAST_ACK,
            crate::tcp::FIN_WAIT2,
            crate::tcp::LAST_ACK,
        ] {
            s.apply(&closed(left), |_| 0);
        }
        assert_eq!(s.failed, 3);
        assert_eq!(s.failed_by[REASON_REFUSED as usize], 2);
        assert_eq!(s.failed_by[REASON_TIMEOUT as usize], 1);
        assert_eq!(s.closed, 3);
        assert_eq!(s.closed_by[BY_REMOTE as usize], 2);
        assert_eq!(s.closed_by[BY_LOCAL as usize], 1);
        assert_eq!(s.reset, 0);
    }
}
