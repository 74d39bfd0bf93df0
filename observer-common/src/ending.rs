//! How a connection ended, read at its CLOSE from the state it left and the socket's error
//! (`sk_err`): why a handshake failed, whether an established connection ended with a reset, and
//! which side closed first. The kernel sets `sk_err` before it moves the socket to CLOSE (a RST
//! to a SYN, SYN retries exhausted, an ICMP error, a RST), under the socket's lock.

use crate::{
    DIR_INBOUND,
    conn::{EVENT_CLOSE, EVENT_FAILED},
    tcp,
};

/// `Step::reason` of a failed handshake, and the index of its counter.
pub const REASON_OTHER: u8 = 0;
/// A RST answered the SYN (nobody listens there).
pub const REASON_REFUSED: u8 = 1;
/// The SYN (or SYN-ACK) retries ran out with no answer.
pub const REASON_TIMEOUT: u8 = 2;
/// An ICMP error said the host or network cannot be reached.
pub const REASON_UNREACHABLE: u8 = 3;
/// An inbound handshake reset or given up by the client.
pub const REASON_RESET: u8 = 4;
/// The local side closed the socket before the handshake finished (an application's own
/// connect timeout): no error from the network.
pub const REASON_ABANDONED: u8 = 5;
/// The reason of a close that was neither a reset nor a timeout (close events only).
pub const REASON_NORMAL: u8 = 6;
/// Size of a per-reason array (a power of two: indices are masked).
pub const NUM_REASONS: usize = 8;
/// The label of each reason, by index.
pub const REASON_NAMES: [&str; 7] = [
    "other",
    "refused",
    "timeout",
    "unreachable",
    "reset",
    "abandoned",
    "normal",
];
/// The reasons a failed handshake is counted under (`observer_tcp_connections_failed_total`).
pub const FAILURE_REASONS: [u8; 6] = [
    REASON_REFUSED,
    REASON_TIMEOUT,
    REASON_UNREACHABLE,
    REASON_RESET,
    REASON_ABANDONED,
    REASON_OTHER,
];

/// `Step::by`: who closed first is not known (the close was never delivered, or the socket was
/// first met at its CLOSE).
pub const BY_UNKNOWN: u8 = 0;
/// This host: it sent the first FIN, or aborted the connection (a RST it sent, a timeout).
pub const BY_LOCAL: u8 = 1;
/// The peer: its FIN came first, or its RST ended the connection.
pub const BY_REMOTE: u8 = 2;
/// Size of a per-side array (a power of two: indices are masked).
pub const NUM_BY: usize = 4;
pub const BY_NAMES: [&str; 3] = ["unknown", "local", "remote"];

/// Linux's errno values (the same on every architecture observer loads on).
pub mod errno {
    pub const EPIPE: i32 = 32;
    pub const ENETDOWN: i32 = 100;
    pub const ENETUNREACH: i32 = 101;
    pub const ECONNRESET: i32 = 104;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const EHOSTDOWN: i32 = 112;
    pub const EHOSTUNREACH: i32 = 113;
}

/// How one CLOSE ended its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ending {
    /// `REASON_*`: why a handshake failed; for a close, `REASON_RESET`, `REASON_TIMEOUT` or
    /// `REASON_NORMAL` (`REASON_OTHER` when the close was never delivered).
    pub reason: u8,
    /// `BY_*`, for an established connection.
    pub by: u8,
    /// An established connection that ended with a reset rather than an orderly close.
    pub reset: bool,
}

/// The ending of a transition to CLOSE that counted `event` (a failed handshake or a close),
/// from the state it left (`left`) and the socket's error.
pub const fn at_close(event: u8, direction: u8, left: u8, err: i32) -> Ending {
    match event {
        EVENT_FAILED => Ending {
            reason: failure(direction, err),
            by: BY_UNKNOWN,
            reset: false,
        },
        EVENT_CLOSE => close(left, err),
        _ => Ending {
            reason: REASON_OTHER,
            by: BY_UNKNOWN,
            reset: false,
        },
    }
}

