//! Idle connections (`--idle-after`): the watched established connections that moved no data in
//! either direction for longer than the threshold, read from the kernel's own figures for each
//! socket (`tcp_info` through sock_diag: time since data was last sent, and last received).
//!
//! A scan lists the established connections of every namespace observer watches, keeps those
//! observer counts (`Watched::classify`: the same connections, directions and ports as
//! `observer_tcp_connections`), and hands them to the pure `Tracker`, which decides the gauge and
//! which connections crossed the threshold since the last scan (one `idle` event each). Scans run
//! on a thread of their own, at most once per `interval`, so a scrape never waits for one: the
//! gauge is what the last scan found.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use observer_common::{DIR_OUTBOUND, filter::Owner, stats::StatsKey};
use tokio::sync::mpsc;

use crate::{
    diag::{DiagSocket, Lister},
    kernel::Kernel,
    netns::Namespace,
    output::{Event, Format},
    targets::Targets,
    watched::Watched,
};

/// The most of one core the scans take: after a scan, the next one waits at least this many
/// times its CPU time. A scan of 100,000 connections costs a few hundred milliseconds of CPU
/// (BENCHMARKS.md), most of it the kernel's, filling in each socket's `tcp_info`.
const CPU_BUDGET_DIVISOR: u32 = 20;

/// Time from one scan's start to the next: a quarter of the threshold, so that a connection is
/// counted and reported at most a quarter of the threshold late, at least every 10 s for long
/// thresholds; but never less than 20 times the last scan's CPU time, so that the scans take at
/// most 5% of a core however many connections there are (then a connection is counted later).
/// With the shortest threshold, 1 s, and a few thousand connections, that is 4 scans a second.
pub fn interval(idle_after: Duration, last_scan_cpu: Duration) -> Duration {
    (idle_after / 4)
        .min(Duration::from_secs(10))
        .max(last_scan_cpu * CPU_BUDGET_DIVISOR)
}

/// A watched established connection as a scan finds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Found<T> {
    /// The kernel's cookie for the socket: its identity for as long as the system runs.
    pub cookie: u64,
    pub key: StatsKey,
    /// Time since it last sent or received data, whichever is shorter.
    pub idle: Duration,
    /// What an event says of it.
    pub detail: T,
}

/// What one scan decided.
#[derive(Debug, PartialEq)]
pub struct Scan<T> {
    /// Idle connections per (direction, port); a key with none is absent.
    pub idle: HashMap<StatsKey, u64>,
    /// Connections idle now that were not at the last scan (or were not reported): one event
    /// each.
    pub crossed: Vec<Found<T>>,
}

/// Which connections have been reported idle. A connection is reported once when it crosses
/// the threshold, and again only after a scan found it active; a connection a scan does not
/// find (closed) is forgotten, so memory is bounded by the connections idle now.
#[derive(Debug, Default)]
pub struct Tracker {
    reported: HashSet<u64>,
}

impl Tracker {
    /// One scan: `found` is every watched established connection at this moment; idle means
    /// no data either way for longer than `threshold`.
    pub fn scan<T>(
        &mut self,
        found: impl IntoIterator<Item = Found<T>>,
        threshold: Duration,
    ) -> Scan<T> {
        let mut idle: HashMap<StatsKey, u64> = HashMap::new();
        let mut crossed = Vec::new();
        let mut still = HashSet::new();
        for f in found {
            if f.idle <= threshold || !still.insert(f.cookie) {
                continue;
            }
            *idle.entry(f.key).or_default() += 1;
            if !self.reported.contains(&f.cookie) {
                crossed.push(f);
            }
        }
        self.reported = still;
        Scan { idle, crossed }
    }

    /// An event that could not be handed on (the event stream is full): the connection is
    /// reported again at the next scan that finds it idle.
    pub fn unreport(&mut self, cookie: u64) {
        self.reported.remove(&cookie);
    }
}

/// What the last scan found, for the metrics.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub idle: HashMap<StatsKey, u64>,
    /// Wall time and CPU time of the last scan, in seconds.
    pub scan_seconds: f64,
    pub scan_cpu_seconds: f64,
}

/// The shell around `Tracker`: the sock_diag sockets (one per watched namespace, opened at
/// start while observer may still enter namespaces), the rule for what is watched, and where
/// the results go.
pub struct Scanner {
    listers: Vec<(u32, Lister)>,
    watched: Watched,
    /// The target processes (`--pid`, `--cgroup`), whose new outbound connections are found by
    /// reading their open sockets again.
    targets: Targets,
    threshold: Duration,
    tracker: Tracker,
    report: Arc<Mutex<Report>>,
}

