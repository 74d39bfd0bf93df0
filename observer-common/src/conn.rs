//! One watched connection as the kernel keeps it, and the rules of its life. These rules run in
//! the eBPF program (every counter comes from them) and are unit-tested here on plain data.

use crate::{ending::Ending, tcp};

/// The connection reached ESTABLISHED (now, or before observer started).
pub const FLAG_ESTABLISHED: u8 = 1;
/// The move to ESTABLISHED was observed: `start_ns` is valid and the close has a duration.
pub const FLAG_OPEN_SEEN: u8 = 2;
/// The socket existed before observer attached.
pub const FLAG_PREEXISTING: u8 = 4;

/// Nothing for a person: a step inside the handshake or the shutdown.
pub const EVENT_NONE: u8 = 0;
/// The connection reached ESTABLISHED.
pub const EVENT_OPEN: u8 = 1;
/// An established connection reached CLOSE.
pub const EVENT_CLOSE: u8 = 2;
/// A handshake ended in CLOSE without ever being established.
pub const EVENT_FAILED: u8 = 3;

/// Value of the per-socket map (keyed by the socket's kernel address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// Monotonic time (ns) of the move to ESTABLISHED; 0 when it was not observed.
    pub start_ns: u64,
    /// Monotonic time (ns) the connection left ESTABLISHED (its close() or the peer's FIN);
    /// 0 while it has not.
    pub closing_ns: u64,
    /// The process this connection belongs to for sure; 0 when it cannot be known.
    pub pid: u32,
    /// Local port (inbound) or remote port (outbound): the label of its counters.
    pub port: u16,
    pub direction: u8,
    /// The state the counters hold it in; 0 for a pre-existing socket the counters never held.
    pub state: u8,
    pub flags: u8,
    /// Index of its port's counters (`STATS_SLOTS`), fixed when it is first tracked.
    pub slot: u16,
    pub _pad: [u8; 5],
    pub comm: [u8; 16],
}
crate::pod!(Conn);

/// What one transition does to the counters of the connection's port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Gauge state to decrement (0: none).
    pub leave: u8,
    /// Gauge state to increment (0: none).
    pub enter: u8,
    pub event: u8,
    /// The socket reached CLOSE: forget it.
    pub ended: bool,
    /// The close of a connection whose open was observed: `duration_ns` is its lifetime.
    /// A flag and a plain value, not an `Option`: an `Option`'s undefined payload gets copied,
    /// and verifiers before ~6.8 refuse to read an uninitialised stack slot.
    pub timed: bool,
    /// Lifetime of the connection when `timed`, else 0.
    pub duration_ns: u64,
    /// The time of the transition when it was read (0: not needed, so not read).
    pub now_ns: u64,
    /// How a failed handshake or a close ended (see `ending`): set where the socket's error is
    /// read, at CLOSE.
    pub ending: Ending,
}

/// The port a birth is counted under: the local one for a listener's child (`old` is LISTEN),
/// the remote one for a connect().
pub const fn birth_port(old: u8, sport: u16, dport: u16) -> u16 {
    if old == tcp::LISTEN { sport } else { dport }
}

impl Step {
    /// The lifetime, when this step closed a connection whose open was observed.
    pub fn duration(&self) -> Option<u64> {
        self.timed.then_some(self.duration_ns)
    }
}

impl Conn {
    /// A socket seen for the first time. `counted` is the state in which the counters already
    /// hold it (a socket of the start-up snapshot), or 0 (a new socket, or a pre-existing one
    /// that the snapshot did not count).
    pub const fn new(direction: u8, port: u16, counted: u8, established: bool) -> Self {
        Conn {
            start_ns: 0,
            closing_ns: 0,
            pid: 0,
            port,
            direction,
            state: counted,
            flags: if established { FLAG_ESTABLISHED } else { 0 },
            slot: 0,
            _pad: [0; 5],
            comm: [0; 16],
        }
    }

