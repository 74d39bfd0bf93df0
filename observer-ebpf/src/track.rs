//! The tracking of a connection: the filter, its first sighting, each transition, and
//! its counters.
use crate::emit::{emit, emit_unseen_close};
use crate::maps::{
    BASELINE, DONE, FLAGS, FREE_SLOTS, N_BUCKETS, NETNS_NOT_READ, PREEMPTIBLE, SEEN, SOCKETS,
    STATS, STATS_SLOTS, TARGET_REMOTES, baseline_active, bound, control, count, now, port_flags,
    snapshot_open, sock_offset,
};
use crate::scratch::transition_key;
use crate::sock::{Sock, netns_of};
use crate::target::{
    current_owner, is_target, local_owner, on_listen, on_listener_close, with_owner,
};
use aya_ebpf::bindings::BPF_NOEXIST;
use observer_common::conn::{Conn, EVENT_NONE, Step, birth_port, first_sighting, unseeded_sides};
use observer_common::ending;
use observer_common::filter::{PORT_LOCAL, PORT_REMOTE, flags};
use observer_common::record::Ends;
use observer_common::snapshot::CONTROL_ADOPT_UNSEEDED;
use observer_common::stats::{StatsKey, bucket_of};
use observer_common::tracepoint::IPPROTO_TCP;
use observer_common::{DIR_INBOUND, DIR_OUTBOUND, counters, tcp};

/// Which program runs the shared logic: the main one, or the backup, which can meet a transition
/// the main one already took (its note overwritten while its run was held).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    Main,
    Backup,
}

#[inline(always)]
pub(crate) fn handle(tp: &Sock, line: Line) -> Option<()> {
    if tp.protocol() != IPPROTO_TCP {
        return None;
    }
    let (old, new) = (tp.old, tp.new);
    if old == new {
        return None;
    }
    let tp = &tp.with_ports();
    let (sk, sport, dport) = (tp.sk, tp.sport, tp.dport);
    let cfg = FLAGS.load();
    if new == tcp::LISTEN {
        return on_listen(cfg, sk, sport);
    }
    if old == tcp::LISTEN && new != tcp::SYN_RECV {
        return on_listener_close(sk, sport);
    }
    let sport_flags = port_flags(sport);
    let local = sport_flags & PORT_LOCAL != 0;
    let remote = port_flags(dport) & PORT_REMOTE != 0;
    let connect = old == tcp::CLOSE && new == tcp::SYN_SENT;
    // A target's outbound connection: its connect(), or a later transition of one to a remote
    // port some target's connection was tracked to. Every seed of the snapshot passes too.
    let targets = cfg & flags::PROCESS_TARGETS != 0;
    let target_remote = targets && (connect || TARGET_REMOTES.get(dport as u32) == Some(&1));
    if !local && !remote && !target_remote {
        return None; // cannot be ours: the common case on a busy host
    }
    // A birth: a new inbound connection (the child socket), or connect().
    let birth = old == tcp::LISTEN || connect;
    if let Some(p) = SOCKETS.get_ptr_mut(sk) {
        // SAFETY: transitions of one socket are serialised by the socket's lock.
        let conn = unsafe { &mut *p };
        if !birth {
            return advance(tp, sk, conn, new, line);
        }
        // This birth, handled already: by the main program, where the backup could not find its
        // note (from 7.0 a preempted run lets other tasks' transitions come between the two).
        if conn.took_birth(new, birth_port(old, sport, dport)) {
            return None;
        }
        // The address was freed and reused without a CLOSE that we saw: retire the old entry,
        // once: its removal claims it (the reaping iterator may be retiring it too). An entry
        // already CLOSE was counted closed; only its delete was refused (`MAP_BUSY`).
        let stale = *conn;
        if SOCKETS.remove(sk).is_ok() && stale.state != tcp::CLOSE {
            close_unseen(sk, &stale, &stale.retire(), None);
        }
    }
    if old == tcp::LISTEN {
        if !local {
            return None;
        }
        let mut netns = NETNS_NOT_READ;
        let owner = local_owner(sk, sport, sport_flags, &mut netns)?;
        let conn = with_owner(first_sighting(DIR_INBOUND, sport, old, false), &owner);
        return track_new(tp, sk, conn, new, netns, true, false);
    }
    if birth {
        // connect() runs in the connecting process: it is the owner for sure.
        if !remote {
            if !(targets && is_target(sk)) {
                return None;
            }
            if let Some(p) = TARGET_REMOTES.get_ptr_mut(dport as u32) {
                // SAFETY: an element of the map; every writer writes 1.
                unsafe { core::ptr::write_volatile(p, 1) };
            }
        }
        let owner = current_owner();
        let conn = with_owner(first_sighting(DIR_OUTBOUND, dport, old, false), &owner);
        return track_new(tp, sk, conn, new, NETNS_NOT_READ, true, false);
    }
    adopt(tp, sk, old, new, sport_flags, remote, line)
}

