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
    /// `snt_synack` of `struct tcp_request_sock` (a `u64`): when its first SYN-ACK was sent,
    /// zero until then. A listener sends one as soon as it has queued the request socket, so a
    /// zero is one it never queued (see `failed`).
    pub synack: u32,
}
crate::pod!(RequestOffsets);

/// Whether a request socket freed with these fields was a handshake that failed: one a
/// listener queued (not a SYN cookie's: those have no listener), that answered it (a SYN-ACK
/// was sent), and that never became a connection (no child).
///
/// Without the SYN-ACK test, request sockets a listener made and freed at once would count:
/// a SYN it dropped (no route, a security module's veto, a full SYN queue without cookies),
/// and, since the kernel refuses duplicate request sockets (6.10, and stable kernels since),
/// the second of two copies of one SYN handled at once on two CPUs, whose connection goes on
/// through the first.
pub const fn failed(listener: u64, child: u64, synack_sent_us: u64) -> bool {
    listener != 0 && child == 0 && synack_sent_us != 0
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
        const LISTENER: u64 = 0xffff_8880_0000_1000;
        const SENT: u64 = 1_234_567;
        assert!(failed(LISTENER, 0, SENT));
        // It became a connection: the tracepoint counts that one.
        assert!(!failed(LISTENER, 0xffff_8880_0000_2000, SENT));
        // A SYN cookie's: no listener queued it, and no handshake was held.
        assert!(!failed(0, 0, SENT));
        // Never answered: a SYN dropped, or a duplicate of one whose handshake goes on.
        assert!(!failed(LISTENER, 0, 0));
    }

    #[test]
    fn a_failed_request_is_an_inbound_reset_that_no_gauge_held() {
        let s = failure();
        assert_eq!((s.leave, s.enter, s.event), (0, 0, EVENT_FAILED));
        assert_eq!(s.ending.reason, REASON_RESET);
        assert!(s.duration().is_none());
    }
}