    /// The socket moved to `new`. `now` reads the monotonic clock; it is called only for the
    /// transitions whose time is used (the open, the first step of the close, the CLOSE), as
    /// reading the clock costs as much as the rest of a transition in the kernel.
    pub fn advance(&mut self, new: u8, now: impl FnOnce() -> u64) -> Step {
        if new == self.state {
            // Same-state transitions happen (FIN_WAIT1 -> FIN_WAIT1): nothing changes.
            return Step::default();
        }
        let opens = new == tcp::ESTABLISHED && self.flags & FLAG_ESTABLISHED == 0;
        let closing = self.state == tcp::ESTABLISHED;
        let now_ns = if opens || closing || new == tcp::CLOSE {
            now()
        } else {
            0
        };
        let mut step = Step {
            leave: if tcp::is_gauged(self.state) {
                self.state
            } else {
                0
            },
            enter: if tcp::is_gauged(new) { new } else { 0 },
            now_ns,
            ..Step::default()
        };
        if opens {
            self.flags |= FLAG_ESTABLISHED | FLAG_OPEN_SEEN;
            self.start_ns = now_ns;
            step.event = EVENT_OPEN;
        }
        if closing {
            self.closing_ns = now_ns;
        }
        if new == tcp::CLOSE {
            step.ended = true;
            if self.flags & FLAG_ESTABLISHED != 0 {
                step.event = EVENT_CLOSE;
                if self.flags & FLAG_OPEN_SEEN != 0 {
                    step.timed = true;
                    step.duration_ns = now_ns.saturating_sub(self.start_ns);
                }
            } else {
                step.event = EVENT_FAILED;
            }
        }
        self.state = new;
        step
    }

    /// Whether this entry is the birth `old -> new` on `port` (see `birth_port`) taken already.
    /// A birth met with an entry in place is normally a socket address freed and reused without
    /// a CLOSE that was seen (the old entry is stale); but the backup program handles a
    /// transition again when it cannot find the main program's note (from 7.0, where a
    /// preempted run lets other tasks' transitions overwrite it), and must then change nothing.
    pub fn took_birth(&self, new: u8, port: u16) -> bool {
        self.state == new && self.port == port
    }

    /// The socket reached CLOSE, but that transition never reached the program (two sweeps found
    /// its memory so; see `sweep`): counted as `advance(CLOSE)` would have counted it (a handshake
    /// that never got established failed), with the lifetime up to the start of its close, as
    /// `retire`.
    pub fn lost_close(&self) -> Step {
        let mut step = self.retire();
        if self.flags & FLAG_ESTABLISHED == 0 {
            step.event = EVENT_FAILED;
        }
        step
    }

    /// A connection met past ESTABLISHED whose open was lost (see `unseeded_sides`): counted
    /// opened now, without a lifetime (its open time is unknown); the transition it was met in
    /// comes next.
    pub fn open_late(&mut self, now_ns: u64) -> Step {
        self.flags |= FLAG_ESTABLISHED;
        self.state = tcp::ESTABLISHED;
        Step {
            enter: tcp::ESTABLISHED,
            event: EVENT_OPEN,
            now_ns,
            ..Step::default()
        }
    }

    /// The socket is gone without a CLOSE that the program saw: its address came back for a new
    /// socket, which cannot happen while it lives. An established connection did close, so it
    /// counts as closed, with the lifetime up to the start of its close (its close() or the
    /// peer's FIN; 0 if it was not seen). A connect() that never got established failed: such a
    /// socket reaches CLOSE before it is freed. A listener's child that never got established
    /// only leaves its state: it is not a failed handshake (the kernel frees, for one, the loser
    /// of two children raced for one request without a CLOSE).
    pub fn retire(&self) -> Step {
        let established = self.flags & FLAG_ESTABLISHED != 0;
        Step {
            leave: if tcp::is_gauged(self.state) {
                self.state
            } else {
                0
            },
            enter: 0,
            event: if established {
                EVENT_CLOSE
            } else if self.state == tcp::SYN_SENT {
                EVENT_FAILED
            } else {
                EVENT_NONE
            },
            ended: true,
            timed: established && self.flags & FLAG_OPEN_SEEN != 0,
            duration_ns: if established && self.flags & FLAG_OPEN_SEEN != 0 {
                self.closing_ns.saturating_sub(self.start_ns)
            } else {
                0
            },
            now_ns: 0,
            ending: Ending::default(),
        }
    }
}

