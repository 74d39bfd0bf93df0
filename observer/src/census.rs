//! The scrape-time socket census: what the kernel program's tracepoint never sees, counted from
//! two sock_diag dumps per watched namespace. TIME_WAIT sockets (the kernel's time-wait mini
//! sockets, which take over from a full socket as it reaches CLOSE), request sockets (inbound
//! handshakes waiting for the client's ACK, which live outside the full sockets until then), and
//! the listeners' accept queues and backlogs.
//!
//! The first dump asks for LISTEN (the kernel then walks its listening table only), the second
//! for TIME_WAIT and NEW_SYN_RECV (its established table only). Asking for NEW_SYN_RECV and not
//! SYN_RECV brings the request sockets without the full sockets in SYN_RECV (those the kernel
//! program counts): the kernel reports a request socket as SYN_RECV, so every SYN_RECV of this
//! dump is one. A time-wait socket does not say which side opened it: on a watched local port
//! it is inbound unless the port's listeners are all bound to other addresses (then it was
//! connect()ed from that port number, see `Listeners`). A time-wait socket is reported in its substate, TIME_WAIT or FIN_WAIT2 (an
//! orphan closed in FIN_WAIT2): only TIME_WAIT is asked for and counted, as `ss` does.
//!
//! A census runs when a scrape asks for it, at most once a second, and no sooner than 20 times
//! the last one's CPU time after it (at most 5% of a core however many sockets there are); a
//! scrape in between is served the last result.
use std::{
    collections::HashMap,
    net::IpAddr,
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

/// The local addresses of one namespace's listeners, per port, from its LISTEN dump: which
/// time-wait sockets may be a listener's connections.
#[derive(Debug, Default)]
pub struct Listeners(HashMap<u16, Vec<IpAddr>>);

impl Listeners {
    pub fn add(&mut self, s: &DiagSocket) {
        self.0.entry(s.sport).or_default().push(plain(s.saddr));
    }

    /// Whether a socket with this local address and port may have been accepted by a listener:
    /// a listener of its port has that address or the wildcard one, or the port has no listener
    /// (a server that stopped leaves its connections' time-wait sockets behind). A socket from
    /// another local address on a port whose listeners are all bound elsewhere was connect()ed.
    pub fn may_have_accepted(&self, s: &DiagSocket) -> bool {
        let Some(addrs) = self.0.get(&s.sport) else {
            return true;
        };
        let local = plain(s.saddr);
        addrs.iter().any(|a| a.is_unspecified() || *a == local)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (a dual-stack listener's IPv4 client).
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
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

/// The states of the two dumps (see the module's comment): the listeners first, whose addresses
/// tell which time-wait sockets may be theirs, then the rest.
fn states() -> [u32; 2] {
    [
        state_mask(&[tcp::LISTEN]),
        state_mask(&[tcp::TIME_WAIT, tcp::NEW_SYN_RECV]),
    ]
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
        let [listening, others] = states();
        for (ns, lister) in &mut self.listers {
            let mut listeners = Listeners::default();
            lister.each(listening, |s: &DiagSocket, q| {
                listeners.add(s);
                let class = watched.classify(*ns, s).map(|(d, p, _)| (d, p));
                counts.add(class, s.state, q);
            })?;
            lister.each(others, |s: &DiagSocket, q| {
                let class = if s.state == tcp::TIME_WAIT && !listeners.may_have_accepted(s) {
                    watched.classify_outbound(s)
                } else {
                    watched.classify(*ns, s)
                };
                counts.add(class.map(|(d, p, _)| (d, p)), s.state, q);
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
    fn the_dumps_ask_for_listeners_then_request_sockets_not_full_syn_recv_ones() {
        let [listening, m] = states();
        assert_eq!(listening, 1 << tcp::LISTEN);
        assert_ne!(m & (1 << tcp::NEW_SYN_RECV), 0);
        assert_eq!(m & (1 << tcp::SYN_RECV), 0);
        assert_ne!(m & (1 << tcp::TIME_WAIT), 0);
        assert_eq!(m & (1 << tcp::LISTEN), 0);
    }

    fn sock(state: u8, local: &str, port: u16) -> DiagSocket {
        let ip: IpAddr = local.parse().unwrap();
        DiagSocket {
            state,
            sport: port,
            dport: 40_000,
            saddr: ip,
            daddr: ip,
            inode: 0,
        }
    }

    #[test]
    fn a_time_wait_socket_is_a_listeners_only_on_an_address_it_listens_on() {
        let mut l = Listeners::default();
        l.add(&sock(tcp::LISTEN, "127.0.0.1", 80));
        l.add(&sock(tcp::LISTEN, "0.0.0.0", 443));
        l.add(&sock(tcp::LISTEN, "::", 8443));
        // Port 80 listens on 127.0.0.1 only: a connection from 127.0.0.3:80 was connect()ed.
        assert!(l.may_have_accepted(&sock(tcp::TIME_WAIT, "127.0.0.1", 80)));
        assert!(!l.may_have_accepted(&sock(tcp::TIME_WAIT, "127.0.0.3", 80)));
        // Wildcard listeners accept on every address, IPv4 clients of [::] included.
        assert!(l.may_have_accepted(&sock(tcp::TIME_WAIT, "10.1.2.3", 443)));
        assert!(l.may_have_accepted(&sock(tcp::TIME_WAIT, "::ffff:10.1.2.3", 8443)));
        // A port with no listener (left) keeps the port rule: its time-wait sockets may be a
        // stopped server's.
        assert!(l.may_have_accepted(&sock(tcp::TIME_WAIT, "127.0.0.3", 8080)));
    }

    #[test]
    fn a_dual_stack_listeners_ipv4_clients_match_its_ipv4_mapped_address() {
        let mut l = Listeners::default();
        l.add(&sock(tcp::LISTEN, "::ffff:127.0.0.1", 80));
        assert!(l.may_have_accepted(&sock(tcp::TIME_WAIT, "127.0.0.1", 80)));
        assert!(l.may_have_accepted(&sock(tcp::TIME_WAIT, "::ffff:127.0.0.1", 80)));
        assert!(!l.may_have_accepted(&sock(tcp::TIME_WAIT, "::1", 80)));
    }
}
