//! The sweep: a connection whose final CLOSE the programs never saw is still counted closed, and
//! a live connection never is. This kernel delivers every transition, so the loss is made by
//! hand, with bpftool, as Linux 7.x makes it: the watched socket's entry is taken out of the
//! program's map while the connection closes, and put back once the socket is dead.
use std::{
    io::Write as _,
    net::{Shutdown, TcpListener, TcpStream},
    process::Command,
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use observer_tests::{
    net::hold,
    observer::{Observer, programs_of},
    require_root, wait_for,
};
use serde_json::Value;

fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

fn bpftool(args: &[String]) {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ID of the map called `name` of the observer running as `pid`.
fn map_of(pid: u32, name: &str) -> u64 {
    for prog in programs_of(pid) {
        let info = bpftool_json(&["prog", "show", "id", &prog.to_string()]);
        for id in info["map_ids"].as_array().into_iter().flatten() {
            let id = id.as_u64().unwrap();
            if bpftool_json(&["map", "show", "id", &id.to_string()])["name"] == name {
                return id;
            }
        }
    }
    panic!("observer {pid} has no {name} map");
}

fn sockets_map(pid: u32) -> u64 {
    map_of(pid, "SOCKETS")
}

/// Sets element `index` of the u32 array map `map`; returns what it held.
fn set_u32(map: u64, index: u32, value: u32) -> u32 {
    let bytes = |v: u32| v.to_le_bytes().map(|b| format!("0x{b:02x}")).to_vec();
    let id = map.to_string();
    let key = bytes(index);
    let mut lookup = vec!["map", "lookup", "id", &id, "key"];
    lookup.extend(key.iter().map(|s| s.as_str()));
    let old: Vec<u8> = bpftool_json(&lookup)["value"]
        .as_array()
        .expect("value bytes")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    let mut update: Vec<String> = vec!["map".into(), "update".into(), "id".into(), id.clone()];
    update.push("key".into());
    update.extend(key);
    update.push("value".into());
    update.extend(bytes(value));
    bpftool(&update);
    u32::from_le_bytes(old.try_into().expect("a u32"))
}

/// The map's entries as (key, value), each as bytes written `0xNN` for bpftool.
fn entries(map: u64) -> Vec<(Vec<String>, Vec<String>)> {
    let bytes = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("bytes")
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect()
    };
    bpftool_json(&["map", "dump", "id", &map.to_string()])
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
        .collect()
}

/// The first `n` JSON events, or those that came within 10 s.
fn json_events(rx: &Receiver<String>, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < end {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            out.push(serde_json::from_str(&line).expect("a JSON event"));
        }
    }
    out
}

#[test]
fn a_connection_whose_close_was_not_seen_is_closed_by_the_sweep() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (observer, rx) = Observer::start_with_events(&[
        "--port",
        &port.to_string(),
        "--events",
        "json",
        "--sweep-interval",
        "1s",
    ]);
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    observer.settle("the connection counted open", |s| {
        s.established("inbound", port) == Some(1.0)
    });

    let map = sockets_map(observer.pid());
    let watched = entries(map);
    assert_eq!(watched.len(), 1, "one watched socket: {watched:?}");

    // The port filter drops the port's transitions while it closes: none reaches the counters.
    let port_flags = map_of(observer.pid(), "PORT_FLAGS");
    let flags = set_u32(port_flags, u32::from(port), 0);
    assert_ne!(flags, 0, "the port is watched");
    client.write_all(b"bye").unwrap();
    client.shutdown(Shutdown::Both).unwrap();
    server.shutdown(Shutdown::Both).unwrap();
    drop(client);
    // The server keeps its socket open: its memory stays a socket, in CLOSE.
    let closed = wait_for(Duration::from_secs(5), || {
        (observer_tests::net::ss_established(port) == 0).then_some(())
    });
    assert!(closed.is_some(), "the connection closed");
    std::thread::sleep(Duration::from_millis(200));
    set_u32(port_flags, u32::from(port), flags);
    assert_eq!(
        entries(map),
        watched,
        "its entry, as a lost CLOSE leaves it"
    );

    let s = observer.settle("the dead connection retired by the sweep", |s| {
        s.established("inbound", port) == Some(0.0)
            && s.conn("observer_tcp_connections_closed_total", "inbound", port) == Some(1.0)
    });
    assert_eq!(
        s.value(
            "observer_kernel_errors_total",
            &[("reason", "stale_socket_retired")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", "inbound", port),
        Some(1.0)
    );
    assert_eq!(
        s.value(
            "observer_kernel_errors_total",
            &[("reason", "late_open_counted")]
        ),
        Some(0.0)
    );
    // Its close event, with its addresses read from the dead socket.
    let events = json_events(&rx, 2);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["open", "close"], "{events:?}");
    assert_eq!(
        events[1]["local"],
        format!("127.0.0.1:{port}"),
        "{events:?}"
    );
    assert!(entries(map).is_empty(), "the entry is gone");
    drop(server);
}

