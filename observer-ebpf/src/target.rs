//! Targets: who owns a watched port, and whether a listen() or connect() is a target's
//! (by process, or by the socket's cgroup and its ancestors).
use crate::maps::{
    CGROUP_OFFSETS, CGROUPS, LOCAL_PORTS, N_CGROUPS, NETNS_NOT_READ, PIDS, PORT_FLAGS, count,
    port_flags,
};
use crate::sock::{netns_of, read_kernel};
use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use observer_common::conn::Conn;
use observer_common::counters;
use observer_common::filter::{
    CGROUP_NONE, CGROUP_TAGGED, CgroupOffsets, LocalPortKey, Owner, PORT_FOLLOWED, PORT_LOCAL,
    PORT_LOCAL_NETNS, PortOwner, flags,
};
use observer_common::limits::MAX_CGROUPS;

/// A listen(): on a watched port, one more listener (which may make its owner unknown, see
/// `PortOwner`); elsewhere, claims the port when every listener counts, or when a target
/// process calls it.
#[inline(always)]
pub(crate) fn on_listen(cfg: u32, sk: u64, port: u16) -> Option<()> {
    let watched = port_flags(port) & PORT_LOCAL != 0;
    let claims =
        cfg & flags::ALL_LISTENERS != 0 || (cfg & flags::PROCESS_TARGETS != 0 && is_target(sk));
    if !watched && !claims {
        return None;
    }
    let key = LocalPortKey::new(netns_of(sk), port);
    let me = current_owner();
    if let Some(p) = LOCAL_PORTS.get_ptr_mut(key) {
        // SAFETY: the port's entry; listen()s of one port racing on two CPUs are not expected
        // (a lost update errs toward an unknown owner, see `listener_closed`).
        unsafe { &mut *p }.listen(&me);
        return Some(());
    }
    if !claims {
        return None;
    }
    let entry = PortOwner {
        owner: me,
        listeners: 1,
        kind: PORT_FOLLOWED,
    };
    if let Err(e) = LOCAL_PORTS.insert(key, entry, BPF_NOEXIST.into()) {
        // Another CPU's listen() on this port put it there first.
        match LOCAL_PORTS.get_ptr_mut(key) {
            // SAFETY: the port's entry, as above.
            Some(p) => unsafe { &mut *p }.listen(&me),
            None => {
                count(counters::update_failure(
                    e.into(),
                    counters::LOCAL_PORTS_FULL,
                ));
                return None;
            }
        }
    }
    let bits = if key.netns == 0 {
        PORT_LOCAL
    } else {
        PORT_LOCAL | PORT_LOCAL_NETNS
    };
    let p = PORT_FLAGS.get_ptr_mut(port as u32)?;
    // SAFETY: bits are only ever set, so racing writers agree.
    unsafe { *p |= bits };
    Some(())
}

/// A listener of a watched local port closed.
#[inline(always)]
pub(crate) fn on_listener_close(sk: u64, port: u16) -> Option<()> {
    if port_flags(port) & PORT_LOCAL == 0 {
        return None;
    }
    let p = LOCAL_PORTS.get_ptr_mut(LocalPortKey::new(netns_of(sk), port))?;
    // SAFETY: the port's entry.
    unsafe { &mut *p }.listener_closed();
    None
}

/// The owner of a watched local port. `netns` is the socket's namespace, read here when it is
/// needed and was not read yet: ports watched in every namespace (`--port`) need no read.
#[inline(always)]
pub(crate) fn local_owner(sk: u64, port: u16, port_flags: u32, netns: &mut u32) -> Option<Owner> {
    if port_flags & PORT_LOCAL_NETNS != 0 {
        if *netns == NETNS_NOT_READ {
            *netns = netns_of(sk);
        }
        // SAFETY: a plain read of a map value.
        if let Some(o) = unsafe { LOCAL_PORTS.get(LocalPortKey::new(*netns, port)) } {
            return Some(o.owner);
        }
    }
    // SAFETY: a plain read of a map value.
    let o = unsafe { LOCAL_PORTS.get(LocalPortKey::new(0, port)) }?;
    Some(o.owner)
}

#[inline(always)]
pub(crate) fn with_owner(mut conn: Conn, owner: &Owner) -> Conn {
    conn.pid = owner.pid;
    conn.comm = owner.comm;
    conn
}

#[inline(always)]
pub(crate) fn current_owner() -> Owner {
    Owner {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Whether a listen() or connect(), which run in the calling process, belongs to a target: the
/// process is a target, or the socket's cgroup is a target cgroup or lies below one.
#[inline(always)]
pub(crate) fn is_target(sk: u64) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a plain read of a map value.
    if unsafe { PIDS.get(tgid) }.is_some() {
        return true;
    }
    let n = N_CGROUPS.load();
    if n == 0 {
        return false;
    }
    let o = CGROUP_OFFSETS.load();
    if o.cgroup_kind == CGROUP_NONE {
        return false;
    }
    let word: u64 = read_kernel(sk + o.sk_cgroup as u64);
    // Before 5.15 a cgroup v1 net_prio/net_cls setting may hold this word instead (low bits set).
    if word == 0 || (o.cgroup_kind == CGROUP_TAGGED && word & 3 != 0) {
        count(counters::CGROUP_UNKNOWN);
        return false;
    }
    let level: i32 = read_kernel(word + o.level as u64);
    let mut i = 0;
    while i < MAX_CGROUPS {
        if i >= n {
            break;
        }
        if let Some(t) = CGROUPS.get(i)
            && t.level as i64 <= level as i64
            && ancestor_id(word, t.level, &o) == t.id
        {
            return true;
        }
        i += 1;
    }
    false
}

/// The id of cgroup `cgrp`'s ancestor at depth `level` (not deeper than the cgroup's own).
#[inline(always)]
pub(crate) fn ancestor_id(cgrp: u64, level: u32, o: &CgroupOffsets) -> u64 {
    // Masked so the verifier sees a bounded index; cgroup trees are far shallower.
    let at = cgrp + o.ancestors as u64 + 8 * (level & 0xff) as u64;
    if o.ancestors_are_pointers == 0 {
        return read_kernel(at);
    }
    let ancestor: u64 = read_kernel(at);
    let kn: u64 = read_kernel(ancestor + o.kn as u64);
    read_kernel(kn + o.kn_id as u64)
}
