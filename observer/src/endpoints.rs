//! The addresses of the connections opened while events stream, for the close records that come
//! without theirs: a connection whose CLOSE the kernel never delivered and whose socket's address
//! already belongs to a new socket when it is retired (`RECORD_ADDRESSES_GONE`).
use std::collections::HashMap;

use observer_common::{
    conn::{EVENT_CLOSE, EVENT_FAILED, EVENT_OPEN},
    record::{Ends, RECORD_ADDRESSES_GONE, Record},
};

/// The open connections' addresses, by socket address; never more entries than the kernel
/// tracks connections (a close record dropped in a full ring leaves its entry until the address
/// opens again).
pub struct Endpoints {
    open: HashMap<u64, Ends>,
    /// The most connections the kernel tracks at once (`--max-connections`).
    max: usize,
}

impl Endpoints {
    pub fn new(max_connections: u32) -> Endpoints {
        Endpoints {
            open: HashMap::new(),
            max: max_connections as usize,
        }
    }

    /// Gives a close record without addresses those of its connection's open record, and keeps
    /// or forgets what later records need. A close whose open was not seen (a connection from
    /// before observer) keeps its flag: its addresses are unknown.
    pub fn complete(&mut self, r: &mut Record) {
        match r.event {
            EVENT_OPEN if self.open.len() < self.max || self.open.contains_key(&r.sock) => {
                self.open.insert(r.sock, r.ends());
            }
            EVENT_CLOSE | EVENT_FAILED => {
                let ends = self.open.remove(&r.sock);
                if r.flags & RECORD_ADDRESSES_GONE != 0
                    && let Some(e) = ends
                {
                    r.set_ends(&e);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use observer_common::{DIR_INBOUND, tracepoint::AF_INET};

    use super::*;

    fn record(sock: u64, event: u8, sport: u16) -> Record {
        let mut saddr = [0; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        Record {
            ts_ns: 1,
            sock,
            duration_ns: 0,
            pid: 0,
            netns: 7,
            sport,
            dport: 40_000,
            port: 8080,
            family: AF_INET,
            oldstate: 1,
            newstate: 7,
            direction: DIR_INBOUND,
            event,
            flags: 0,
            saddr,
            daddr: saddr,
            ..Record::EMPTY
        }
    }

    fn gone(sock: u64) -> Record {
        Record {
            netns: 0,
            family: 0,
            sport: 0,
            dport: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            flags: RECORD_ADDRESSES_GONE,
            ..record(sock, EVENT_CLOSE, 0)
        }
    }

    #[test]
    fn a_close_without_addresses_gets_those_of_its_open() {
        let mut e = Endpoints::new(1_000);
        let open = record(1, EVENT_OPEN, 8080);
        e.complete(&mut open.clone());
        let mut close = gone(1);
        e.complete(&mut close);
        assert_eq!(close.flags & RECORD_ADDRESSES_GONE, 0);
        assert_eq!(
            (
                close.family,
                close.sport,
                close.dport,
                close.saddr,
                close.netns
            ),
            (AF_INET, 8080, 40_000, open.saddr, 7)
        );
        assert!(e.open.is_empty(), "forgotten at its close");
    }

    #[test]
    fn a_close_with_addresses_is_left_alone_and_forgets_its_open() {
        let mut e = Endpoints::new(1_000);
        e.complete(&mut record(1, EVENT_OPEN, 8080));
        let mut close = record(1, EVENT_CLOSE, 8080);
        let before = close;
        e.complete(&mut close);
        assert_eq!(close, before);
        assert!(e.open.is_empty());
    }

    #[test]
    fn a_close_whose_open_was_not_seen_keeps_its_flag() {
        let mut e = Endpoints::new(1_000);
        let mut close = gone(9);
        e.complete(&mut close);
        assert_ne!(close.flags & RECORD_ADDRESSES_GONE, 0);
    }
}
