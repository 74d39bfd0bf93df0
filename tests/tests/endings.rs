//! How connections end, each caused for real: a closed port (refused), SYNs that go nowhere
//! (timeout), a router that answers with ICMP (unreachable), a client that resets (SO_LINGER 0),
//! a server and a client that each close first, and what a connection carried. Traffic stays
//! on loopback and in namespaces the tests make.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

use observer_tests::{
    events::{collect, of_type},
    net::{Mode, Server},
    nginx::Nginx,
    observer::Observer,
    require_root,
    sandbox::Netns,
    scrape::Scrape,
};
use serde_json::Value;

const FAILED: &str = "observer_tcp_connections_failed_total";
const RESET: &str = "observer_tcp_connections_reset_total";
const CLOSED_BY: &str = "observer_tcp_connections_closed_by_total";

fn failed(s: &Scrape, port: u16, reason: &str) -> f64 {
    s.value(
        FAILED,
        &[
            ("direction", "outbound"),
            ("port", &port.to_string()),
            ("reason", reason),
        ],
    )
    .unwrap_or(0.0)
}

/// Every failure reason's count for an outbound port, as (reason, count) with count > 0.
fn failures(s: &Scrape, port: u16) -> Vec<(String, f64)> {
    s.samples(FAILED)
        .into_iter()
        .filter(|(l, v)| {
            *v > 0.0
                && l.iter().any(|(k, p)| k == "port" && *p == port.to_string())
                && l.iter().any(|(k, d)| k == "direction" && d == "outbound")
        })
        .map(|(l, v)| {
            let reason = l.into_iter().find(|(k, _)| k == "reason").unwrap().1;
            (reason, v)
        })
        .collect()
}

/// A port nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_connect_to_a_closed_port_is_refused() {
    require_root();
    let port = closed_port();
    let (o, rx) =
        Observer::start_with_events(&["--remote-port", &port.to_string(), "--events", "json"]);
    const N: usize = 5;
    for _ in 0..N {
        let e = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    let s = o.settle("5 refused", |s| failed(s, port, "refused") == N as f64);
    assert_eq!(failures(&s, port), vec![("refused".into(), N as f64)]);
    let events = collect(
        &rx,
        Duration::from_secs(10),
        Duration::from_millis(300),
        |e| of_type(e, "failed").len() >= N,
    );
    let failed = of_type(&events, "failed");
    assert_eq!(failed.len(), N);
    assert!(
        failed.iter().all(|e| e["reason"] == "refused"),
        "{failed:?}"
    );
}

/// Two namespaces: a client, and a router one hop away (`Netns::link`'s subnet `n`) through
/// which the client reaches 10.213.<n+100>.0/24 and 10.213.<n+101>.0/24. The router does not
/// forward the first (a SYN there is dropped in silence) and answers for the second that the
/// host is unreachable (ICMP).
struct Routed {
    client: Netns,
    _router: Netns,
    silent: String,
    unreachable: String,
}

impl Routed {
    fn new(n: u8) -> Routed {
        let (client, router) = (Netns::new(), Netns::new());
        let (_, via) = Netns::link(&client, &router, n);
        let (silent, unreachable) = (
            format!("10.213.{}.0/24", n + 100),
            format!("10.213.{}.0/24", n + 101),
        );
        for net in [&silent, &unreachable] {
            observer_tests::output_of(
                "ip",
                &["-n", &client.name, "route", "add", net, "via", &via],
            );
        }
        router.sysctl("net.ipv4.ip_forward", "1");
        // Forwarding on, so that the router answers; the silent net is dropped by a route of
        // its own that sends nothing back.
        observer_tests::output_of(
            "ip",
            &["-n", &router.name, "route", "add", "blackhole", &silent],
        );
        observer_tests::output_of(
            "ip",
            &[
                "-n",
                &router.name,
                "route",
                "add",
                "unreachable",
                &unreachable,
            ],
        );
        // One SYN retry: a connect with no answer gives up after about 3 s.
        client.sysctl("net.ipv4.tcp_syn_retries", "1");
        Routed {
            client,
            _router: router,
            silent: format!("10.213.{}.5", n + 100),
            unreachable: format!("10.213.{}.5", n + 101),
        }
    }
}

#[test]
fn a_connect_with_no_answer_times_out_and_one_the_network_rejects_is_unreachable() {
    require_root();
    let net = Routed::new(61);
    let port = closed_port();
    let o = Observer::start(&["--remote-port", &port.to_string()]);
    // A plain blocking connect(), which waits for the kernel's verdict. (A connect with a
    // timeout of its own, as Rust's `connect_timeout`, gives up at the first ICMP error, which
    // the kernel takes as soft, and closes the socket itself: abandoned.)
    let connect = |host: &str| {
        let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
        net.client.run(|| {
            TcpStream::connect(addr)
                .map(|_| ())
                .map_err(|e| e.raw_os_error())
        })
    };
    assert_eq!(connect(&net.silent), Err(Some(libc::ETIMEDOUT)));
    for _ in 0..2 {
        assert_eq!(connect(&net.unreachable), Err(Some(libc::EHOSTUNREACH)));
    }
    let s = o.settle("1 timeout, 2 unreachable", |s| {
        failed(s, port, "timeout") == 1.0 && failed(s, port, "unreachable") == 2.0
    });
    let mut f = failures(&s, port);
    f.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        f,
        vec![("timeout".into(), 1.0), ("unreachable".into(), 2.0)],
        "{}",
        s.text
    );
}

