//! TCP state numbers as the kernel uses them (include/net/tcp_states.h).

pub const ESTABLISHED: u8 = 1;
pub const SYN_SENT: u8 = 2;
pub const SYN_RECV: u8 = 3;
pub const FIN_WAIT1: u8 = 4;
pub const FIN_WAIT2: u8 = 5;
pub const TIME_WAIT: u8 = 6;
pub const CLOSE: u8 = 7;
pub const CLOSE_WAIT: u8 = 8;
pub const LAST_ACK: u8 = 9;
pub const LISTEN: u8 = 10;
pub const CLOSING: u8 = 11;
pub const NEW_SYN_RECV: u8 = 12;

/// Size of a per-state array indexed by state number.
pub const NUM_STATES: usize = 16;

/// The states exported as `observer_tcp_connections{state=...}`, in a stable order.
pub const GAUGED: [u8; 8] = [
    ESTABLISHED,
    SYN_SENT,
    SYN_RECV,
    FIN_WAIT1,
    FIN_WAIT2,
    CLOSE_WAIT,
    LAST_ACK,
    CLOSING,
];

/// Whether a full socket in this state counts as a connection in the gauges. CLOSE, LISTEN and
/// TIME_WAIT do not: TIME_WAIT is a separate mini-socket that this tracepoint never reports.
pub const fn is_gauged(state: u8) -> bool {
    matches!(
        state,
        ESTABLISHED | SYN_SENT | SYN_RECV | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING
    )
}

/// Whether a socket in this state must have been ESTABLISHED before (the states of an open
/// connection and of its orderly shutdown).
pub const fn implies_established(state: u8) -> bool {
    matches!(
        state,
        ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING | TIME_WAIT
    )
}

/// Whether a socket in this state is still in its handshake.
pub const fn is_handshake(state: u8) -> bool {
    matches!(state, SYN_SENT | SYN_RECV | NEW_SYN_RECV)
}

/// The label value of a state, as in `ss` but lower case with underscores.
pub const fn name(state: u8) -> &'static str {
    match state {
        ESTABLISHED => "established",
        SYN_SENT => "syn_sent",
        SYN_RECV => "syn_recv",
        FIN_WAIT1 => "fin_wait1",
        FIN_WAIT2 => "fin_wait2",
        TIME_WAIT => "time_wait",
        CLOSE => "close",
        CLOSE_WAIT => "close_wait",
        LAST_ACK => "last_ack",
        LISTEN => "listen",
        CLOSING => "closing",
        NEW_SYN_RECV => "new_syn_recv",
        _ => "unknown",
    }
}
