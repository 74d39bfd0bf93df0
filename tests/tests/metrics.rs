//! Prometheus metrics, end to end: exact counts from the first scrape, under churn, with a
//! stalled event reader, and through a real Prometheus server.
use std::time::Duration;

use observer_tests::{
    net::{Mode, Server, churn, connect_from, hold, ss_established, ss_sockets_from},
    observer::{Observer, Stdout, loaded_programs, run_to_exit},
    prometheus::Prometheus,
    require_root,
    scrape::Scrape,
    wait_for,
};

const IN: &str = "inbound";

#[test]
fn attaches_to_a_running_server_and_is_right_from_the_first_scrape() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    const K: usize = 100;
    let conns = hold(server.addrs[0], K);
    wait_for(Duration::from_secs(10), || {
        (ss_established(port) == K).then_some(())
    })
    .expect("the server accepted every connection");

    let o = Observer::start(&["--port", &port.to_string()]);
    let first = o.scrape();
    assert_eq!(first.established(IN, port), Some(K as f64), "first scrape");
    assert_eq!(
        first.conn("observer_tcp_connections_opened_total", IN, port),
        Some(0.0)
    );
    assert_eq!(ss_established(port), K, "oracle: ss agrees");

    drop(conns);
    let s = o.settle("all closed", |s| {
        s.conn("observer_tcp_connections_closed_total", IN, port) == Some(K as f64)
    });
    assert_eq!(s.established(IN, port), Some(0.0));
    for state in [
        "close_wait",
        "last_ack",
        "fin_wait1",
        "fin_wait2",
        "closing",
        "syn_recv",
    ] {
        let v = s.value(
            "observer_tcp_connections",
            &[("port", &port.to_string()), ("state", state)],
        );
        assert_eq!(v, Some(0.0), "{state}");
    }
    // Their opening was not observed: no lifetimes, no opens.
    assert_eq!(
        s.conn("observer_tcp_connection_duration_seconds_count", IN, port),
        Some(0.0)
    );
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", IN, port),
        Some(0.0)
    );
    assert_eq!(o.terminate().code(), Some(0));
}

#[test]
fn a_connection_made_from_the_watched_port_number_is_not_inbound() {
    require_root();
    // The server listens on 127.0.0.1:P only, so a client on 127.0.0.3 may use P as its own
    // port (an ephemeral port can land there too) to connect elsewhere: an outbound connection.
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let elsewhere = Server::start(&["127.0.0.1"], Mode::Hold);
    let o = Observer::start(&["--port", &port.to_string()]);

    let local = format!("127.0.0.3:{port}").parse().unwrap();
    let outbound = connect_from(local, elsewhere.addrs[0]);
    let inbound = hold(server.addrs[0], 1);
    let s = o.settle("the inbound connection open", |s| {
        s.established(IN, port) == Some(1.0)
    });
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", IN, port),
        Some(1.0),
        "only the connection to the server is inbound on {port}"
    );

    // Close the outbound one first, and wait until the kernel is done with it (TIME_WAIT is
    // not a state of the full socket): its end must not count either.
    drop(outbound);
    wait_for(Duration::from_secs(10), || {
        (ss_sockets_from(local) == 0).then_some(())
    })
    .expect("the outbound connection closed");
    drop(inbound);
    let s = o.settle("the inbound connection closed", |s| {
        s.conn("observer_tcp_connections_closed_total", IN, port) == Some(1.0)
    });
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", IN, port),
        Some(1.0)
    );
    for (labels, v) in s.samples("observer_tcp_connections") {
        assert_eq!(v, 0.0, "gauge {labels:?}");
    }
    // Everything settled: a late count of the outbound connection would show now.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        o.scrape()
            .conn("observer_tcp_connections_closed_total", IN, port),
        Some(1.0)
    );
    assert_eq!(o.terminate().code(), Some(0));
}

/// `n` short connections at full speed; asserts that each was opened, closed and timed exactly
/// once and that no connection is left established.
fn churn_exactly(o: &Observer, server: &Server, n: usize) -> Scrape {
    let port = server.port();
    churn(server.addrs[0], n, 4);
    let s = o.settle(&format!("{n} closed"), |s| {
        s.conn("observer_tcp_connections_closed_total", IN, port) == Some(n as f64)
    });
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", IN, port),
        Some(n as f64)
    );
    assert_eq!(
        s.conn("observer_tcp_connection_duration_seconds_count", IN, port),
        Some(n as f64)
    );
    assert_eq!(s.established(IN, port), Some(0.0));
    s
}

