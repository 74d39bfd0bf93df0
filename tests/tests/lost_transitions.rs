//! The sweep: a connection whose final CLOSE the programs never saw is still counted closed, and
//! a live connection never is. This kernel delivers every transition, so the loss is made by
//! hand, with bpftool, as Linux 7.x makes it: the watched socket's entry is taken out of the
//! program's map while the connection closes, and put back once the socket is dead.
use std::{
    io::Write as _,
    net::{Shutdown, TcpListener, TcpStream},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use observer_tests::{
    bpftool::{map_entries, map_of, set_u32},
    net::hold,
    observer::Observer,
    require_root, wait_for,
};
use serde_json::Value;

/// A connection to `listener` whose birth and move to ESTABLISHED never reach observer's
/// counters (its port filter drops them meanwhile): (client, server).
fn connect_unseen(observer: &Observer, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let port = listener.local_addr().unwrap().port();
    let port_flags = map_of(observer.pid(), "PORT_FLAGS");
    let flags = set_u32(port_flags, u32::from(port), 0);
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    set_u32(port_flags, u32::from(port), flags);
    (client, server)
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

    let map = map_of(observer.pid(), "SOCKETS");
    let watched = map_entries(map);
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
        map_entries(map),
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
    assert!(map_entries(map).is_empty(), "the entry is gone");
    drop(server);
}

#[test]
fn where_runs_are_not_preemptible_a_connection_met_past_its_open_is_not_counted() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (observer, _rx) = Observer::start_with_env(
        &[("OBSERVER_PREEMPTIBLE", "0")],
        &["--port", &port.to_string(), "--events", "json"],
    );
    let (mut client, server) = connect_unseen(&observer, &listener);
    client.write_all(b"bye").unwrap();
    drop(client);
    drop(server);
    wait_for(Duration::from_secs(5), || {
        (observer_tests::net::ss_established(port) == 0).then_some(())
    })
    .expect("closed");
    std::thread::sleep(Duration::from_millis(300));
    let s = observer.scrape();
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", "inbound", port),
        Some(0.0),
        "{}",
        s.text
    );
    assert_eq!(
        s.conn("observer_tcp_connections_closed_total", "inbound", port),
        Some(0.0)
    );
    assert_eq!(
        s.value(
            "observer_kernel_errors_total",
            &[("reason", "late_open_counted")]
        ),
        Some(0.0)
    );
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
    assert_eq!(map_entries(map_of(observer.pid(), "SOCKETS")).len(), 20);
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
    // Late opens are counted where runs are preemptible (7.0 on), where opens get lost: this
    // kernel is told to act as one.
    let (observer, rx) = Observer::start_with_env(
        &[("OBSERVER_PREEMPTIBLE", "1")],
        &["--port", &port.to_string(), "--events", "json"],
    );
    let (mut client, server) = connect_unseen(&observer, &listener);
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

/// `STATS_SLOTS` keys as the kernel holds them: (port, direction, padding).
fn stats_key(port: u16, direction: u8) -> Vec<u8> {
    let p = port.to_le_bytes();
    vec![p[0], p[1], direction, 0]
}

#[test]
fn the_named_ports_have_their_counters_before_any_connection() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let remote = TcpListener::bind("127.0.0.1:0").unwrap();
    let remote_port = remote.local_addr().unwrap().port();
    drop(remote);
    let observer = Observer::start(&[
        "--port",
        &port.to_string(),
        "--remote-port",
        &remote_port.to_string(),
    ]);
    // Reserved by the daemon: no first connection has to ask the kernel program for a slot,
    // where two asking at once could find none free for an instant.
    let mut slots = map_entries(map_of(observer.pid(), "STATS_SLOTS"));
    slots.sort();
    let mut keys: Vec<Vec<u8>> = slots.iter().map(|(k, _)| k.clone()).collect();
    let mut want = vec![stats_key(port, 0), stats_key(remote_port, 1)];
    keys.sort();
    want.sort();
    assert_eq!(keys, want, "{slots:?}");
    let mut values: Vec<Vec<u8>> = slots.into_iter().map(|(_, v)| v).collect();
    values.dedup();
    assert_eq!(values.len(), 2, "two slots, each its own");
}

/// Where `state` is in a `SOCKETS` value (`observer_common::conn::Conn`: two u64, a u32, a u16,
/// a u8, then the state).
const CONN_STATE: usize = 23;
const TCP_CLOSE: u8 = 7;

#[test]
fn an_entry_whose_delete_was_refused_counts_nothing_more() {
    require_root();
    // Kernels before about 6.3 can refuse a delete (a bucket's lock held on the CPU): the
    // connection's close is counted, and its entry stays, in CLOSE. Made here by hand: after a
    // connection closes, its entry is put back in CLOSE, until a new watched socket comes to
    // the same address (the slab gives a freed socket's memory to the next one), which
    // replaces the entry without counting a second close.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let observer = Observer::start(&["--port", &port.to_string()]);
    let map = map_of(observer.pid(), "SOCKETS");
    let connect = |client: socket2::Socket| {
        client.connect(&addr.into()).unwrap();
        let client: TcpStream = client.into();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    };
    let new_socket =
        || socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let mut current = connect(new_socket());
    let mut closes = 0;
    let mut reused = false;
    for _ in 0..50 {
        let entries = map_entries(map);
        let (key, mut value) = entries
            .iter()
            .find(|(_, v)| v[CONN_STATE] != TCP_CLOSE)
            .cloned()
            .expect("the current connection's entry");
        // The next client's socket first: the server's next child is then the next socket made.
        let client = new_socket();
        drop(current);
        closes += 1;
        let gone = wait_for(Duration::from_secs(5), || {
            (!map_entries(map).iter().any(|(k, _)| *k == key)).then_some(())
        });
        assert!(gone.is_some(), "the closed connection's entry is deleted");
        value[CONN_STATE] = TCP_CLOSE;
        observer_tests::bpftool::put(map, &key, &value);
        current = connect(client);
        let now = map_entries(map);
        if now
            .iter()
            .any(|(k, v)| *k == key && v[CONN_STATE] != TCP_CLOSE)
        {
            reused = true;
            break;
        }
    }
    assert!(
        reused,
        "no new connection came to a freed socket's address in 50"
    );
    drop(current);
    closes += 1;
    let s = observer.settle("every real close, once", |s| {
        s.conn("observer_tcp_connections_closed_total", "inbound", port) == Some(closes as f64)
            && s.established("inbound", port) == Some(0.0)
    });
    assert_eq!(
        s.value(
            "observer_kernel_errors_total",
            &[("reason", "stale_socket_retired")]
        ),
        Some(0.0),
        "{}",
        s.text
    );
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", "inbound", port),
        Some(closes as f64)
    );
}