impl Scanner {
    /// Opens a sock_diag socket in each namespace. Before the capabilities are dropped.
    pub fn open(
        namespaces: &[Namespace],
        watched: Watched,
        targets: Targets,
        threshold: Duration,
    ) -> Result<Scanner> {
        let listers = crate::netns::listers(namespaces, "--idle-after")?;
        Ok(Scanner {
            listers,
            watched,
            targets,
            threshold,
            tracker: Tracker::default(),
            report: Arc::default(),
        })
    }

    /// Where the metrics read the last scan's results.
    pub fn report(&self) -> Arc<Mutex<Report>> {
        self.report.clone()
    }

    /// Scans on a thread of its own, at most once per `interval`, until the kernel is gone.
    /// Events go to `events` as lines in `format`.
    pub fn spawn(
        mut self,
        kernel: Weak<Mutex<Kernel>>,
        events: Option<(mpsc::Sender<String>, Format)>,
    ) -> Result<()> {
        std::thread::Builder::new()
            .name("idle-scan".into())
            .spawn(move || {
                let mut warned = false;
                loop {
                    let started = Instant::now();
                    let Some(k) = kernel.upgrade() else { return };
                    let scanned = self.scan_once(&k, events.as_ref());
                    drop(k);
                    let cpu = self.report.lock().expect("idle report").scan_cpu_seconds;
                    let every = interval(self.threshold, Duration::from_secs_f64(cpu));
                    if let Err(e) = scanned
                        && !std::mem::replace(&mut warned, true)
                    {
                        eprintln!(
                            "observer: warning: the idle scan failed ({e:#}); \
                             observer_tcp_connections_idle keeps its last value"
                        );
                    }
                    std::thread::sleep(every.saturating_sub(started.elapsed()));
                }
            })
            .context("starting the idle scan")?;
        Ok(())
    }

    fn scan_once(
        &mut self,
        kernel: &Mutex<Kernel>,
        events: Option<&(mpsc::Sender<String>, Format)>,
    ) -> Result<()> {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        // The kernel's watched ports now (a target's new listener), and the remote ports it
        // counts outbound connections to (a target's new connect()).
        let (local, outbound) = {
            let k = kernel.lock().expect("kernel lock");
            let outbound: HashSet<u16> = if self.targets.any() {
                k.stats()
                    .iter()
                    .filter(|(key, _)| key.direction == DIR_OUTBOUND)
                    .map(|(key, _)| key.port)
                    .collect()
            } else {
                HashSet::new()
            };
            (k.local_ports(), outbound)
        };
        self.watched.follow(local);
        let mut found = Vec::new();
        let mut unknown = Vec::new();
        for (ns, lister) in &mut self.listers {
            for l in lister.established()? {
                let Some(activity) = l.activity else { continue };
                let idle =
                    Duration::from_millis(activity.last_send_ms.min(activity.last_recv_ms).into());
                match self.watched.classify(*ns, &l.socket) {
                    Some(c) => found.push(found_one(l.cookie, idle, c, l.socket)),
                    // Perhaps a target's connection opened since its sockets were last read.
                    None if outbound.contains(&l.socket.dport) && l.socket.inode != 0 => {
                        unknown.push((*ns, l.cookie, idle, l.socket))
                    }
                    None => {}
                }
            }
        }
        if !unknown.is_empty() && self.watched.refresh_targets(&self.targets) {
            for (ns, cookie, idle, s) in unknown {
                if let Some(c) = self.watched.classify(ns, &s) {
                    found.push(found_one(cookie, idle, c, s));
                }
            }
        }
        let scan = self.tracker.scan(found, self.threshold);
        *self.report.lock().expect("idle report") = Report {
            idle: scan.idle,
            scan_seconds: wall.elapsed().as_secs_f64(),
            scan_cpu_seconds: (thread_cpu() - cpu).as_secs_f64(),
        };
        if let Some((tx, format)) = events {
            let now = crate::output::now_ns();
            for f in scan.crossed {
                let (s, owner) = &f.detail;
                let line = Event::idle(
                    now,
                    f.key,
                    SocketAddr::new(s.saddr, s.sport),
                    SocketAddr::new(s.daddr, s.dport),
                    f.idle,
                    owner,
                )
                .format(*format);
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(line) {
                    self.tracker.unreport(f.cookie);
                }
            }
        }
        Ok(())
    }
}

