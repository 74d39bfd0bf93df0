//! `--idle-after`: idle connections counted from the kernel's own figures, one `idle` event
//! each, checked against `ss -ti` (lastsnd, lastrcv) as the oracle.
use std::{
    collections::BTreeSet,
    io::Write as _,
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use observer_tests::{
    net::{Chatter, Mode, Server, hold, ss_idle},
    observer::{Observer, run_to_exit},
    require_root,
};
use serde_json::Value;

const IN: &str = "inbound";
const IDLE: &str = "observer_tcp_connections_idle";

/// The JSON events that arrive within `window`.
fn events_for(rx: &Receiver<String>, window: Duration) -> Vec<Value> {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Ok(line) = rx.recv_timeout(left.min(Duration::from_millis(50))) {
            out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")));
        }
    }
    out
}

fn idle_events(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "idle").collect()
}

#[test]
fn five_silent_connections_among_ten_busy_ones_are_idle_until_one_speaks() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let (o, rx) = Observer::start_with_events(&[
        "--port",
        &port.to_string(),
        "--idle-after",
        "2s",
        "--events",
        "json",
    ]);
    let busy = Chatter::start(hold(server.addrs[0], 10), Duration::from_millis(100));
    let mut silent = hold(server.addrs[0], 5);
    let silent_ends: BTreeSet<String> = silent
        .iter()
        .map(|c| c.local_addr().unwrap().to_string())
        .collect();

    // The threshold is 2 s; the scan runs every 0.5 s.
    let events = events_for(&rx, Duration::from_secs(3));
    let s = o.scrape();
    assert_eq!(s.conn(IDLE, IN, port), Some(5.0), "{}", o.stderr());
    assert_eq!(
        ss_idle(port, Duration::from_secs(2)),
        5,
        "the oracle, ss -ti"
    );
    assert_eq!(s.established(IN, port), Some(15.0));
    let idle = idle_events(&events);
    assert_eq!(idle.len(), 5, "{idle:#?}");
    let reported: BTreeSet<String> = idle
        .iter()
        .map(|e| e["remote"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reported, silent_ends, "the silent ones, each once");
    for e in &idle {
        assert_eq!(e["direction"], IN);
        assert_eq!(e["port"], port);
        assert_eq!(e["local"], server.addrs[0].to_string());
        let secs = e["idle_seconds"].as_f64().unwrap();
        assert!((2.0..=3.0).contains(&secs), "idle_seconds {secs}");
    }

    // One silent connection speaks: it leaves the gauge at the next scan, with no new event.
    silent[0].write_all(b"hello").unwrap();
    let start = Instant::now();
    let left = o.settle("one fewer idle", |s| s.conn(IDLE, IN, port) == Some(4.0));
    assert!(start.elapsed() < Duration::from_secs(1), "within one scan");
    assert_eq!(left.conn(IDLE, IN, port), Some(4.0));
    assert_eq!(
        ss_idle(port, Duration::from_secs(2)),
        4,
        "the oracle, ss -ti"
    );
    let later = events_for(&rx, Duration::from_millis(1000));
    assert!(idle_events(&later).is_empty(), "{later:#?}");
    drop(busy);
}

#[test]
fn promtool_accepts_a_scrape_with_idle_and_limit() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let o = Observer::start(&[
        "--port",
        &port.to_string(),
        "--remote-port",
        "5432",
        "--idle-after",
        "1s",
        "--warn-connections",
        "10",
    ]);
    let _c = hold(server.addrs[0], 3);
    let s = o.settle("3 idle", |s| s.conn(IDLE, IN, port) == Some(3.0));
    s.promtool_check();
    // Every series of the connections gauge has its idle and limit series.
    assert_eq!(s.conn(IDLE, "outbound", 5432), Some(0.0));
    for (dir, p) in [(IN, port), ("outbound", 5432)] {
        assert_eq!(s.conn("observer_tcp_connections_limit", dir, p), Some(10.0));
    }
    let wall = s.value("observer_idle_scan_duration_seconds", &[]).unwrap();
    let cpu = s.value("observer_idle_scan_cpu_seconds", &[]).unwrap();
    assert!(wall > 0.0 && cpu > 0.0 && wall < 1.0, "{wall} {cpu}");
}

#[test]
fn without_the_flags_nothing_of_this_is_exported() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let o = Observer::start(&["--port", &port.to_string()]);
    let _c = hold(server.addrs[0], 2);
    let s = o.settle("2 open", |s| s.established(IN, port) == Some(2.0));
    for name in [
        IDLE,
        "observer_tcp_connections_limit",
        "observer_idle_scan_duration_seconds",
        "observer_idle_scan_cpu_seconds",
    ] {
        assert!(!s.text.contains(name), "{name} in\n{}", s.text);
    }
    // No scan thread either.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", o.pid()))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .collect();
    assert!(
        !threads.iter().any(|t| t.trim() == "idle-scan"),
        "{threads:?}"
    );
}

#[test]
fn bad_values_are_usage_errors() {
    for args in [
        ["--idle-after", "0"],
        ["--idle-after", "soon"],
        ["--idle-after", "500ms"],
        ["--warn-connections", "0"],
        ["--warn-connections", "many"],
    ] {
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
}
