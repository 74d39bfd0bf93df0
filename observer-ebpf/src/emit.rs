//! Records for the daemon, through the ring buffer.
use crate::maps::{EVENTS, FLAGS, WAKEUP_BYTES, count, now, sock_offset};
use crate::sock::Sock;
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::generated::bpf_skc_to_tcp_sock;
use observer_common::conn::{
    Conn, EVENT_CLOSE, EVENT_NONE, FLAG_OPEN_SEEN, FLAG_PREEXISTING, Step,
};
use observer_common::filter::flags;
use observer_common::record::{
    Ends, RECORD_ADDRESSES_GONE, RECORD_HAS_DURATION, RECORD_HAS_TCP, RECORD_PREEXISTING,
    RECORD_UNSEEN, Record,
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
        saddr,
        daddr,
        comm: conn.comm,
        ..Record::EMPTY
    };
    if tp.new == tcp::CLOSE {
        record.err = tp.field(sock_offset!(err));
        if step.event == EVENT_CLOSE {
            carried(tp, &mut record);
        }
    }
    submit(&record);
}

/// What a closing connection carried, as `ss -ti` and tcplife show it, read from the socket at
/// its CLOSE: only for a record. `bpf_skc_to_tcp_sock` (5.9 on) gives the socket typed as
/// `struct tcp_sock`, whose fields are then plain loads the verifier checks against the type:
/// one branch (null), where a read helper per field made five, and the paths they multiply
/// took 5.10's verifier minutes under qemu.
#[inline(always)]
fn carried(tp: &Sock, r: &mut Record) {
    // SAFETY: the tracepoint's own socket pointer; the helper returns it as a tcp_sock, or null.
    let t = unsafe { bpf_skc_to_tcp_sock(tp.ptr as *mut core::ffi::c_void) } as *const u8;
    if t.is_null() {
        return;
    }
    // SAFETY: loads through a pointer the verifier knows as a tcp_sock, at offsets of its
    // fields from the kernel's BTF (read-only data: constants to the verifier).
    let field = |off: u32| unsafe { t.add(off as usize) };
    // SAFETY: as above.
    let (sent, retrans, received, srtt, segs) = unsafe {
        (
            core::ptr::read_volatile(field(sock_offset!(bytes_sent)) as *const u64),
            core::ptr::read_volatile(field(sock_offset!(bytes_retrans)) as *const u64),
            core::ptr::read_volatile(field(sock_offset!(bytes_received)) as *const u64),
            core::ptr::read_volatile(field(sock_offset!(srtt_us)) as *const u32),
            core::ptr::read_volatile(field(sock_offset!(total_retrans)) as *const u32),
        )
    };
    // Retransmitted bytes are in `bytes_sent` twice; RCV_SHUTDOWN: the peer's FIN came, and
    // took one sequence number of `bytes_received`. Neither can exceed what it is taken from.
    r.bytes_sent = sent.wrapping_sub(retrans);
    r.bytes_received = received.wrapping_sub((tp.field::<u8>(sock_offset!(shutdown)) & 1) as u64);
    r.srtt_us = srtt >> 3;
    r.retransmits = segs;
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
        flags: record_flags(conn, step) | RECORD_ADDRESSES_GONE | RECORD_UNSEEN,
        comm: conn.comm,
        ..Record::EMPTY
    };
    if let Some(e) = ends {
        record.set_ends(e);
    }
    submit(&record);
}
