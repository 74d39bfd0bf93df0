//! A million connections: counts stay exact and gauges do not drift. Takes about a minute, so
//! it is not part of the default run: `cargo xtask test --test soak -- --ignored`.
use observer_tests::{
    net::{Mode, Server, churn, ss_state},
    observer::Observer,
    require_root,
};

#[test]
#[ignore = "a minute of churn; run by hand"]
fn a_million_connections_without_drift() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::CloseFirst);
    let port = server.port();
    let o = Observer::start(&["--port", &port.to_string()]);
    const N: usize = 1_000_000;
    churn(server.addrs[0], N, 4);
    let s = o.settle("a million closed", |s| {
        s.conn("observer_tcp_connections_closed_total", "inbound", port) == Some(N as f64)
    });
    eprintln!(
        "{}",
        s.text
            .lines()
            .filter(|l| l.starts_with("observer_kernel"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", "inbound", port),
        Some(N as f64)
    );
    // The kernel's gauges are back to 0. The server closes first, so its side leaves TIME_WAIT
    // sockets for 60 s: that series is the census's, and `ss` counts the same sockets.
    let filter = format!("( sport = :{port} )");
    let (time_wait, s) = o.scrape_with_oracle(|| ss_state(None, "time-wait", &filter));
    let port = port.to_string();
    let census = [
        ("direction", "inbound"),
        ("port", port.as_str()),
        ("state", "time_wait"),
    ];
    assert_eq!(
        s.value("observer_tcp_connections", &census),
        Some(time_wait as f64)
    );
    for (labels, v) in s.samples("observer_tcp_connections") {
        let is_census = census
            .iter()
            .all(|(name, value)| labels.iter().any(|(n, v)| n == name && v == value));
        if !is_census {
            assert_eq!(v, 0.0, "{labels:?}");
        }
    }
    assert!(
        time_wait > 0,
        "the server closed first: its TIME_WAIT sockets are on the port"
    );
}
