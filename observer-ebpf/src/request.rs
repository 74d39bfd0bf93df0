//! Inbound handshakes that fail while still request sockets (see `observer_common::request`):
//! counted, and recorded, when the kernel frees them.
use crate::emit::submit;
use crate::maps::{FLAGS, NETNS_NOT_READ, REQUEST_OFFSETS, now, port_flags, sock_offset};
use crate::sock::{addrs_at, netns_of, read_kernel};
use crate::target::{local_owner, with_owner};
use crate::track::{count_step, slot_of};
use observer_common::conn::first_sighting;
use observer_common::filter::{PORT_LOCAL, flags};
use observer_common::record::{Ends, Record};
use observer_common::request::{failed, failure};
use observer_common::stats::StatsKey;
use observer_common::{DIR_INBOUND, tcp};

/// A request socket (`req`, its address) is being freed.
#[inline(always)]
pub(crate) fn freed(req: u64) -> Option<()> {
    let o = REQUEST_OFFSETS.load();
    let listener: u64 = read_kernel(req + o.listener as u64);
    let child: u64 = read_kernel(req + o.child as u64);
    let synack: u64 = read_kernel(req + o.synack as u64);
    if !failed(listener, child, synack) {
        return None; // the common case: a handshake that became a connection
    }
    let port: u16 = read_kernel(req + sock_offset!(num) as u64);
    let port_flags = port_flags(port);
    if port_flags & PORT_LOCAL == 0 {
        return None;
    }
    let mut netns = NETNS_NOT_READ;
    let owner = local_owner(req, port, port_flags, &mut netns)?;
    let mut conn = with_owner(
        first_sighting(DIR_INBOUND, port, tcp::SYN_RECV, false),
        &owner,
    );
    conn.slot = slot_of(StatsKey::new(DIR_INBOUND, port))?;
    let step = failure();
    count_step(&conn, &step);
    if FLAGS.load() & flags::EMIT_EVENTS == 0 {
        return Some(());
    }
    if netns == NETNS_NOT_READ {
        netns = netns_of(req);
    }
    // A request socket begins with a `struct sock_common`: its addresses are where a socket's are.
    let (family, saddr, daddr) = addrs_at(req);
    let ends = Ends {
        netns,
        family,
        sport: port,
        dport: u16::from_be(read_kernel(req + sock_offset!(dport) as u64)),
        _pad: [0; 6],
        saddr,
        daddr,
    };
    let mut record = Record {
        ts_ns: now(),
        sock: req,
        pid: conn.pid,
        port,
        oldstate: tcp::SYN_RECV,
        newstate: tcp::CLOSE,
        direction: DIR_INBOUND,
        event: step.event,
        comm: conn.comm,
        ..Record::EMPTY
    };
    record.set_ends(&ends);
    submit(&record);
    Some(())
}
