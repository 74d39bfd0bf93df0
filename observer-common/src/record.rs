//! The record the program sends through the ring buffer for each kept transition. It carries
//! what the kernel knows about the connection, so that the daemon needs no per-connection state.

/// The record has a valid `duration_ns` (a close whose open was observed).
pub const RECORD_HAS_DURATION: u8 = 1;
/// The connection existed before observer attached.
pub const RECORD_PREEXISTING: u8 = 2;
/// The close of a connection whose socket's address already belongs to a new socket (its CLOSE
/// was never delivered; see `sweep`): the kernel no longer knows its addresses and ports, the
/// daemon takes them from the connection's open record.
pub const RECORD_ADDRESSES_GONE: u8 = 4;
/// A close whose socket was read at CLOSE: `bytes_*`, `srtt_us`, `retransmits` and `err` are
/// valid.
pub const RECORD_HAS_TCP: u8 = 8;
/// A close the kernel never delivered (found by the sweep, or at its address's reuse): how it
/// ended is known from `oldstate` alone (`ending::unseen`).
pub const RECORD_UNSEEN: u8 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Monotonic time of the transition (CLOCK_MONOTONIC, ns).
    pub ts_ns: u64,
    /// The socket's kernel address (identifies the connection while it lives).
    pub sock: u64,
    pub duration_ns: u64,
    /// Owner process; 0 when unknown.
    pub pid: u32,
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    /// The watched port (local for inbound, remote for outbound).
    pub port: u16,
    pub family: u16,
    pub oldstate: u8,
    pub newstate: u8,
    pub direction: u8,
    /// `conn::EVENT_*`.
    pub event: u8,
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Local and remote address; IPv4 fills the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
    /// Data bytes sent (each once, retransmissions left out) and received, with
    /// `RECORD_HAS_TCP`.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Smoothed round-trip time (µs) and retransmitted segments, with `RECORD_HAS_TCP`.
    pub srtt_us: u32,
    pub retransmits: u32,
    /// The socket's error (`sk_err`) at CLOSE, from which the daemon tells how it ended
    /// (`ending::at_close`). The kernel hands the raw value: the reasons it would work out are
    /// constants that differ per path, and older verifiers, tracking them into the record,
    /// could no longer prune those paths (5.10 never finished).
    pub err: i32,
    pub _pad2: u32,
}
crate::pod!(Record);

impl Record {
    pub const SIZE: usize = core::mem::size_of::<Record>();

    /// Every field zero: what a record is built from.
    pub const EMPTY: Record = Record {
        ts_ns: 0,
        sock: 0,
        duration_ns: 0,
        pid: 0,
        netns: 0,
        sport: 0,
        dport: 0,
        port: 0,
        family: 0,
        oldstate: 0,
        newstate: 0,
        direction: 0,
        event: 0,
        flags: 0,
        _pad: [0; 3],
        saddr: [0; 16],
        daddr: [0; 16],
        comm: [0; 16],
        bytes_sent: 0,
        bytes_received: 0,
        srtt_us: 0,
        retransmits: 0,
        err: 0,
        _pad2: 0,
    };

    /// Where its connection runs.
    pub fn ends(&self) -> Ends {
        Ends {
            netns: self.netns,
            family: self.family,
            sport: self.sport,
            dport: self.dport,
            _pad: [0; 6],
            saddr: self.saddr,
            daddr: self.daddr,
        }
    }

    /// Gives a record that came without them (`RECORD_ADDRESSES_GONE`) its connection's
    /// addresses, from the sweep or from the connection's open record.
    pub fn set_ends(&mut self, e: &Ends) {
        self.netns = e.netns;
        self.family = e.family;
        self.sport = e.sport;
        self.dport = e.dport;
        self.saddr = e.saddr;
        self.daddr = e.daddr;
        self.flags &= !RECORD_ADDRESSES_GONE;
    }
}

/// Where a connection runs: its network namespace, addresses and ports (IPv4 fills the first 4
/// bytes of an address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub netns: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: [u8; 6],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
crate::pod!(Ends);