/// The same for a CLOSE the kernel never delivered: no error to read.
pub const fn unseen(event: u8, left: u8) -> Ending {
    match event {
        EVENT_CLOSE => unseen_close(left),
        _ => Ending {
            reason: REASON_OTHER,
            by: BY_UNKNOWN,
            reset: false,
        },
    }
}

/// Why a handshake failed: `err` is the socket's error at CLOSE.
pub const fn failure(direction: u8, err: i32) -> u8 {
    use errno::*;
    match err {
        ECONNREFUSED => REASON_REFUSED,
        ETIMEDOUT => REASON_TIMEOUT,
        EHOSTUNREACH | ENETUNREACH | EHOSTDOWN | ENETDOWN => REASON_UNREACHABLE,
        ECONNRESET | EPIPE => REASON_RESET,
        // Inbound: the client's RST or its silence turned into nothing more than a CLOSE.
        0 if direction == DIR_INBOUND => REASON_RESET,
        0 => REASON_ABANDONED,
        _ => REASON_OTHER,
    }
}

/// How an established connection ended, from the state it left for CLOSE (`left`, 0 when the
/// counters did not hold it) and the socket's error then.
///
/// The states tell who closed first: FIN_WAIT1, FIN_WAIT2 and CLOSING follow a FIN this host
/// sent first, CLOSE_WAIT and LAST_ACK one the peer sent first. Straight from ESTABLISHED to
/// CLOSE is an abort: by the peer when its RST came (ECONNRESET), else by this host (a RST it
/// sent: SO_LINGER 0, or unread data at close(); or its retransmissions timing out). A reset
/// is such an abort but a timeout (which sends no RST), or any close whose error is a RST
/// received (ECONNRESET, EPIPE in CLOSE_WAIT), or CLOSE_WAIT left straight for CLOSE (close()
/// with unread data).
pub const fn close(left: u8, err: i32) -> Ending {
    use errno::*;
    let rst_received = matches!(err, ECONNRESET | EPIPE);
    let timeout = err == ETIMEDOUT;
    let reset = rst_received || (!timeout && matches!(left, tcp::ESTABLISHED | tcp::CLOSE_WAIT));
    let by = match left {
        tcp::FIN_WAIT1 | tcp::FIN_WAIT2 | tcp::CLOSING => BY_LOCAL,
        tcp::CLOSE_WAIT | tcp::LAST_ACK => BY_REMOTE,
        tcp::ESTABLISHED if rst_received => BY_REMOTE,
        tcp::ESTABLISHED => BY_LOCAL,
        _ => BY_UNKNOWN,
    };
    Ending {
        reason: if reset {
            REASON_RESET
        } else if timeout {
            REASON_TIMEOUT
        } else {
            REASON_NORMAL
        },
        by,
        reset,
    }
}

/// A close the kernel never delivered (found by the sweep, or at the address's reuse): who
/// closed first where the state says it, nothing else.
const fn unseen_close(left: u8) -> Ending {
    Ending {
        reason: REASON_OTHER,
        by: match left {
            tcp::FIN_WAIT1 | tcp::FIN_WAIT2 | tcp::CLOSING => BY_LOCAL,
            tcp::CLOSE_WAIT | tcp::LAST_ACK => BY_REMOTE,
            _ => BY_UNKNOWN,
        },
        reset: false,
    }
}

#[cfg(test)]
mod tests {
    use super::{errno::*, *};
    use crate::{DIR_OUTBOUND, tcp::*};

    #[test]
    fn failed_handshakes_have_the_reason_their_error_gives() {
        assert_eq!(failure(DIR_OUTBOUND, ECONNREFUSED), REASON_REFUSED);
        assert_eq!(failure(DIR_OUTBOUND, ETIMEDOUT), REASON_TIMEOUT);
        assert_eq!(failure(DIR_OUTBOUND, EHOSTUNREACH), REASON_UNREACHABLE);
        assert_eq!(failure(DIR_OUTBOUND, ENETUNREACH), REASON_UNREACHABLE);
        assert_eq!(failure(DIR_OUTBOUND, 0), REASON_ABANDONED);
        assert_eq!(failure(DIR_OUTBOUND, 22), REASON_OTHER);
        assert_eq!(failure(DIR_INBOUND, ECONNRESET), REASON_RESET);
        assert_eq!(failure(DIR_INBOUND, 0), REASON_RESET);
        assert_eq!(failure(DIR_INBOUND, ETIMEDOUT), REASON_TIMEOUT);
        for (i, name) in REASON_NAMES.iter().enumerate() {
            assert!(i < NUM_REASONS, "{name}");
        }
    }