#[test]
fn churn_of_20000_connections_is_counted_exactly() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::CloseFirst);
    let port = server.port();
    let o = Observer::start(&["--port", &port.to_string()]);
    let before = o.scrape();
    assert_eq!(before.established(IN, port), Some(0.0));

    const N: usize = 20_000;
    let s = churn_exactly(&o, &server, N);
    assert_eq!(
        s.conn("observer_tcp_connections_failed_total", IN, port),
        Some(0.0)
    );
    for (labels, v) in s.samples("observer_tcp_connections") {
        assert!(v >= 0.0, "negative gauge {labels:?} = {v}");
    }
    let inf = s.value(
        "observer_tcp_connection_duration_seconds_bucket",
        &[("port", &port.to_string()), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(N as f64));
    assert_eq!(
        s.value(
            "observer_kernel_errors_total",
            &[("reason", "sockets_map_full")]
        ),
        Some(0.0)
    );
    assert_eq!(o.terminate().code(), Some(0));
}

#[test]
fn a_stalled_event_reader_loses_events_but_never_counts() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::CloseFirst);
    let port = server.port();
    // Events go to a pipe nobody reads, through the smallest ring.
    let (o, _) = Observer::spawn(
        &[
            "--port",
            &port.to_string(),
            "--events",
            "json",
            "--ring-kib",
            "4",
        ],
        Stdout::Stuck,
    );
    let s = churn_exactly(&o, &server, 20_000);
    let dropped = s.value("observer_events_dropped_total", &[]).unwrap();
    assert!(
        dropped > 0.0,
        "the ring overflowed, and that is counted: {dropped}"
    );
    drop(o);
}

#[test]
fn promtool_accepts_a_real_scrape() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let o = Observer::start(&["--port", &port.to_string(), "--remote-port", "5432"]);
    let _c = hold(server.addrs[0], 3);
    let s = o.settle("3 open", |s| s.established(IN, port) == Some(3.0));
    s.promtool_check();
    // The other families are there too.
    assert_eq!(
        s.value(
            "observer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(
        s.value("process_resident_memory_bytes", &[]).is_some(),
        "process collector"
    );
    assert_eq!(
        s.established("outbound", 5432),
        Some(0.0),
        "a watched port shows up at 0"
    );
}

#[test]
fn a_real_prometheus_reads_37_established_connections() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let o = Observer::start(&["--port", &port.to_string()]);
    let _c = hold(server.addrs[0], 37);
    let prometheus = Prometheus::start(&format!(
        "  - job_name: observer\n    static_configs:\n      - targets: ['{}']\n",
        o.metrics.unwrap()
    ));
    let seen = prometheus.settle(
        &format!(r#"observer_tcp_connections{{state="established",port="{port}"}}"#),
        "37",
    );
    assert_eq!(seen, Ok(()), "Prometheus's view of observer");
}

#[test]
fn a_bad_or_busy_metrics_address_is_one_clear_error() {
    require_root();
    let (code, err) = run_to_exit(&["--port", "80", "--metrics-addr", "localhost:80:80"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--metrics-addr `localhost:80:80`"), "{err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let before = loaded_programs();
    let (code, err) = run_to_exit(&["--port", "80", "--metrics-addr", &addr]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
    assert!(loaded_programs() <= before, "nothing left loaded");
}

#[test]
fn attaching_in_the_middle_of_churn_counts_every_connection_once() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let addr = server.addrs[0];
    let held = hold(addr, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200_000 {
                    observer_tests::net::open_close(addr, 1);
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The snapshot is taken while connections open and close around it.
    let o = Observer::start(&["--port", &port.to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    // The states the kernel program counts. `time_wait` comes from the socket census instead,
    // which cannot tell an inbound time-wait socket from an earlier outbound connection that
    // used this (ephemeral) port number as its own (README, "Socket census"): leftovers of other
    // tests could show there.
    let counted = |l: &[(String, String)]| !l.iter().any(|(k, v)| k == "state" && v == "time_wait");
    let others_zero = |s: &observer_tests::scrape::Scrape| {
        s.samples("observer_tcp_connections")
            .iter()
            .filter(|(l, _)| counted(l))
            .all(|(l, v)| *v == 0.0 || l.iter().any(|(k, v)| k == "state" && v == "established"))
    };
    let s = o.settle("only the held connections left", |s| {
        s.established(IN, port) == Some(200.0) && ss_established(port) == 200 && others_zero(s)
    });
    for (labels, v) in s.samples("observer_tcp_connections") {
        if !counted(&labels) {
            continue;
        }
        let state = &labels.iter().find(|(k, _)| k == "state").unwrap().1;
        let expected = if state == "established" { 200.0 } else { 0.0 };
        assert_eq!(v, expected, "{labels:?}\n{}", s.text);
    }
    drop(held);
    // Every gauge back to 0: nothing counted twice, nothing left behind.
    o.settle("all closed", |s| {
        s.established(IN, port) == Some(0.0) && others_zero(s)
    });
}