fn found_one(
    cookie: u64,
    idle: Duration,
    (direction, port, owner): (u8, u16, Owner),
    socket: DiagSocket,
) -> Found<(DiagSocket, Owner)> {
    Found {
        cookie,
        key: StatsKey::new(direction, port),
        idle,
        detail: (socket, owner),
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use observer_common::DIR_INBOUND;

    use super::*;

    const T: Duration = Duration::from_secs(2);

    fn conn(cookie: u64, port: u16, idle_ms: u64) -> Found<()> {
        Found {
            cookie,
            key: StatsKey::new(DIR_INBOUND, port),
            idle: Duration::from_millis(idle_ms),
            detail: (),
        }
    }

    fn cookies(s: &Scan<()>) -> Vec<u64> {
        s.crossed.iter().map(|f| f.cookie).collect()
    }

    #[test]
    fn the_gauge_counts_what_is_idle_longer_than_the_threshold_per_port() {
        let mut t = Tracker::default();
        let s = t.scan(
            [
                conn(1, 80, 2001),
                conn(2, 80, 5000),
                conn(3, 80, 2000),
                conn(4, 443, 9000),
                conn(5, 443, 10),
            ],
            T,
        );
        assert_eq!(s.idle[&StatsKey::new(DIR_INBOUND, 80)], 2);
        assert_eq!(s.idle[&StatsKey::new(DIR_INBOUND, 443)], 1);
        assert_eq!(s.idle.len(), 2);
        assert_eq!(cookies(&s), [1, 2, 4]);
    }

    #[test]
    fn a_connection_is_reported_once_while_it_stays_idle() {
        let mut t = Tracker::default();
        assert_eq!(cookies(&t.scan([conn(1, 80, 2500)], T)), [1]);
        let s = t.scan([conn(1, 80, 3000)], T);
        assert!(s.crossed.is_empty());
        assert_eq!(s.idle[&StatsKey::new(DIR_INBOUND, 80)], 1);
    }

    #[test]
    fn a_connection_that_moved_data_leaves_the_gauge_and_is_reported_again_later() {
        let mut t = Tracker::default();
        assert_eq!(cookies(&t.scan([conn(1, 80, 2500)], T)), [1]);
        let s = t.scan([conn(1, 80, 100)], T);
        assert!(s.idle.is_empty() && s.crossed.is_empty());
        assert_eq!(cookies(&t.scan([conn(1, 80, 2100)], T)), [1]);
    }

    #[test]
    fn closed_connections_are_forgotten() {
        let mut t = Tracker::default();
        t.scan((0..1000).map(|c| conn(c, 80, 3000)), T);
        assert_eq!(t.reported.len(), 1000);
        let s = t.scan([conn(5, 80, 3500)], T);
        assert_eq!(t.reported, HashSet::from([5]));
        assert!(s.crossed.is_empty());
    }

    #[test]
    fn an_undelivered_event_is_given_again_at_the_next_scan() {
        let mut t = Tracker::default();
        assert_eq!(cookies(&t.scan([conn(1, 80, 2500)], T)), [1]);
        t.unreport(1);
        assert_eq!(cookies(&t.scan([conn(1, 80, 2700)], T)), [1]);
        assert!(t.scan([conn(1, 80, 2900)], T).crossed.is_empty());
    }

    #[test]
    fn a_socket_listed_twice_counts_once() {
        let mut t = Tracker::default();
        let s = t.scan([conn(1, 80, 2500), conn(1, 80, 2500)], T);
        assert_eq!(s.idle[&StatsKey::new(DIR_INBOUND, 80)], 1);
        assert_eq!(cookies(&s), [1]);
    }

    #[test]
    fn scans_come_at_a_quarter_of_the_threshold_and_at_least_every_10_s() {
        let cheap = Duration::from_millis(2);
        assert_eq!(
            interval(Duration::from_secs(1), cheap),
            Duration::from_millis(250)
        );
        assert_eq!(
            interval(Duration::from_secs(2), cheap),
            Duration::from_millis(500)
        );
        assert_eq!(
            interval(Duration::from_secs(300), cheap),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn scans_take_at_most_a_twentieth_of_a_core() {
        let costly = Duration::from_millis(300);
        assert_eq!(
            interval(Duration::from_secs(1), costly),
            Duration::from_secs(6)
        );
        assert_eq!(
            interval(Duration::from_secs(300), costly),
            Duration::from_secs(10)
        );
        let very = Duration::from_secs(1);
        assert_eq!(
            interval(Duration::from_secs(300), very),
            Duration::from_secs(20)
        );
    }
}
