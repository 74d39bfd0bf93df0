//! observer's kernel memory: the maps it holds, each sized at start to what is watched and asked
//! for (`observer/src/sizing.rs`). Read as a tool would: the `memlock:` of each map fd in
//! `/proc/PID/fdinfo`, what the kernel charges for it (to RLIMIT_MEMLOCK before 5.11, to the
//! memory cgroup from 5.11).
use std::collections::BTreeMap;

use observer_tests::{
    bpftool,
    net::{Mode, Server, hold},
    observer::{Observer, map_fds},
    process::Helper,
    require_root,
};

/// Each of a process's BPF maps: name -> (max entries, bytes charged).
fn maps_of(pid: u32) -> BTreeMap<String, (u64, u64)> {
    map_fds(pid)
        .into_iter()
        .map(|m| (bpftool::map_name(m.id), (m.max_entries, m.memlock)))
        .collect()
}

fn total(maps: &BTreeMap<String, (u64, u64)>) -> u64 {
    maps.values().map(|(_, b)| b).sum()
}

const MIB: u64 = 1 << 20;

#[test]
fn watching_one_port_holds_at_most_16_mib() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let o = Observer::start(&["--port", &server.port().to_string()]);
    let maps = maps_of(o.pid());
    // Every map the programs use is held by an fd (so that the sum is the whole cost).
    for name in [
        "SOCKETS",
        "STATS",
        "BASELINE",
        "SEEN",
        "FREE_SLOTS",
        "DOOMED",
        "EVENTS",
    ] {
        assert!(maps.contains_key(name), "{name} not among {maps:?}");
    }
    let bytes = total(&maps);
    assert!(bytes <= 16 * MIB, "{} MiB: {maps:#?}", bytes / MIB);
    // Sized to what is watched: one port's counters, no process targets.
    assert_eq!(maps["STATS"].0, 1);
    assert_eq!(maps["PIDS"].0, 1);
    assert_eq!(maps["TARGET_REMOTES"].0, 1);
}

#[test]
fn memory_follows_what_is_watched_and_asked() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port().to_string();
    // Asked for a million connections: the per-socket map is that big.
    let o = Observer::start(&["--port", &port, "--max-connections", "1000000"]);
    let maps = maps_of(o.pid());
    assert_eq!(maps["SOCKETS"].0, 1_000_000);
    assert!(total(&maps) > 100 * MIB, "{maps:#?}");
    drop(o);

    // 3,000 connections open at start: the snapshot's map has room for them all, and they are
    // counted from the first scrape.
    let conns = hold(server.addrs[0], 3_000);
    let o = Observer::start(&["--port", &port]);
    let s = o.scrape();
    assert_eq!(s.established("inbound", server.port()), Some(3_000.0));
    let maps = maps_of(o.pid());
    assert!(maps["BASELINE"].0 >= 3_000, "{maps:#?}");
    assert!(total(&maps) <= 16 * MIB, "{maps:#?}");
    drop(o);
    drop(conns);

    // A process target: its filter and the remote ports its connections go to.
    let target = Helper::start();
    let o = Observer::start(&["--pid", &target.pid().to_string(), "--max-ports", "16"]);
    let maps = maps_of(o.pid());
    assert_eq!(maps["PIDS"].0, 4_096);
    assert_eq!(maps["TARGET_REMOTES"].0, 65_536);
    assert_eq!(maps["STATS"].0, 16);
}
