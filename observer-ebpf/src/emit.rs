//! Records for the daemon, through the ring buffer.
use crate::maps::{EVENTS, FLAGS, SOCK_OFFSETS, WAKEUP_BYTES, count, now};
use crate::sock::{Sock, read_kernel};
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use observer_common::conn::{
    Conn, EVENT_CLOSE, EVENT_NONE, FLAG_OPEN_SEEN, FLAG_PREEXISTING, Step,
};
use observer_common::filter::flags;
use observer_common::record::{
    Ends, RECORD_ADDRESSES_GONE, RECORD_HAS_DURATION, RECORD_HAS_TCP, RECORD_PREEXISTING, Record,
};
use observer_common::{counters, tcp};

#[inline(always)]
pub(crate) fn emit(tp: &Sock, sk: u64, conn: &Conn, step: &Step, netns: u32) {
    let (family, saddr, daddr) = tp.addrs();
    let mut record = Record {
        ts_ns: step.now_ns,
        sock: sk,
        duration_ns: step.duration_ns,
        pid: conn.pid,
        netns,
        sport: tp.sport,
        dport: tp.dport,
        port: conn.port,
        family,
        oldstate: tp.old,
        newstate: tp.new,
        direction: conn.direction,
        event: step.event,
        flags: record_flags(conn, step),
        reason: step.ending.reason,
        closed_by: step.ending.by,
        saddr,
        daddr,
        comm: conn.comm,
        ..Record::EMPTY
    };
    if step.event == EVENT_CLOSE && tp.new == tcp::CLOSE {
        carried(tp, sk, &mut record);
    }
    submit(&record);
}

/// What a closing connection carried, as `ss -ti` and tcplife show it, read from the socket at
/// its CLOSE: only for a record (each read costs a helper call).
#[inline(always)]
fn carried(tp: &Sock, sk: u64, r: &mut Record) {
    let o = SOCK_OFFSETS.load();
    let sent: u64 = read_kernel(sk + o.bytes_sent as u64);
    let retrans: u64 = read_kernel(sk + o.bytes_retrans as u64);
    let received: u64 = read_kernel(sk + o.bytes_received as u64);
    let srtt: u32 = read_kernel(sk + o.srtt_us as u64);
    // RCV_SHUTDOWN: the peer's FIN came, and took one sequence number of `bytes_received`.
    let fin = tp.field::<u8>(o.shutdown) & 1 != 0;
    r.bytes_sent = sent.saturating_sub(retrans);
    r.bytes_received = received.saturating_sub(fin as u64);
    r.srtt_us = srtt >> 3;
    r.retransmits = read_kernel(sk + o.total_retrans as u64);
    r.flags |= RECORD_HAS_TCP;
}

#[inline(always)]
pub(crate) fn record_flags(conn: &Conn, step: &Step) -> u8 {
    let mut rflags = 0;
    if step.timed {
        rflags |= RECORD_HAS_DURATION;
    }
    if conn.flags & FLAG_PREEXISTING != 0 && conn.flags & FLAG_OPEN_SEEN == 0 {
        rflags |= RECORD_PREEXISTING;
    }
    rflags
}

/// Sends a record to the daemon, or counts it dropped when the ring is full.
#[inline(always)]
pub(crate) fn submit(record: &Record) {
    let Some(mut entry) = EVENTS.reserve::<Record>(0) else {
        count(counters::RING_FULL);
        return;
    };
    entry.write(*record);
    let wakeup = if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup.into());
}

/// The close of a connection whose CLOSE the programs never saw, with the addresses the sweep
/// read from its socket, or none when its address already belongs to a new socket
/// (`RECORD_ADDRESSES_GONE`: the daemon takes them from the connection's open record).
#[inline(always)]
pub(crate) fn emit_unseen_close(sk: u64, conn: &Conn, step: &Step, ends: Option<&Ends>) {
    if step.event == EVENT_NONE || FLAGS.load() & flags::EMIT_EVENTS == 0 {
        return;
    }
    let mut record = Record {
        ts_ns: now(),
        sock: sk,
        duration_ns: step.duration_ns,
        pid: conn.pid,
        port: conn.port,
        oldstate: conn.state,
        newstate: tcp::CLOSE,
        direction: conn.direction,
        event: step.event,
        flags: record_flags(conn, step) | RECORD_ADDRESSES_GONE,
        reason: step.ending.reason,
        closed_by: step.ending.by,
        comm: conn.comm,
        ..Record::EMPTY
    };
    if let Some(e) = ends {
        record.set_ends(e);
    }
    submit(&record);
}
