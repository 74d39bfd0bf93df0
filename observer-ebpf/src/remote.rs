//! Per-client counts (`--by-remote`): the program's half of `observer_common::remote`.
use crate::maps::{
    BY_REMOTE_0, BY_REMOTE_1, REMOTE_MASKS, REMOTE_OTHER, REMOTES_OF, control, count,
};
use crate::sock::Sock;
use crate::track::slot_of;
use aya_ebpf::bindings::BPF_NOEXIST;
use observer_common::counters;
use observer_common::remote::{self, CONTROL_REMOTE_GEN, Counted, PLACE_OTHER, RemoteKey};
use observer_common::stats::{StatsKey, add};

/// Minus one, as the atomic add takes it.
const TAKE_BACK: u64 = u64::MAX;

#[inline(always)]
fn key_of(tp: &Sock, direction: u8, port: u16) -> RemoteKey {
    let (family, a, b) = tp.remote_words();
    remote::key(direction, port, family, a, b, &REMOTE_MASKS.load())
}

/// Adds `delta` to `key`'s count in `place`: map 0 or 1 (where `create` makes a missing entry
/// at 0 first), or `slot`'s overflow. False where there is no such count (a full map).
#[inline(always)]
fn add_at(place: u32, key: &RemoteKey, slot: u16, delta: u64, create: bool) -> bool {
    let p = if place == PLACE_OTHER {
        REMOTE_OTHER.get_ptr_mut(slot as u32)
    } else {
        let map = if place == 0 {
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

/// A connection entered ESTABLISHED: one more for its remote, in the active map.
#[inline(always)]
pub(crate) fn opened(tp: &Sock, sk: u64, direction: u8, port: u16, slot: u16) {
    let key = key_of(tp, direction, port);
    let mut place = control(CONTROL_REMOTE_GEN) & 1;
    if !add_at(place, &key, slot, 1, true) {
        count(counters::REMOTES_FULL);
        place = PLACE_OTHER;
        if !add_at(place, &key, slot, 1, false) {
            return;
        }
    }
    if REMOTES_OF.insert(sk, Counted { key, place }, 0).is_err() {
        // Not taken back later without its note: not counted now either.
        count(counters::REMOTES_FULL);
        add_at(place, &key, slot, TAKE_BACK, false);
    }
}

/// A connection left ESTABLISHED: its count taken back where it went. False when it had none.
#[inline(always)]
pub(crate) fn left(sk: u64, slot: u16) -> bool {
    // SAFETY: a plain read of a map value.
    let Some(c) = (unsafe { REMOTES_OF.get(sk) }).copied() else {
        return false;
    };
    let _ = REMOTES_OF.remove(sk);
    if !add_at(c.place, &c.key, slot, TAKE_BACK, false) {
        count(counters::REMOTE_LOST);
    }
    true
}

/// A connection the start-up snapshot counted established (the daemon holds that count) left
/// ESTABLISHED: minus one for its remote, in the active map.
#[inline(always)]
pub(crate) fn seed_left(tp: &Sock, direction: u8, port: u16) {
    let key = key_of(tp, direction, port);
    let place = control(CONTROL_REMOTE_GEN) & 1;
    if add_at(place, &key, 0, TAKE_BACK, true) {
        return;
    }
    count(counters::REMOTES_FULL);
    if let Some(slot) = slot_of(StatsKey::new(direction, port)) {
        add_at(PLACE_OTHER, &key, slot, TAKE_BACK, false);
    }
}