/// SO_LINGER with a zero timeout: close() sends a RST instead of a FIN.
fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

fn by(s: &Scrape, dir: &str, port: u16, side: &str) -> f64 {
    s.value(
        CLOSED_BY,
        &[
            ("direction", dir),
            ("port", &port.to_string()),
            ("by", side),
        ],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_client_that_resets_is_a_reset_on_both_sides() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let p = port.to_string();
    // The server's side inbound, the client's outbound.
    let (o, rx) =
        Observer::start_with_events(&["--port", &p, "--remote-port", &p, "--events", "json"]);
    const N: usize = 4;
    for _ in 0..N {
        let c = TcpStream::connect(server.addrs[0]).unwrap();
        reset_on_close(&c);
        // Let the server's side reach ESTABLISHED in its accept queue, then reset.
        std::thread::sleep(Duration::from_millis(20));
        drop(c);
    }
    let s = o.settle("every reset counted", |s| {
        s.conn(RESET, "inbound", port) == Some(N as f64)
            && s.conn(RESET, "outbound", port) == Some(N as f64)
    });
    // The client sent the RST: closed by it, remote for the server, local for the client.
    assert_eq!(by(&s, "inbound", port, "remote"), N as f64, "{}", s.text);
    assert_eq!(by(&s, "inbound", port, "local"), 0.0);
    assert_eq!(by(&s, "outbound", port, "local"), N as f64, "{}", s.text);
    assert_eq!(by(&s, "outbound", port, "remote"), 0.0);
    let events = collect(
        &rx,
        Duration::from_secs(10),
        Duration::from_millis(300),
        |e| of_type(e, "close").len() >= 2 * N,
    );
    for e in of_type(&events, "close") {
        assert_eq!(e["reason"], "reset", "{e}");
    }
}

/// One HTTP/1.1 request to nginx over a new connection: returns (bytes written, bytes read).
/// `close` asks nginx to close first (`Connection: close`), reading until its FIN; otherwise the
/// client closes first, once it has the whole response.
fn request(addr: SocketAddr, close: bool) -> (usize, usize) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let connection = if close { "close" } else { "keep-alive" };
    let req = format!("GET / HTTP/1.1\r\nHost: observer-test\r\nConnection: {connection}\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        if n == 0 || (!close && complete(&got)) {
            break;
        }
    }
    (req.len(), got.len())
}

/// Whether `got` holds a whole response (headers and a body of Content-Length bytes).
fn complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    body.len() >= len
}

#[test]
fn closes_say_who_closed_first_and_what_they_carried() {
    require_root();
    let nginx = Nginx::start();
    let port = nginx.port;
    let (o, rx) = Observer::start_with_events(&["--port", &port.to_string(), "--events", "json"]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // nginx closes first.
    let server_closed = request(addr, true);
    // The client closes first.
    let client_closed = request(addr, false);

    let s = o.settle("two closes", |s| {
        s.conn("observer_tcp_connections_closed_total", "inbound", port) == Some(2.0)
    });
    assert_eq!(by(&s, "inbound", port, "local"), 1.0, "{}", s.text);
    assert_eq!(by(&s, "inbound", port, "remote"), 1.0, "{}", s.text);
    assert_eq!(s.conn(RESET, "inbound", port), Some(0.0));

    let events = collect(
        &rx,
        Duration::from_secs(10),
        Duration::from_millis(300),
        |e| of_type(e, "close").len() >= 2,
    );
    let closes = of_type(&events, "close");
    assert_eq!(closes.len(), 2, "{events:?}");
    let find = |side: &str| -> &Value {
        closes
            .iter()
            .find(|e| e["closed_by"] == side)
            .unwrap_or_else(|| panic!("no close by {side}: {closes:?}"))
    };
    // nginx's side: it received what the client sent, and sent what the client read.
    for (side, (sent, read)) in [("local", server_closed), ("remote", client_closed)] {
        let e = find(side);
        assert_eq!(e["reason"], "normal", "{e}");
        assert_eq!(e["bytes_received"], sent as u64, "{side}: {e}");
        assert_eq!(e["bytes_sent"], read as u64, "{side}: {e}");
        assert_eq!(e["retransmits"], 0, "loopback: {e}");
        assert!(e["rtt_us"].as_u64().is_some(), "{e}");
    }
}
