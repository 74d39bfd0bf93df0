//! Inbound handshakes that end while still request sockets.
//!
//! Until the client's ACK comes, the kernel keeps an inbound handshake as a small request socket
//! (`struct request_sock`), not a full socket, and the TCP tracepoint never sees it. One that
//! never becomes a connection (the client reset it or went silent until the SYN-ACK retries ran
//! out, or its listener closed) is freed without ever passing the tracepoint. Every request
//! socket is freed through its protocol's destructor (`tcp_v4_reqsk_destructor`,
//! `tcp_v6_reqsk_destructor`: called through a function pointer, so never inlined, on every
//! kernel): a program there counts the failed ones as inbound `failed` handshakes.
use crate::conn::{EVENT_FAILED, Step};
use crate::ending::{BY_UNKNOWN, Ending, REASON_RESET};

/// Offsets in `struct request_sock` (from the kernel's BTF). Its first member is a
/// `struct sock_common`, so the socket's addresses and ports are at `SockOffsets`' offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestOffsets {
    /// `rsk_listener` (`__req_common.skc_listener`): the listener it was made for; null for the
    /// short-lived request sockets of SYN cookies, which no listener queues.
    pub listener: u32,
    /// `sk`: the connection it became, set once the handshake completed into the accept queue
    /// (or a TCP Fast Open connection was made); null otherwise.
    pub child: u32,
}
crate::pod!(RequestOffsets);

/// Whether a request socket freed with these two pointers was a handshake that failed: one a
/// listener queued (not a SYN cookie's) that never became a connection.
pub const fn failed(listener: u64, child: u64) -> bool {
    listener != 0 && child == 0
}

/// What a failed request socket counts: an inbound handshake failed, `reset` (the client's RST,
/// or its silence: the "inbound handshake reset or abandoned"); no gauge moves, as no
/// gauge held it.
pub const fn failure() -> Step {
    Step {
        leave: 0,
        enter: 0,
        event: EVENT_FAILED,
        ended: true,
        timed: false,
        duration_ns: 0,
        now_ns: 0,
        ending: Ending {
            reason: REASON_RESET,
            by: BY_UNKNOWN,
            reset: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_queued_request_that_became_no_connection_failed() {
        assert!(failed(0xffff_8880_0000_1000, 0));
        // It became a connection: the tracepoint counts that one.
        assert!(!failed(0xffff_8880_0000_1000, 0xffff_8880_0000_2000));
        // A SYN cookie's: no listener queued it, and no handshake was held.
        assert!(!failed(0, 0));
    }

    #[test]
    fn a_failed_request_is_an_inbound_reset_that_no_gauge_held() {
        let s = failure();
        assert_eq!((s.leave, s.enter, s.event), (0, 0, EVENT_FAILED));
        assert_eq!(s.ending.reason, REASON_RESET);
        assert!(s.duration().is_none());
    }
}
