//! Which process an inbound connection's events name: the owner of its listening socket, and
//! only while every listener of the port is that one process's (SO_REUSEPORT, or separate IPv4
//! and IPv6 listeners, make the accepting process unknowable from the connection): `null`
//! otherwise. Every test server logs the client ports it accepted: the oracle.
use std::{collections::HashMap, sync::mpsc::Receiver, time::Duration};

use observer_tests::{events, observer::Observer, process::Helper, require_root};
use serde_json::Value;

/// The open events of inbound `port`, once `n` came.
fn opens(rx: &Receiver<String>, port: u16, n: usize) -> Vec<Value> {
    let of_port =
        |e: &Value| e["type"] == "open" && e["direction"] == "inbound" && e["port"] == port;
    let all = events::collect(
        rx,
        Duration::from_secs(20),
        Duration::from_millis(300),
        |v| v.iter().filter(|e| of_port(e)).count() >= n,
    );
    let opens: Vec<Value> = all.into_iter().filter(of_port).collect();
    assert_eq!(opens.len(), n, "open events of port {port}");
    opens
}

/// The client port of an event (`remote` is `ADDR:PORT`).
fn client_port(e: &Value) -> u16 {
    let remote = e["remote"].as_str().expect("remote");
    remote.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Checks every event names the process that accepted its connection, or none; returns how
/// many named one.
fn named_rightly(opens: &[Value], servers: &mut [&mut Helper]) -> usize {
    let mut acceptor: HashMap<u16, u32> = HashMap::new();
    for s in servers.iter_mut() {
        let pid = s.pid();
        for port in s.accepted() {
            acceptor.insert(port, pid);
        }
    }
    let mut named = 0;
    for e in opens {
        let by = acceptor.get(&client_port(e)).copied();
        assert!(by.is_some(), "no server accepted {e}");
        if !e["pid"].is_null() {
            assert_eq!(e["pid"].as_u64().map(|p| p as u32), by, "{e}");
            named += 1;
        }
    }
    named
}

fn reuseport_servers() -> (Vec<Helper>, u16) {
    let mut first = Helper::start();
    let port = first.listen_reuseport("127.0.0.1:0");
    let mut servers = vec![first];
    for _ in 0..2 {
        let mut h = Helper::start();
        h.listen_reuseport(&format!("127.0.0.1:{port}"));
        servers.push(h);
    }
    (servers, port)
}

/// Three processes share a port (SO_REUSEPORT), each accepting some of 300 connections. Listed
/// at start (the daemon), and seen listening by the program.
#[test]
fn so_reuseport_across_three_processes_names_no_wrong_process() {
    require_root();
    // Listening before observer starts: under --pid of one of them, and with no target.
    let (mut servers, port) = reuseport_servers();
    let target = servers[0].pid().to_string();
    for args in [&["--pid", &target][..], &[]] {
        let mut all = args.to_vec();
        all.extend(["--events", "json"]);
        let (o, rx) = Observer::start_with_events(&all);
        let mut client = Helper::start();
        assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 300), (300, 0));
        let opens = opens(&rx, port, 300);
        let mut refs: Vec<&mut Helper> = servers.iter_mut().collect();
        let named = named_rightly(&opens, &mut refs);
        assert_eq!(named, 0, "{args:?}: one owner named for three");
        drop(o);
    }
    // Listening after observer started: the program sees each listen().
    drop(servers);
    let (o, rx) = Observer::start_with_events(&["--events", "json"]);
    let (mut servers, port) = reuseport_servers();
    let mut client = Helper::start();
    assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 300), (300, 0));
    let opens = opens(&rx, port, 300);
    let mut refs: Vec<&mut Helper> = servers.iter_mut().collect();
    assert_eq!(named_rightly(&opens, &mut refs), 0);
    drop(o);
}

/// A port's IPv4 listener and IPv6 listener belong to two processes.
#[test]
fn split_ipv4_and_ipv6_owners_name_no_wrong_process() {
    require_root();
    let start = |v4: &mut Helper, v6: &mut Helper| {
        let port = v4.listen("127.0.0.1:0");
        v6.listen(&format!("[::1]:{port}"));
        port
    };
    // Listening before observer starts, then after.
    for listening_first in [true, false] {
        let (mut v4, mut v6) = (Helper::start(), Helper::start());
        let mut port = 0;
        if listening_first {
            port = start(&mut v4, &mut v6);
        }
        let (o, rx) = Observer::start_with_events(&["--events", "json"]);
        if !listening_first {
            port = start(&mut v4, &mut v6);
        }
        let mut client = Helper::start();
        assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 10), (10, 0));
        assert_eq!(client.connect(&format!("[::1]:{port}"), 10), (10, 0));
        let opens = opens(&rx, port, 20);
        assert_eq!(named_rightly(&opens, &mut [&mut v4, &mut v6]), 0);
        drop(o);
    }
}

/// One process's listener: its connections name it. When it stops listening and another
/// process listens on the port (a restarted server), they name the new one: with no target,
/// and under `--pid` of the old one (its port stays watched).
#[test]
fn a_restarted_server_is_named_not_the_old_one() {
    require_root();
    for under_pid in [false, true] {
        let mut old = Helper::start();
        let port = old.listen("127.0.0.1:0");
        let target = old.pid().to_string();
        let mut args = vec!["--events", "json"];
        if under_pid {
            args.extend(["--pid", &target]);
        }
        let (o, rx) = Observer::start_with_events(&args);
        let mut client = Helper::start();
        assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 5), (5, 0));
        let first = opens(&rx, port, 5);
        assert_eq!(
            named_rightly(&first, &mut [&mut old]),
            5,
            "one listener: known"
        );
        assert_eq!(old.unlisten(), 1);
        let mut new = Helper::start();
        new.listen(&format!("127.0.0.1:{port}"));
        assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 5), (5, 0));
        let second = opens(&rx, port, 5);
        assert_eq!(
            named_rightly(&second, &mut [&mut new]),
            5,
            "the new server, known (--pid: {under_pid})"
        );
        drop(o);
    }
}