    #[test]
    fn an_orderly_close_says_who_closed_first() {
        let local = Ending {
            reason: REASON_NORMAL,
            by: BY_LOCAL,
            reset: false,
        };
        let remote = Ending {
            by: BY_REMOTE,
            ..local
        };
        // Active close: FIN_WAIT2 (or CLOSING) hands over to a time-wait socket.
        assert_eq!(close(FIN_WAIT2, 0), local);
        assert_eq!(close(CLOSING, 0), local);
        // Passive close: the last ACK came.
        assert_eq!(close(LAST_ACK, 0), remote);
    }

    #[test]
    fn an_abort_is_a_reset_by_whoever_sent_it() {
        // The peer's RST.
        let e = close(ESTABLISHED, ECONNRESET);
        assert_eq!((e.by, e.reset), (BY_REMOTE, true));
        // This host's RST (SO_LINGER 0): no error on the socket.
        let e = close(ESTABLISHED, 0);
        assert_eq!((e.by, e.reset), (BY_LOCAL, true));
        // The peer closed first, then this host closed with unread data, or got a RST.
        assert_eq!(close(CLOSE_WAIT, 0).by, BY_REMOTE);
        assert!(close(CLOSE_WAIT, 0).reset);
        assert!(close(CLOSE_WAIT, EPIPE).reset);
        // A RST while this host waited for the end of its own close.
        let e = close(FIN_WAIT1, ECONNRESET);
        assert_eq!((e.by, e.reset), (BY_LOCAL, true));
        // Retransmissions gave up: this host ended it, no reset came or went.
        let e = close(FIN_WAIT1, ETIMEDOUT);
        assert_eq!((e.by, e.reset, e.reason), (BY_LOCAL, false, REASON_TIMEOUT));
        let e = close(ESTABLISHED, ETIMEDOUT);
        assert_eq!((e.by, e.reset, e.reason), (BY_LOCAL, false, REASON_TIMEOUT));
        assert_eq!(close(ESTABLISHED, ECONNRESET).reason, REASON_RESET);
    }

    #[test]
    fn the_event_picks_the_rule() {
        use crate::conn::{EVENT_CLOSE, EVENT_FAILED, EVENT_OPEN};
        let f = at_close(EVENT_FAILED, DIR_OUTBOUND, SYN_SENT, ECONNREFUSED);
        assert_eq!(
            (f.reason, f.by, f.reset),
            (REASON_REFUSED, BY_UNKNOWN, false)
        );
        assert_eq!(
            at_close(EVENT_CLOSE, DIR_OUTBOUND, LAST_ACK, 0),
            close(LAST_ACK, 0)
        );
        assert_eq!(
            at_close(EVENT_OPEN, DIR_OUTBOUND, SYN_SENT, 0),
            Ending::default()
        );
        assert_eq!(unseen(EVENT_FAILED, SYN_SENT).reason, REASON_OTHER);
        assert_eq!(unseen(EVENT_CLOSE, FIN_WAIT2).by, BY_LOCAL);
    }

    #[test]
    fn an_unseen_close_knows_only_what_the_state_says() {
        assert_eq!(unseen_close(FIN_WAIT2).by, BY_LOCAL);
        assert_eq!(unseen_close(CLOSE_WAIT).by, BY_REMOTE);
        assert_eq!(unseen_close(ESTABLISHED).by, BY_UNKNOWN);
        assert_eq!(unseen_close(0).by, BY_UNKNOWN);
        assert!(!unseen_close(ESTABLISHED).reset);
    }
}