#[test]
fn live_connections_survive_every_sweep() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let observer = Observer::start(&["--port", &port.to_string(), "--sweep-interval", "1s"]);
    let accepted = std::thread::spawn(move || {
        (0..20)
            .map(|_| listener.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let clients = hold(addr, 20);
    let servers = accepted.join().unwrap();
    observer.settle("20 connections open", |s| {
        s.established("inbound", port) == Some(20.0)
    });
    // A sweep a second, with a second one to confirm whatever it found: five of each.
    std::thread::sleep(Duration::from_secs(5));
    let s = observer.scrape();
    assert_eq!(s.established("inbound", port), Some(20.0));
    assert_eq!(
        s.value(
            "observer_kernel_errors_total",
            &[("reason", "stale_socket_retired")]
        ),
        Some(0.0)
    );
    assert_eq!(entries(sockets_map(observer.pid())).len(), 20);
    drop((clients, servers));
    observer.settle("20 connections closed", |s| {
        s.established("inbound", port) == Some(0.0)
            && s.conn("observer_tcp_connections_closed_total", "inbound", port) == Some(20.0)
    });
}

#[test]
fn a_connection_whose_open_was_not_seen_is_counted_opened_when_first_met() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (observer, rx) =
        Observer::start_with_events(&["--port", &port.to_string(), "--events", "json"]);
    let port_flags = map_of(observer.pid(), "PORT_FLAGS");
    // Its birth and its move to ESTABLISHED never reach the counters.
    let flags = set_u32(port_flags, u32::from(port), 0);
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    set_u32(port_flags, u32::from(port), flags);
    let s = observer.scrape();
    assert_eq!(s.established("inbound", port), Some(0.0), "not seen yet");

    // Its next transition (the client's FIN: CLOSE_WAIT) is the first the program sees.
    client.write_all(b"bye").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    observer.settle("counted opened when first met", |s| {
        s.conn("observer_tcp_connections_opened_total", "inbound", port) == Some(1.0)
            && s.value(
                "observer_tcp_connections",
                &[
                    ("direction", "inbound"),
                    ("port", &port.to_string()),
                    ("state", "close_wait"),
                ],
            ) == Some(1.0)
    });
    drop(server);
    drop(client);
    let s = observer.settle("closed", |s| {
        s.conn("observer_tcp_connections_closed_total", "inbound", port) == Some(1.0)
    });
    assert_eq!(
        s.value(
            "observer_kernel_errors_total",
            &[("reason", "late_open_counted")]
        ),
        Some(1.0)
    );
    for (labels, v) in s.samples("observer_tcp_connections") {
        assert_eq!(v, 0.0, "gauge {labels:?}");
    }
    // Its open has no lifetime to give: the histogram counts only observed opens.
    assert_eq!(
        s.conn(
            "observer_tcp_connection_duration_seconds_count",
            "inbound",
            port
        ),
        Some(0.0)
    );
    let events = json_events(&rx, 2);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["open", "close"], "{events:?}");
    assert_eq!(events[0]["local"], format!("127.0.0.1:{port}"));
}
