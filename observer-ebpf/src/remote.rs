//! Per-client counts (`--by-remote`): the program's half of `observer_common::remote`.
use crate::maps::{BY_REMOTE_0, BY_REMOTE_1, REMOTE_MASKS, REMOTE_OTHER, control, count};
use crate::sock::Sock;
use aya_ebpf::bindings::BPF_NOEXIST;
use observer_common::conn::{Conn, FLAG_SEEDED, Step};
use observer_common::remote::{
    self, CONTROL_REMOTE_GEN, PLACE_MAP0, PLACE_MAP1, PLACE_NONE, PLACE_OTHER, RemoteKey,
};
use observer_common::stats::add;
use observer_common::{counters, tcp};

/// Minus one, as the atomic add takes it.
const TAKE_BACK: u64 = u64::MAX;

/// The per-remote counts follow the established gauge: one more as a connection enters
/// ESTABLISHED, one less as it leaves.
#[inline(always)]
pub(crate) fn follow(tp: &Sock, conn: &mut Conn, step: &Step) {
    if step.enter == tcp::ESTABLISHED {
        opened(tp, conn);
    } else if step.leave == tcp::ESTABLISHED && !left(conn) && conn.flags & FLAG_SEEDED != 0 {
        // Counted by the daemon from the snapshot: its first transition leaves that count.
        seed_left(tp, conn);
    }
}

#[inline(always)]
fn key_of(tp: &Sock, conn: &Conn) -> RemoteKey {
    let (family, a, b) = tp.remote_words();
    remote::key(
        conn.direction,
        conn.port,
        family,
        a,
        b,
        &REMOTE_MASKS.load(),
    )
}

/// Adds `delta` to `key`'s count in `place`: a map (where `create` makes a missing entry at 0
/// first), or `slot`'s overflow. False where there is no such count (a full map).
#[inline(always)]
fn add_at(place: u8, key: &RemoteKey, slot: u16, delta: u64, create: bool) -> bool {
    let p = if place == PLACE_OTHER {
        REMOTE_OTHER.get_ptr_mut(slot as u32)
    } else {
        let map = if place == PLACE_MAP0 {
            &BY_REMOTE_0
        } else {
            &BY_REMOTE_1
        };
        match map.get_ptr_mut(key) {
            Some(p) => Some(p),
            None if create => {
                // Another CPU may create it first: the lookup then finds theirs.
                let _ = map.insert(key, 0, BPF_NOEXIST.into());
                map.get_ptr_mut(key)
            }
            None => None,
        }
    };
    match p {
        Some(p) => {
            // SAFETY: a map value; the add is atomic (every CPU counts into these).
            add(unsafe { &mut *p }, delta);
            true
        }
        None => false,
    }
}

/// The map that takes new counts.
#[inline(always)]
fn active() -> u8 {
    if control(CONTROL_REMOTE_GEN) == 0 {
        PLACE_MAP0
    } else {
        PLACE_MAP1
    }
}

/// One more for the connection's remote, in the active map (its overflow when full); the
/// connection remembers where.
#[inline(always)]
fn opened(tp: &Sock, conn: &mut Conn) {
    let key = key_of(tp, conn);
    let mut place = active();
    if !add_at(place, &key, conn.slot, 1, true) {
        count(counters::REMOTES_FULL);
        place = PLACE_OTHER;
        if !add_at(place, &key, conn.slot, 1, false) {
            return;
        }
    }
    conn.remote_place = place;
    conn.remote_family = key.family;
    conn.remote_addr = key.addr;
}

/// The connection's count taken back where it went. False when it had none.
#[inline(always)]
pub(crate) fn left(conn: &mut Conn) -> bool {
    let place = conn.remote_place;
    if place == PLACE_NONE {
        return false;
    }
    let key = RemoteKey {
        port: conn.port,
        direction: conn.direction,
        family: conn.remote_family,
        addr: conn.remote_addr,
    };
    if !add_at(place, &key, conn.slot, TAKE_BACK, false) {
        count(counters::REMOTE_LOST);
    }
    conn.remote_place = PLACE_NONE;
    true
}

/// A connection the start-up snapshot counted established (the daemon holds that count) left
/// ESTABLISHED: minus one for its remote, in the active map.
#[inline(always)]
fn seed_left(tp: &Sock, conn: &Conn) {
    let key = key_of(tp, conn);
    if !add_at(active(), &key, conn.slot, TAKE_BACK, true) {
        count(counters::REMOTES_FULL);
        add_at(PLACE_OTHER, &key, conn.slot, TAKE_BACK, false);
    }
}