/// How the program decides what a first sighting of a socket means.
///
/// `old -> new` is that first transition; `baselined` says the start-up snapshot counted the
/// socket in state `old` (its seed was found in the kernel's baseline map).
pub fn first_sighting(direction: u8, port: u16, old: u8, baselined: bool) -> Conn {
    let counted = if baselined && tcp::is_gauged(old) {
        old
    } else {
        0
    };
    let mut conn = Conn::new(direction, port, counted, tcp::implies_established(old));
    if !matches!(old, tcp::CLOSE | tcp::LISTEN) {
        conn.flags |= FLAG_PREEXISTING;
    }
    conn
}

/// Which side an unseeded first sighting may be counted on, from its first transition `old ->
/// ...`, whether its local and remote ports are watched, and whether the socket is a listener's
/// child (`child`: it inherited the listener's accept backlog, `sk_max_ack_backlog`, where a
/// connect()ed socket has 0).
///
/// A socket leaving SYN_SENT was made by connect(): outbound, whatever its local port (an
/// ephemeral port can equal a watched one in another network namespace, or by an explicit
/// bind). One leaving SYN_RECV is the child of a listener: inbound. Met later in its life:
/// - while the snapshot window is open, or when the snapshot could not seed every connection
///   (`adopt_established`), it is one that existed before observer: adopted on either side its
///   ports allow, as the snapshot would have counted it;
/// - after that, an entry missing there means its birth and its move to ESTABLISHED were both
///   lost (from Linux 7.0 both programs can be held at once by preempted runs), or it had no
///   room then: adopted as a `late` open, on the side the socket itself tells, a listener's
///   child inbound and any other outbound. The program does so only where runs are preemptible
///   (Linux 7.0 on), where opens get lost. A socket whose birth was declined (a connect() from a
///   watched port number, a child of an unwatched listener) stays declined.
pub fn unseeded_sides(
    old: u8,
    local: bool,
    remote: bool,
    adopt_established: bool,
    child: bool,
) -> Sides {
    match old {
        tcp::SYN_SENT => Sides {
            inbound: false,
            outbound: remote,
            late: false,
        },
        tcp::SYN_RECV => Sides {
            inbound: local,
            outbound: false,
            late: false,
        },
        _ if adopt_established => Sides {
            inbound: local,
            outbound: remote,
            late: false,
        },
        _ => Sides {
            inbound: local && child,
            outbound: remote && !child,
            late: true,
        },
    }
}