/// First sighting of a socket that existed before observer: counted by the start-up snapshot if
/// the kernel holds its seed, otherwise from its new state on.
#[inline(always)]
pub(crate) fn adopt(
    tp: &Sock,
    sk: u64,
    old: u8,
    new: u8,
    sport_flags: u32,
    remote: bool,
    line: Line,
) -> Option<()> {
    let local = sport_flags & PORT_LOCAL != 0;
    let adopt_established = snapshot_open() || control(CONTROL_ADOPT_UNSEEDED) != 0;
    let child = tp.field::<u32>(sock_offset!(max_ack_backlog)) != 0;
    let mut sides = unseeded_sides(old, local, remote, adopt_established, child);
    // Only where runs are preemptible does a connection lose its open to held programs. Elsewhere
    // an unknown socket met past ESTABLISHED stays what it was before late opens: not counted
    // (6.12 counted one connection twice with them, 2 runs in 8 of the timer test, no transition
    // lost: a path not found yet).
    if sides.late && PREEMPTIBLE.load() == 0 {
        sides.inbound = false;
        sides.outbound = false;
    }
    // A CLOSE with no entry, met by the backup, may be one the main program took already (the
    // entry it removed; its note lost between the two, see `DONE`), not a connection whose every
    // earlier step was lost: counting it late would count that connection twice. Where runs
    // are not preemptible late opens are not counted at all (above).
    if line == Line::Backup && new == tcp::CLOSE && sides.late && PREEMPTIBLE.load() != 0 {
        // SAFETY: a plain read of a map value.
        if unsafe { DONE.get(transition_key(sk, old, new)) }.is_some() {
            sides.inbound = false;
            sides.outbound = false;
        }
    }
    let seeded = baseline_active();
    if !seeded && !sides.inbound && !sides.outbound {
        return None;
    }
    let mut netns = netns_of(sk);
    let key = tp.tuple(netns);
    // SAFETY: a plain read of a map value.
    if seeded && let Some(seed) = unsafe { BASELINE.get(key) } {
        let seed = *seed;
        let _ = BASELINE.remove(key);
        let conn = with_owner(
            first_sighting(seed.direction, seed.port, old, true),
            &seed.owner,
        );
        return track_new(tp, sk, conn, new, netns, false, false);
    }
    let sport = key.sport;
    let inbound = if sides.inbound {
        local_owner(sk, sport, sport_flags, &mut netns)
    } else {
        None
    };
    let conn = if let Some(owner) = inbound {
        with_owner(first_sighting(DIR_INBOUND, sport, old, false), &owner)
    } else if sides.outbound {
        first_sighting(DIR_OUTBOUND, key.dport, old, false)
    } else {
        return None;
    };
    // A connection met first at its CLOSE ends here: the backup, should it meet this CLOSE
    // without its note, must know it was taken (see `DONE`).
    if line == Line::Main && new == tcp::CLOSE && PREEMPTIBLE.load() != 0 {
        let _ = DONE.insert(transition_key(sk, old, new), 0, 0);
    }
    track_new(tp, sk, conn, new, netns, true, sides.late)
}

#[inline(always)]
pub(crate) fn track_new(
    tp: &Sock,
    sk: u64,
    mut conn: Conn,
    new: u8,
    netns: u32,
    mark_seen: bool,
    late: bool,
) -> Option<()> {
    conn.slot = slot_of(StatsKey::new(conn.direction, conn.port))?;
    // A connection whose open was lost is counted opened first (see `unseeded_sides`).
    let open = if late {
        conn.open_late(now())
    } else {
        Step::default()
    };
    let step = conn.advance(new, now);
    if !step.ended
        && let Err(e) = SOCKETS.insert(sk, conn, BPF_NOEXIST.into())
    {
        count(counters::update_failure(e.into(), counters::SOCKETS_FULL));
        return None; // untracked: counting its entry now would leave the gauge stuck
    }
    if late {
        count(counters::LATE_OPENS);
        finish(tp, sk, &conn, &open, netns, mark_seen);
    }
    finish(tp, sk, &conn, &step, netns, mark_seen)
}

