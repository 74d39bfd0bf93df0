//! `--by-remote`: established connections per client, listed from the kernel's per-connection
//! entries at each scrape. Clients bind
//! their own loopback addresses (127.0.0.2, 127.0.0.3, ...) before they connect; `ss` is the
//! oracle.
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use observer_tests::{
    bpftool,
    net::{Mode, Server, connect_from, ss_state},
    observer::{Observer, programs_of},
    require_root,
    scrape::Scrape,
};

const FAMILY: &str = "observer_tcp_connections_by_remote";

/// `n` connections to `server` from local address `src`.
fn from(src: &str, server: SocketAddr, n: usize) -> Vec<TcpStream> {
    let local: SocketAddr = format!("{src}:0").parse().expect("address");
    (0..n).map(|_| connect_from(local, server)).collect()
}

/// The per-remote series of inbound `port`: remote label -> value.
fn by_remote(s: &Scrape, port: u16) -> BTreeMap<String, f64> {
    s.samples(FAMILY)
        .into_iter()
        .filter(|(l, _)| {
            let has = |k: &str, v: &str| l.iter().any(|(lk, lv)| lk == k && lv == v);
            has("direction", "inbound") && has("port", &port.to_string())
        })
        .map(|(l, v)| {
            let remote = l.iter().find(|(k, _)| k == "remote").expect("remote");
            (remote.1.clone(), v)
        })
        .collect()
}

fn series(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The server side's established connections from `client`, as `ss` lists them.
fn ss_from(port: u16, client: &str) -> usize {
    ss_state(
        None,
        "established",
        &format!("( sport = :{port} and dst {client} )"),
    )
}

/// A server holding its connections on `host`, watched with `--by-remote` by the
/// `target` flag (`--port`, `--remote-port`) for its port, and `extra`.
fn watched(host: &str, target: &str, extra: &[&str]) -> (Server, u16, Observer) {
    require_root();
    let server = Server::start(&[host], Mode::Hold);
    let port = server.port();
    let port_arg = port.to_string();
    let mut args = vec![target, port_arg.as_str(), "--by-remote"];
    args.extend_from_slice(extra);
    let o = Observer::start(&args);
    (server, port, o)
}

#[test]
fn counts_each_client_exactly_and_returns_to_zero() {
    let (server, port, o) = watched("127.0.0.1", "--port", &[]);
    let two = from("127.0.0.2", server.addrs[0], 30);
    let three = from("127.0.0.3", server.addrs[0], 20);
    let s = o.settle("50 open", |s| s.established("inbound", port) == Some(50.0));
    assert_eq!(
        (ss_from(port, "127.0.0.2"), ss_from(port, "127.0.0.3")),
        (30, 20)
    );
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.2", 30.0), ("127.0.0.3", 20.0), ("other", 0.0)])
    );
    s.promtool_check();

    drop(two);
    let s = o.settle("20 open", |s| s.established("inbound", port) == Some(20.0));
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.2", 0.0), ("127.0.0.3", 20.0), ("other", 0.0)])
    );
    drop(three);
    let s = o.settle("none open", |s| s.established("inbound", port) == Some(0.0));
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.2", 0.0), ("127.0.0.3", 0.0), ("other", 0.0)])
    );
    assert_eq!(
        s.value(FAMILY, &[("remote", "other")]).map(|_| ()),
        Some(()),
        "other is always there"
    );
    let errors = s.sum("observer_kernel_errors_total", &[]);
    assert_eq!(errors, Some(0.0), "{}", s.text);
}

#[test]
fn beyond_max_remotes_the_rest_is_other_and_does_not_flap() {
    let (server, port, o) = watched("127.0.0.1", "--port", &["--max-remotes", "1"]);
    let two = from("127.0.0.2", server.addrs[0], 30);
    o.settle("30 open", |s| s.established("inbound", port) == Some(30.0));
    let _three = from("127.0.0.3", server.addrs[0], 20);
    o.settle("50 open", |s| s.established("inbound", port) == Some(50.0));
    // Scrape after scrape, the same remote keeps its series.
    for _ in 0..5 {
        let s = o.scrape();
        assert_eq!(
            by_remote(&s, port),
            series(&[("127.0.0.2", 30.0), ("other", 20.0)])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // .3 overtakes .2: .2 keeps its series while it has a connection.
    let mut two = two;
    two.truncate(1);
    let s = o.settle("21 open", |s| s.established("inbound", port) == Some(21.0));
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.2", 1.0), ("other", 20.0)])
    );
    // At 0, its room goes to the remote waiting.
    drop(two);
    let s = o.settle("20 open", |s| s.established("inbound", port) == Some(20.0));
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.3", 20.0), ("other", 0.0)])
    );
}

#[test]
fn an_ipv4_client_of_a_dual_stack_listener_is_ipv4() {
    let (_server, port, o) = watched("[::]", "--port", &[]);
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _a = from("127.0.0.2", v4, 4);
    let _b: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(format!("[::1]:{port}")).expect("::1"))
        .collect();
    let s = o.settle("7 open", |s| s.established("inbound", port) == Some(7.0));
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.2", 4.0), ("::1", 3.0), ("other", 0.0)])
    );
}

