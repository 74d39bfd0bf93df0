//! `--warn-connections`: the limit gauge, and one `limit` event per crossing of the established
//! count, with hysteresis.
use std::{
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use observer_tests::{
    net::{Mode, Server, hold, ss_established},
    observer::Observer,
    require_root,
};
use serde_json::Value;

const IN: &str = "inbound";

/// The `limit` events that arrive within `window`.
fn limit_events(rx: &Receiver<String>, window: Duration) -> Vec<Value> {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Ok(line) = rx.recv_timeout(left.min(Duration::from_millis(50))) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            if v["type"] == "limit" {
                out.push(v);
            }
        }
    }
    out
}

#[test]
fn crossing_the_limit_up_and_back_gives_one_event_each_way() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let (o, rx) = Observer::start_with_events(&[
        "--port",
        &port.to_string(),
        "--warn-connections",
        "10",
        "--events",
        "json",
    ]);
    let s = o.scrape();
    assert_eq!(
        s.conn("observer_tcp_connections_limit", IN, port),
        Some(10.0)
    );

    // Up to 9: under the limit, no event.
    let mut conns = hold(server.addrs[0], 9);
    o.settle("9 open", |s| s.established(IN, port) == Some(9.0));
    assert!(limit_events(&rx, Duration::from_millis(600)).is_empty());

    // The 10th reaches it: one event.
    conns.extend(hold(server.addrs[0], 1));
    let up = limit_events(&rx, Duration::from_millis(800));
    assert_eq!(up.len(), 1, "{up:#?}");
    assert_eq!(up[0]["over"], true);
    assert_eq!(up[0]["connections"], 10);
    assert_eq!(up[0]["limit"], 10);
    assert_eq!(up[0]["direction"], IN);
    assert_eq!(up[0]["port"], port);

    // Oscillating between 9 and 10, each held longer than observer's tick: no event (the way
    // back under is at 8).
    for _ in 0..4 {
        drop(conns.pop());
        o.settle("9", |s| s.established(IN, port) == Some(9.0));
        std::thread::sleep(Duration::from_millis(400));
        conns.extend(hold(server.addrs[0], 1));
        o.settle("10", |s| s.established(IN, port) == Some(10.0));
        std::thread::sleep(Duration::from_millis(400));
    }
    // Further up, still over: no event.
    conns.extend(hold(server.addrs[0], 5));
    o.settle("15", |s| s.established(IN, port) == Some(15.0));
    assert_eq!(ss_established(port), 15, "the oracle, ss");
    assert!(limit_events(&rx, Duration::from_millis(600)).is_empty());

    // All closed: back under once.
    conns.clear();
    o.settle("0", |s| s.established(IN, port) == Some(0.0));
    let down = limit_events(&rx, Duration::from_millis(800));
    assert_eq!(down.len(), 1, "{down:#?}");
    assert_eq!(down[0]["over"], false);
    assert!(down[0]["connections"].as_i64().unwrap() < 9, "{down:#?}");
    assert!(limit_events(&rx, Duration::from_millis(600)).is_empty());
}