#[inline(always)]
pub(crate) fn advance(tp: &Sock, sk: u64, conn: &mut Conn, new: u8, line: Line) -> Option<()> {
    let step = conn.advance(new, now);
    let conn = *conn;
    if step.ended {
        // Refused only with the bucket's lock held on this CPU: the entry, CLOSE now, stays
        // until its address is reused, and counts nothing more (see `handle`, the sweep).
        if SOCKETS
            .remove(sk)
            .is_err_and(|e| i64::from(e) == counters::EBUSY)
        {
            count(counters::MAP_BUSY);
        }
        if line == Line::Main && PREEMPTIBLE.load() != 0 {
            let _ = DONE.insert(transition_key(sk, tp.old, new), 0, 0);
        }
    }
    finish(tp, sk, &conn, &step, NETNS_NOT_READ, true)
}

#[inline(always)]
pub(crate) fn finish(
    tp: &Sock,
    sk: u64,
    conn: &Conn,
    step: &Step,
    netns: u32,
    mark_seen: bool,
) -> Option<()> {
    let seen = mark_seen && snapshot_open();
    let emits = step.event != EVENT_NONE && FLAGS.load() & flags::EMIT_EVENTS != 0;
    // The namespace takes two reads from the socket: only when the snapshot or a record uses it.
    let netns = if !(seen || emits) {
        0
    } else if netns == NETNS_NOT_READ {
        netns_of(sk)
    } else {
        netns
    };
    if seen && let Err(e) = SEEN.insert(tp.tuple(netns), 0, 0) {
        count(counters::update_failure(e.into(), counters::SEEN_FULL));
    }
    // At CLOSE, how the connection ended: the socket's error is set by then (see `ending`).
    let mut step = *step;
    if step.ended && tp.new == tcp::CLOSE {
        let err: i32 = tp.field(sock_offset!(err));
        step.ending = ending::at_close(step.event, conn.direction, tp.old, err);
    }
    count_step(conn, &step);
    // Records carry what a person is shown: opens and closes, not every step between them.
    if emits {
        emit(tp, sk, conn, &step, netns);
    }
    Some(())
}

/// Counts, once, the close of an entry whose CLOSE the programs never saw (the caller removed
/// it from the map): `step` is `Conn::retire` at its address's reuse, `Conn::lost_close` when the
/// sweep found its socket dead (with the addresses it read there, `ends`). Its record follows.
#[inline(always)]
pub(crate) fn close_unseen(sk: u64, conn: &Conn, step: &Step, ends: Option<&Ends>) {
    let step = Step {
        ending: ending::unseen(step.event, conn.state),
        ..*step
    };
    count_step(conn, &step);
    count(counters::STALE_SOCKETS);
    emit_unseen_close(sk, conn, &step, ends);
}

#[inline(always)]
pub(crate) fn count_step(conn: &Conn, step: &Step) {
    if let Some(stats) = STATS.get_ptr_mut(conn.slot as u32) {
        // SAFETY: this CPU's share of the counters; updates are atomic adds (a nested run).
        unsafe { &mut *stats }.apply(step, |d| bucket_of(d, N_BUCKETS.load() as usize, bound));
    }
}

/// The counters' slot of a (direction, port) pair, handed out on its first connection.
#[inline(always)]
pub(crate) fn slot_of(key: StatsKey) -> Option<u16> {
    // SAFETY: plain reads of map values.
    if let Some(slot) = unsafe { STATS_SLOTS.get(key) } {
        return Some(*slot as u16);
    }
    let mut failure = counters::PORTS_FULL;
    if let Ok(Some(slot)) = FREE_SLOTS.pop() {
        match STATS_SLOTS.insert(key, slot, BPF_NOEXIST.into()) {
            Ok(()) => return Some(slot as u16),
            Err(e) => failure = counters::update_failure(e.into(), failure),
        }
        // Another CPU gave the pair a slot first: this one goes back.
        let _ = FREE_SLOTS.push(slot, 0);
    }
    // SAFETY: plain reads of map values.
    match unsafe { STATS_SLOTS.get(key) } {
        Some(slot) => Some(*slot as u16),
        None => {
            count(failure);
            None
        }
    }
}