/// Outbound, the remote is the server this host connects to.
#[test]
fn outbound_connections_count_under_their_server() {
    let (server, port, o) = watched("127.0.0.5", "--remote-port", &[]);
    let conns = from("127.0.0.1", server.addrs[0], 4);
    let s = o.settle("4 open", |s| s.established("outbound", port) == Some(4.0));
    let out = |s: &Scrape, remote: &str| {
        s.value(
            FAMILY,
            &[
                ("direction", "outbound"),
                ("port", &port.to_string()),
                ("remote", remote),
            ],
        )
    };
    assert_eq!(out(&s, "127.0.0.5"), Some(4.0));
    assert_eq!(out(&s, "other"), Some(0.0));
    drop(conns);
    let s = o.settle("none open", |s| {
        s.established("outbound", port) == Some(0.0)
    });
    assert_eq!(out(&s, "127.0.0.5"), Some(0.0));
}

#[test]
fn a_prefix_makes_one_series_of_its_clients() {
    let (server, port, o) = watched("127.0.0.1", "--port", &["--remote-prefix", "24"]);
    let _two = from("127.0.0.2", server.addrs[0], 30);
    let _three = from("127.0.0.3", server.addrs[0], 20);
    let s = o.settle("50 open", |s| s.established("inbound", port) == Some(50.0));
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.0/24", 50.0), ("other", 0.0)])
    );
}

#[test]
fn connections_open_before_start_are_counted_per_client() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let mut two = from("127.0.0.2", server.addrs[0], 10);
    let three = from("127.0.0.3", server.addrs[0], 5);
    let o = Observer::start(&["--port", &port.to_string(), "--by-remote"]);
    // Right from the first scrape.
    let s = o.scrape();
    assert_eq!(s.established("inbound", port), Some(15.0));
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.2", 10.0), ("127.0.0.3", 5.0), ("other", 0.0)])
    );
    two.extend(from("127.0.0.2", server.addrs[0], 3));
    let s = o.settle("18 open", |s| s.established("inbound", port) == Some(18.0));
    assert_eq!(by_remote(&s, port)["127.0.0.2"], 13.0);
    // The snapshot's connections leave their count as they close, like the new ones.
    drop(two);
    drop(three);
    let s = o.settle("none open", |s| s.established("inbound", port) == Some(0.0));
    assert_eq!(
        by_remote(&s, port),
        series(&[("127.0.0.2", 0.0), ("127.0.0.3", 0.0), ("other", 0.0)])
    );
}

#[test]
fn without_the_flag_nothing_per_client_is_listed_or_exported() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let names = |o: &Observer| -> Vec<String> {
        programs_of(o.pid())
            .iter()
            .map(|id| bpftool::program_name(*id))
            .collect()
    };
    let o = Observer::start(&["--port", &port.to_string()]);
    let _c = from("127.0.0.2", server.addrs[0], 3);
    let s = o.settle("3 open", |s| s.established("inbound", port) == Some(3.0));
    assert!(!s.exports(FAMILY));
    let loaded = names(&o);
    assert!(
        !loaded
            .iter()
            .any(|n| n == "observer_remotes" || n == "observer_seeds"),
        "{loaded:?}"
    );
    drop(o);
    let o = Observer::start(&["--port", &port.to_string(), "--by-remote"]);
    let loaded = names(&o);
    for n in ["observer_remotes", "observer_seeds"] {
        assert!(loaded.iter().any(|l| l == n), "{n} not in {loaded:?}");
    }
}

/// 150 clients, one connection each, with the default 100 series per port: the 100 get their
/// series, the other 50 are `other`, and every count is exact.
#[test]
fn many_clients_are_bounded_by_max_remotes() {
    let (server, port, o) = watched("127.0.0.1", "--port", &[]);
    let conns: Vec<TcpStream> = (10..160)
        .flat_map(|i| from(&format!("127.0.0.{i}"), server.addrs[0], 1))
        .collect();
    let s = o.settle("150 open", |s| {
        s.established("inbound", port) == Some(150.0)
    });
    let series = by_remote(&s, port);
    assert_eq!(series.len(), 101, "{series:?}");
    assert_eq!(series["other"], 50.0);
    assert!(
        series.iter().all(|(r, n)| r == "other" || *n == 1.0),
        "{series:?}"
    );
    assert_eq!(series.values().sum::<f64>(), 150.0);
    // The same 100 scrape after scrape.
    for _ in 0..3 {
        assert_eq!(by_remote(&o.scrape(), port), series);
    }
    drop(conns);
    let s = o.settle("none open", |s| s.established("inbound", port) == Some(0.0));
    let after = by_remote(&s, port);
    assert_eq!(after.values().sum::<f64>(), 0.0, "{after:?}");
}

#[test]
fn bad_flags_are_one_line_and_exit_2() {
    for args in [
        &["--remote-prefix", "24"][..],
        &["--by-remote", "--remote-prefix", "33x"],
        &["--by-remote", "--max-remotes", "0"],
    ] {
        let (code, stderr) = observer_tests::observer::run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
    }
    let (code, stderr) = observer_tests::observer::run_to_exit(&[
        "--by-remote",
        "--remote-prefix",
        "24",
        "--remote-prefix",
        "v4:16",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "observer: --remote-prefix given twice for IPv4"
    );
}
