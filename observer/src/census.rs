//! The scrape-time socket census: what the kernel program's tracepoint never sees, counted from
//! one sock_diag dump per watched namespace. TIME_WAIT sockets (the kernel's time-wait mini
//! sockets, which take over from a full socket as it reaches CLOSE), request sockets (inbound
//! handshakes waiting for the client's ACK, which live outside the full sockets until then), and
//! the listeners' accept queues and backlogs.
//!
//! The dump asks for TIME_WAIT, NEW_SYN_RECV and LISTEN. Asking for NEW_SYN_RECV and not
//! SYN_RECV brings the request sockets without the full sockets in SYN_RECV (those the kernel
//! program counts): the kernel reports a request socket as SYN_RECV, so every SYN_RECV of this
//! dump is one. A time-wait socket is reported in its substate, TIME_WAIT or FIN_WAIT2 (an
//! orphan closed in FIN_WAIT2): only TIME_WAIT is asked for and counted, as `ss` does.
//!
//! A census runs when a scrape asks for it, at most once a second, and no sooner than 20 times
//! the last one's CPU time after it (at most 5% of a core however many sockets there are); a
//! scrape in between is served the last result.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use observer_common::{DIR_INBOUND, stats::StatsKey, tcp};

use crate::{
    diag::{DiagSocket, Lister, Queues, state_mask},
    kernel::Kernel,
    netns::Namespace,
    watched::Watched,
};

/// The shortest time between two censuses.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// After a census, the next waits at least this many times its CPU time.
const CPU_BUDGET_DIVISOR: u32 = 20;

/// The time from one census's start to the next one's earliest start.
pub fn interval(last_cpu: Duration) -> Duration {
    MIN_INTERVAL.max(last_cpu * CPU_BUDGET_DIVISOR)
}

/// What one census counted. A key with nothing counted is absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// TIME_WAIT sockets per watched (direction, port).
    pub time_wait: HashMap<StatsKey, u64>,
    /// Per watched local port, summed over its listeners: connections waiting for accept().
    pub listen_queue: HashMap<u16, u64>,
    /// Per watched local port, summed over its listeners: their backlogs.
    pub listen_queue_max: HashMap<u16, u64>,
    /// Request sockets (handshakes waiting for the client's ACK) per watched local port.
    pub handshakes_pending: HashMap<u16, u64>,
}

impl Counts {
    /// Counts one socket of the dump: `class` is its watched (direction, port), None when it is
    /// not watched. Listeners and request sockets are inbound by nature: they count only under a
    /// watched local port.
    pub fn add(&mut self, class: Option<(u8, u16)>, state: u8, queues: Queues) {
        let Some((direction, port)) = class else {
            return;
        };
        let inbound = direction == DIR_INBOUND;
        match state {
            tcp::TIME_WAIT => {
                *self
                    .time_wait
                    .entry(StatsKey::new(direction, port))
                    .or_default() += 1
            }
            tcp::SYN_RECV if inbound => *self.handshakes_pending.entry(port).or_default() += 1,
            tcp::LISTEN if inbound => {
                *self.listen_queue.entry(port).or_default() += u64::from(queues.recv);
                *self.listen_queue_max.entry(port).or_default() += u64::from(queues.send);
            }
            _ => {}
        }
    }
}

/// The last census, for the metrics.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub counts: Counts,
    /// Wall time and CPU time of the census, in seconds.
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// The states of the dump (see the module's comment).
fn states() -> u32 {
    state_mask(&[tcp::TIME_WAIT, tcp::NEW_SYN_RECV, tcp::LISTEN])
}

/// The shell: the sock_diag sockets of the watched namespaces (opened at start), what is
/// watched, and the last result.
pub struct Census {
    listers: Vec<(u32, Lister)>,
    watched: Watched,
    last: Option<(Instant, Report)>,
    warned: bool,
}

impl Census {
    /// Opens a sock_diag socket in each namespace. Before the capabilities are dropped.
    pub fn open(namespaces: &[Namespace], watched: Watched) -> Result<Arc<Mutex<Census>>> {
        Ok(Arc::new(Mutex::new(Census {
            listers: crate::netns::listers(namespaces, "the socket census")?,
            watched,
            last: None,
            warned: false,
        })))
    }