/// The sides `unseeded_sides` allows; inbound is tried first (its owner must be known).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sides {
    pub inbound: bool,
    pub outbound: bool,
    /// Its open was lost, not before observer: count it opened now (`Conn::open_late`).
    pub late: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DIR_INBOUND, DIR_OUTBOUND, tcp::*};

    fn walk(conn: &mut Conn, states: &[u8]) -> [Step; 8] {
        let mut steps = [Step::default(); 8];
        for (i, s) in states.iter().enumerate() {
            steps[i] = conn.advance(*s, || 1_000 * (i as u64 + 1));
        }
        steps
    }

    #[test]
    fn inbound_server_closes_first() {
        let mut c = first_sighting(DIR_INBOUND, 8080, LISTEN, false);
        assert_eq!(c.flags & FLAG_PREEXISTING, 0);
        let s = walk(
            &mut c,
            &[
                SYN_RECV,
                ESTABLISHED,
                FIN_WAIT1,
                FIN_WAIT1,
                FIN_WAIT2,
                CLOSE,
            ],
        );
        assert_eq!(
            (s[0].leave, s[0].enter, s[0].event),
            (0, SYN_RECV, EVENT_NONE)
        );
        assert_eq!(
            (s[1].leave, s[1].enter, s[1].event),
            (SYN_RECV, ESTABLISHED, EVENT_OPEN)
        );
        assert_eq!((s[2].leave, s[2].enter), (ESTABLISHED, FIN_WAIT1));
        assert_eq!(
            s[3],
            Step::default(),
            "same-state transition counts nothing"
        );
        assert_eq!((s[4].leave, s[4].enter), (FIN_WAIT1, FIN_WAIT2));
        assert_eq!(
            (s[5].leave, s[5].enter, s[5].event),
            (FIN_WAIT2, 0, EVENT_CLOSE)
        );
        assert!(s[5].ended);
        // Established at t=2000, closed at t=6000.
        assert_eq!(s[5].duration(), Some(4_000));
    }

    #[test]
    fn inbound_client_closes_first() {
        let mut c = first_sighting(DIR_INBOUND, 80, LISTEN, false);
        let s = walk(
            &mut c,
            &[SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE],
        );
        assert_eq!((s[2].leave, s[2].enter), (ESTABLISHED, CLOSE_WAIT));
        assert_eq!((s[3].leave, s[3].enter), (CLOSE_WAIT, LAST_ACK));
        assert_eq!(
            (s[4].leave, s[4].enter, s[4].event),
            (LAST_ACK, 0, EVENT_CLOSE)
        );
    }

    #[test]
    fn gauges_balance_over_any_life() {
        // Whatever the path, every enter is matched by a leave once the socket ends.
        let paths: [&[u8]; 4] = [
            &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE],
            &[SYN_SENT, CLOSE],
            &[SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE],
            &[SYN_RECV, ESTABLISHED, FIN_WAIT1, CLOSING, CLOSE],
        ];
        for path in paths {
            let mut c = first_sighting(DIR_OUTBOUND, 5432, CLOSE, false);
            let mut net = [0i64; NUM_STATES];
            for (i, s) in path.iter().enumerate() {
                let step = c.advance(*s, || i as u64);
                if step.leave != 0 {
                    net[step.leave as usize] -= 1;
                }
                if step.enter != 0 {
                    net[step.enter as usize] += 1;
                }
            }
            assert_eq!(net, [0; NUM_STATES], "{path:?}");
        }
    }

    #[test]
    fn refused_connect_is_failed_not_closed() {
        let mut c = first_sighting(DIR_OUTBOUND, 5432, CLOSE, false);
        let s = walk(&mut c, &[SYN_SENT, CLOSE]);
        assert_eq!((s[0].leave, s[0].enter), (0, SYN_SENT));
        assert_eq!(
            (s[1].leave, s[1].enter, s[1].event),
            (SYN_SENT, 0, EVENT_FAILED)
        );
        assert_eq!(s[1].duration(), None);
    }

    #[test]
    fn baselined_socket_leaves_the_state_the_snapshot_counted() {
        // Counted ESTABLISHED by the snapshot; closes without an observed open.
        let mut c = first_sighting(DIR_INBOUND, 8080, ESTABLISHED, true);
        assert_ne!(c.flags & FLAG_PREEXISTING, 0);
        let s = c.advance(CLOSE_WAIT, || 10);
        assert_eq!(
            (s.leave, s.enter, s.event),
            (ESTABLISHED, CLOSE_WAIT, EVENT_NONE)
        );
        c.advance(LAST_ACK, || 11);
        let s = c.advance(CLOSE, || 12);
        assert_eq!(
            (s.leave, s.event, s.duration()),
            (LAST_ACK, EVENT_CLOSE, None)
        );
    }

    #[test]
    fn unbaselined_preexisting_socket_only_enters() {
        // Seen by the kernel before the snapshot could count it: the counters start from its new
        // state, so nothing is decremented that was never incremented.
        let mut c = first_sighting(DIR_INBOUND, 8080, ESTABLISHED, false);
        let s = c.advance(FIN_WAIT1, || 10);
        assert_eq!((s.leave, s.enter, s.event), (0, FIN_WAIT1, EVENT_NONE));
        let mut c = first_sighting(DIR_INBOUND, 8080, ESTABLISHED, false);
        let s = c.advance(CLOSE, || 10);
        assert_eq!(
            (s.leave, s.enter, s.event),
            (0, 0, EVENT_CLOSE),
            "closed, not failed"
        );
    }

    #[test]
    fn a_vanished_connection_is_closed_once_with_its_observed_life() {
        let mut c = first_sighting(DIR_INBOUND, 8080, LISTEN, false);
        walk(&mut c, &[SYN_RECV, ESTABLISHED, FIN_WAIT1]);
        let s = c.retire();
        assert_eq!((s.leave, s.enter, s.event), (FIN_WAIT1, 0, EVENT_CLOSE));
        // Established at t=2000, last seen at t=3000.
        assert_eq!(s.duration(), Some(1_000));
        let mut loser = first_sighting(DIR_INBOUND, 8080, LISTEN, false);
        loser.advance(SYN_RECV, || 5);
        let s = loser.retire();
        assert_eq!(
            (s.leave, s.event, s.duration()),
            (SYN_RECV, EVENT_NONE, None)
        );
        let mut connect = first_sighting(DIR_OUTBOUND, 5432, CLOSE, false);
        connect.advance(SYN_SENT, || 5);
        let s = connect.retire();
        assert_eq!(
            (s.leave, s.event),
            (SYN_SENT, EVENT_FAILED),
            "a connect() that failed"
        );
    }

    #[test]
    fn preexisting_half_open_connect_that_succeeds_is_an_observed_open() {
        let mut c = first_sighting(DIR_OUTBOUND, 443, SYN_SENT, false);
        let s = c.advance(ESTABLISHED, || 50);
        assert_eq!((s.leave, s.enter, s.event), (0, ESTABLISHED, EVENT_OPEN));
        let s = c.advance(CLOSE, || 80);
        assert_eq!(s.duration(), Some(30));
    }

    #[test]
    fn a_connect_from_a_watched_port_number_is_never_inbound() {
        // connect() from 127.0.0.3:P while the server listens on 127.0.0.1:P.
        let s = unseeded_sides(SYN_SENT, true, false, true, false);
        assert!(!s.inbound && !s.outbound);
        // Its later transitions, after the snapshot: not a listener's child, so not inbound.
        for old in [ESTABLISHED, FIN_WAIT1, CLOSE_WAIT] {
            let s = unseeded_sides(old, true, false, false, false);
            assert!(!s.inbound && !s.outbound, "{old}");
        }
        // An outbound connection to a watched port still is outbound.
        assert!(unseeded_sides(SYN_SENT, true, true, false, false).outbound);
    }

    #[test]
    fn a_listener_child_met_in_its_handshake_is_inbound() {
        let s = unseeded_sides(SYN_RECV, true, true, false, true);
        assert!(s.inbound && !s.outbound && !s.late);
    }

    #[test]
    fn established_sockets_before_observer_are_adopted_while_the_snapshot_is_open() {
        let s = unseeded_sides(CLOSE_WAIT, true, false, true, true);
        assert!(s.inbound && !s.outbound && !s.late);
        let s = unseeded_sides(ESTABLISHED, false, true, true, false);
        assert!(!s.inbound && s.outbound && !s.late);
    }

    #[test]
    fn a_connection_whose_open_was_lost_is_adopted_late_on_the_side_the_socket_tells() {
        // A listener's child on a watched port: inbound.
        let s = unseeded_sides(ESTABLISHED, true, true, false, true);
        assert!(s.inbound && !s.outbound && s.late);
        // A connect()ed socket to a watched remote port: outbound, whatever its local port.
        let s = unseeded_sides(FIN_WAIT1, true, true, false, false);
        assert!(!s.inbound && s.outbound && s.late);
        // A child of an unwatched listener whose client's port is a watched remote port: neither.
        let s = unseeded_sides(CLOSE_WAIT, false, true, false, true);
        assert!(!s.inbound && !s.outbound);
    }

    #[test]
    fn a_lost_close_counts_as_the_close_would_have() {
        let mut c = first_sighting(DIR_OUTBOUND, 5432, CLOSE, false);
        c.advance(SYN_SENT, || 1);
        let s = c.lost_close();
        assert_eq!(
            (s.leave, s.enter, s.event, s.ended),
            (SYN_SENT, 0, EVENT_FAILED, true)
        );
        assert_eq!(s.duration(), None);
        c.advance(ESTABLISHED, || 10);
        c.advance(FIN_WAIT1, || 25);
        let s = c.lost_close();
        assert_eq!((s.leave, s.event), (FIN_WAIT1, EVENT_CLOSE));
        assert_eq!(s.duration(), Some(15), "up to the start of its close");
    }

    #[test]
    fn a_late_open_counts_the_open_without_a_lifetime() {
        let mut c = Conn::new(DIR_INBOUND, 8080, 0, false);
        let s = c.open_late(5);
        assert_eq!((s.leave, s.enter, s.event), (0, ESTABLISHED, EVENT_OPEN));
        let s = c.advance(CLOSE_WAIT, || 10);
        assert_eq!(
            (s.leave, s.enter, s.event),
            (ESTABLISHED, CLOSE_WAIT, EVENT_NONE)
        );
        let s = c.advance(LAST_ACK, || 20);
        assert_eq!((s.leave, s.enter), (CLOSE_WAIT, LAST_ACK));
        let s = c.advance(CLOSE, || 30);
        assert_eq!((s.leave, s.enter, s.event), (LAST_ACK, 0, EVENT_CLOSE));
        assert_eq!(s.duration(), None);
    }

    #[test]
    fn the_clock_is_read_only_when_its_time_is_used() {
        let mut c = first_sighting(DIR_INBOUND, 8080, LISTEN, false);
        let mut reads = 0;
        let mut clock = |t: u64| {
            reads += 1;
            t
        };
        let s = c.advance(SYN_RECV, || clock(1));
        assert_eq!(s.now_ns, 0);
        c.advance(ESTABLISHED, || clock(2));
        c.advance(FIN_WAIT1, || clock(3));
        c.advance(FIN_WAIT1, || clock(4));
        c.advance(FIN_WAIT2, || clock(5));
        let s = c.advance(CLOSE, || clock(6));
        assert_eq!(reads, 3, "open, start of the close, CLOSE");
        assert_eq!((s.now_ns, s.duration()), (6, Some(4)));
    }

    #[test]
    fn a_birth_taken_already_is_told_from_a_stale_entry() {
        // connect(): CLOSE -> SYN_SENT to remote port 5432 from local port 40000.
        let port = birth_port(tcp::CLOSE, 40000, 5432);
        assert_eq!(port, 5432);
        let mut c = first_sighting(crate::DIR_OUTBOUND, port, tcp::CLOSE, false);
        c.advance(tcp::SYN_SENT, || 1);
        assert!(c.took_birth(tcp::SYN_SENT, port));
        // The same address, reused later for another connection while this entry went stale.
        c.advance(tcp::ESTABLISHED, || 2);
        assert!(!c.took_birth(tcp::SYN_SENT, port));
        // A listener's child: LISTEN -> SYN_RECV on local port 8080.
        let port = birth_port(tcp::LISTEN, 8080, 51000);
        assert_eq!(port, 8080);
        let mut c = first_sighting(crate::DIR_INBOUND, port, tcp::LISTEN, false);
        c.advance(tcp::SYN_RECV, || 1);
        assert!(c.took_birth(tcp::SYN_RECV, 8080));
        assert!(!c.took_birth(tcp::SYN_RECV, 8081));
    }
}