    /// The census for a scrape: a new one when the last is old enough (see `interval`), else
    /// the last. A census that fails keeps the last result (and says so on stderr, once).
    pub fn latest(&mut self, kernel: &Mutex<Kernel>) -> Report {
        let due = match &self.last {
            Some((at, r)) => at.elapsed() >= interval(Duration::from_secs_f64(r.cpu_seconds)),
            None => true,
        };
        if due {
            let local = kernel.lock().expect("kernel lock").local_ports();
            self.watched.follow(local);
            let started = Instant::now();
            match self.take() {
                Ok(r) => self.last = Some((started, r)),
                Err(e) => {
                    if !std::mem::replace(&mut self.warned, true) {
                        eprintln!(
                            "observer: warning: the socket census failed ({e:#}); its metrics \
                             keep their last values"
                        );
                    }
                    // Not retried at every scrape: the last result (or none) stands for a while.
                    let kept = self.last.take().map(|(_, r)| r).unwrap_or_default();
                    self.last = Some((started, kept));
                }
            }
        }
        self.last
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    }

    fn take(&mut self) -> Result<Report> {
        let (wall, cpu) = (Instant::now(), crate::idle::thread_cpu());
        let mut counts = Counts::default();
        let watched = &self.watched;
        for (ns, lister) in &mut self.listers {
            lister.each(states(), |s: &DiagSocket, q| {
                let class = watched.classify(*ns, s).map(|(d, p, _)| (d, p));
                counts.add(class, s.state, q);
            })?;
        }
        Ok(Report {
            counts,
            seconds: wall.elapsed().as_secs_f64(),
            cpu_seconds: (crate::idle::thread_cpu() - cpu).as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use observer_common::DIR_OUTBOUND;

    use super::*;

    fn q(recv: u32, send: u32) -> Queues {
        Queues { recv, send }
    }

    #[test]
    fn time_wait_counts_per_watched_direction_and_port() {
        let mut c = Counts::default();
        for _ in 0..3 {
            c.add(Some((DIR_INBOUND, 80)), tcp::TIME_WAIT, q(0, 0));
        }
        c.add(Some((DIR_OUTBOUND, 5432)), tcp::TIME_WAIT, q(0, 0));
        c.add(None, tcp::TIME_WAIT, q(0, 0));
        assert_eq!(c.time_wait[&StatsKey::new(DIR_INBOUND, 80)], 3);
        assert_eq!(c.time_wait[&StatsKey::new(DIR_OUTBOUND, 5432)], 1);
        assert_eq!(c.time_wait.len(), 2);
    }

    #[test]
    fn listeners_of_a_port_are_summed() {
        let mut c = Counts::default();
        // SO_REUSEPORT, or IPv4 and IPv6 listeners on one port.
        c.add(Some((DIR_INBOUND, 80)), tcp::LISTEN, q(9, 8));
        c.add(Some((DIR_INBOUND, 80)), tcp::LISTEN, q(2, 511));
        c.add(Some((DIR_INBOUND, 443)), tcp::LISTEN, q(0, 4096));
        assert_eq!(c.listen_queue[&80], 11);
        assert_eq!(c.listen_queue_max[&80], 519);
        assert_eq!(c.listen_queue[&443], 0);
        assert_eq!(c.listen_queue_max[&443], 4096);
    }

    #[test]
    fn request_sockets_are_pending_handshakes_of_their_port() {
        let mut c = Counts::default();
        for _ in 0..10 {
            c.add(Some((DIR_INBOUND, 80)), tcp::SYN_RECV, q(0, 0));
        }
        assert_eq!(c.handshakes_pending[&80], 10);
        assert!(c.time_wait.is_empty() && c.listen_queue.is_empty());
    }

    #[test]
    fn listeners_and_handshakes_count_only_inbound() {
        let mut c = Counts::default();
        c.add(Some((DIR_OUTBOUND, 5432)), tcp::LISTEN, q(1, 8));
        c.add(Some((DIR_OUTBOUND, 5432)), tcp::SYN_RECV, q(0, 0));
        c.add(None, tcp::LISTEN, q(1, 8));
        c.add(Some((DIR_INBOUND, 80)), tcp::ESTABLISHED, q(5, 5));
        assert_eq!(c, Counts::default());
    }

    #[test]
    fn a_census_comes_at_most_once_a_second_and_takes_at_most_a_twentieth_of_a_core() {
        assert_eq!(interval(Duration::from_millis(3)), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_millis(100)), Duration::from_secs(2));
    }

    #[test]
    fn the_dump_asks_for_request_sockets_not_full_syn_recv_ones() {
        let m = states();
        assert_ne!(m & (1 << tcp::NEW_SYN_RECV), 0);
        assert_eq!(m & (1 << tcp::SYN_RECV), 0);
        assert_ne!(m & (1 << tcp::TIME_WAIT), 0);
        assert_ne!(m & (1 << tcp::LISTEN), 0);
    }
}
