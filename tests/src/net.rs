//! Real TCP servers and clients on loopback.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::io::AsyncReadExt as _;

/// What a server does with each connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Keeps it open until the client closes, then closes too.
    Hold,
    /// Closes it at once (the server closes first).
    CloseFirst,
}

/// A TCP server on its own runtime thread; stops when dropped.
pub struct Server {
    pub addrs: Vec<SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Listens on each address (port 0: the first picks an ephemeral port, the others reuse it).
    pub fn start(hosts: &[&str], mode: Mode) -> Server {
        for _ in 0..50 {
            if let Some(s) = Self::try_start(hosts, mode, 0) {
                return s;
            }
        }
        panic!("could not bind {hosts:?} on a common port");
    }

    /// Listens on each address at `port` (a `reserved_port`, typically).
    pub fn start_on(hosts: &[&str], mode: Mode, port: u16) -> Server {
        Self::try_start(hosts, mode, port)
            .unwrap_or_else(|| panic!("could not bind {hosts:?} on port {port}"))
    }

    fn try_start(hosts: &[&str], mode: Mode, mut port: u16) -> Option<Server> {
        let mut listeners = Vec::new();
        for h in hosts {
            let addr: SocketAddr = format!("{h}:{port}").parse().expect("address");
            let l = std::net::TcpListener::bind(addr).ok()?;
            port = l.local_addr().ok()?.port();
            listeners.push(l);
        }
        Self::serve(listeners, mode).ok()
    }

    /// A server on one given address (a fixed port), or why it could not listen there.
    pub fn try_start_at(addr: SocketAddr, mode: Mode) -> Result<Server, String> {
        let l = std::net::TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
        Self::serve(vec![l], mode).map_err(|e| format!("serving {addr}: {e}"))
    }

    fn serve(listeners: Vec<std::net::TcpListener>, mode: Mode) -> std::io::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let mut addrs = Vec::new();
        for l in listeners {
            l.set_nonblocking(true)?;
            addrs.push(l.local_addr()?);
            runtime.spawn(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                loop {
                    let Ok((mut s, _)) = l.accept().await else {
                        continue;
                    };
                    if mode == Mode::CloseFirst {
                        drop(s);
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut buf = [0u8; 256];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    });
                }
            });
        }
        Ok(Server {
            addrs,
            runtime: Some(runtime),
        })
    }

    pub fn port(&self) -> u16 {
        self.addrs[0].port()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// A port no other socket of the tests can come to have: outside the ephemeral range (so no
/// connect() in any namespace picks it as its own port) and held, bound, in this namespace
/// until dropped (so no other test takes it). Sockets on it, in a namespace a test made, are
/// that test's only: what a census across every namespace needs to be compared with `ss`.
pub struct ReservedPort {
    pub port: u16,
    _held: socket2::Socket,
}

/// A `ReservedPort`, below the ephemeral range.
pub fn reserved_port() -> ReservedPort {
    let range = below_ephemeral().unwrap_or_else(|e| panic!("{e}"));
    // Held once bound: tests that reserve at once each get another port.
    for port in range.clone() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if s.bind(&addr.into()).is_ok() {
            return ReservedPort { port, _held: s };
        }
    }
    panic!("no free port in {range:?}");
}

/// 10,000 ports below the ephemeral range (32768-60999 by default, per namespace), and below
/// the default range too: no connect() in any namespace picks one as its own port.
fn below_ephemeral() -> Result<std::ops::Range<u16>, String> {
    const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let range = std::fs::read_to_string(RANGE).map_err(|e| format!("reading {RANGE}: {e}"))?;
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no range in {RANGE}: {range}"))?;
    let top = low.min(32768);
    Ok(top.saturating_sub(10_000)..top)
}

/// Opens `n` connections and keeps them.
pub fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"))
        })
        .collect()
}

/// `N` free loopback ports below the ephemeral range. A client's ephemeral port then never
/// equals a server's port: a client bound to 127.0.0.3 could otherwise get the watched port
/// number as its own, and its outbound socket would count as a connection to that port (for
/// `ss`'s port filter).
pub fn free_ports_below_ephemeral<const N: usize>() -> Result<[u16; N], String> {
    let range = below_ephemeral()?;
    // Held until all N are chosen, so that they differ.
    let listeners: Vec<std::net::TcpListener> = range
        .clone()
        .filter_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
        .take(N)
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .filter_map(|l| Some(l.local_addr().ok()?.port()))
        .collect();
    ports
        .try_into()
        .map_err(|_| format!("no {N} free ports in {range:?}"))
}

/// A TCP socket bound to `addr` (port 0: any), with SO_REUSEPORT when `reuse_port`: what std
/// cannot set up before connect() or listen().
fn bound(addr: SocketAddr, reuse_port: bool) -> socket2::Socket {
    try_bound(addr, reuse_port).unwrap_or_else(|e| panic!("binding {addr}: {e}"))
}

fn try_bound(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s)
}

/// One connection to `remote` from the given local address and port (bound before connect()).
pub fn connect_from(local: SocketAddr, remote: SocketAddr) -> TcpStream {
    try_connect_from(local, remote)
        .unwrap_or_else(|e| panic!("connecting {local} to {remote}: {e}"))
}

/// The same, for callers that report errors rather than panic (the bench).
pub fn try_connect_from(local: SocketAddr, remote: SocketAddr) -> std::io::Result<TcpStream> {
    let s = try_bound(local, false)?;
    s.connect_timeout(&remote.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// TCP sockets with local address `addr` in any state but TIME_WAIT, as `ss` lists them.
pub fn ss_sockets_from(addr: SocketAddr) -> usize {
    ss_count(&["-Htan", "exclude", "time-wait", &format!("( src {addr} )")])
}

/// The lines `ss` prints with these arguments.
fn ss_count(args: &[&str]) -> usize {
    count_lines(&ss_in(None, args))
}

/// What `ss` prints with these arguments, run in network namespace `netns` (`ip netns` name;
/// None: this one).
fn ss_in(netns: Option<&str>, args: &[&str]) -> String {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "ss"]);
            c
        }
        None => std::process::Command::new("ss"),
    };
    let out = cmd.args(args).output().expect("ss");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TCP sockets in `state` (ss's name: `time-wait`, `syn-recv`) that match `filter` (`( sport =
/// :8080 )`), as `ss` counts them in namespace `netns`.
pub fn ss_state(netns: Option<&str>, state: &str, filter: &str) -> usize {
    count_lines(&ss_in(netns, &["-Htan", "state", state, filter]))
}

/// Recv-Q and Send-Q of each TCP listener on `port`, as `ss -lnt` prints them: for a listener,
/// the connections waiting for accept() and the backlog.
pub fn ss_listen_queues(port: u16) -> Vec<(u64, u64)> {
    let out = ss_in(None, &["-Hlnt", &format!("( sport = :{port} )")]);
    queues_in(&out)
}

fn queues_in(ss: &str) -> Vec<(u64, u64)> {
    ss.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// A listener on `addr` with this accept backlog, which nothing accepts from.
pub fn listen_with_backlog(addr: SocketAddr, backlog: u32) -> std::net::TcpListener {
    try_listen_with_backlog(addr, backlog).unwrap_or_else(|e| panic!("{e}"))
}

/// The same, or why it could not listen.
pub fn try_listen_with_backlog(
    addr: SocketAddr,
    backlog: u32,
) -> Result<std::net::TcpListener, String> {
    let s = try_bound(addr, false).map_err(|e| format!("binding {addr}: {e}"))?;
    s.listen(backlog as i32)
        .map_err(|e| format!("listen on {addr}: {e}"))?;
    Ok(s.into())
}

/// A listener on `addr` with SO_REUSEPORT: other processes may listen on the same port.
pub fn listen_reuseport(addr: SocketAddr) -> std::net::TcpListener {
    let s = bound(addr, true);
    s.listen(1024).expect("listen");
    s.into()
}

/// The sockets in `ss -H` output: one a line, blank lines aside.
fn count_lines(ss: &str) -> usize {
    ss.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Opens and closes `n` connections one after the other, the client closing first; returns the
/// client-side local ports.
pub fn open_close(addr: SocketAddr, n: usize) -> Vec<u16> {
    open_close_each(addr, n)
        .map(|port| port.expect("connect"))
        .collect()
}

/// The same where some may fail (refused, timed out): (succeeded, failed).
pub fn connect_n(addr: SocketAddr, n: usize) -> (usize, usize) {
    let ok = open_close_each(addr, n).filter(Result::is_ok).count();
    (ok, n - ok)
}

/// `n` connections opened and closed one after the other: each one's client-side port, or why
/// it did not connect (within 5 s).
fn open_close_each(addr: SocketAddr, n: usize) -> impl Iterator<Item = std::io::Result<u16>> {
    (0..n).map(move |_| {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))?
            .local_addr()
            .map(|a| a.port())
    })
}

/// `n` short connections as fast as `threads` clients can make them, against a server that
/// closes first (so TIME_WAIT stays on the server side and the client's ports stay free).
/// Returns the client-side local ports, in no particular order.
pub fn churn(addr: SocketAddr, n: usize, threads: usize) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = n / threads + usize::from(t < n % threads);
                s.spawn(move || {
                    let mut buf = [0u8; 16];
                    let mut ports = Vec::with_capacity(count);
                    for _ in 0..count {
                        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                            .expect("connect");
                        ports.push(c.local_addr().expect("local address").port());
                        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
                        // The server closes: read until EOF, then close.
                        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    ports
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a churn thread"))
            .collect()
    })
}

/// Connections in state ESTABLISHED with local port `port`, as `ss` counts them (the oracle).
pub fn ss_established(port: u16) -> usize {
    ss_count(&[
        "-Htn",
        "state",
        "established",
        &format!("( sport = :{port} )"),
    ])
}

/// Writes one byte on each of its connections every `period`, from a thread of its own, until
/// dropped (then it gives the connections back through `stop`).
pub struct Chatter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<TcpStream>>>,
}

impl Chatter {
    pub fn start(mut conns: Vec<TcpStream>, period: Duration) -> Chatter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for c in &mut conns {
                    c.write_all(b"x").expect("writing on a busy connection");
                }
                std::thread::sleep(period);
            }
            conns
        });
        Chatter {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops writing; the connections stay open.
    pub fn stop(mut self) -> Vec<TcpStream> {
        self.halt().unwrap_or_default()
    }

    fn halt(&mut self) -> Option<Vec<TcpStream>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take()?.join().ok()
    }
}

impl Drop for Chatter {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Established connections with local port `port` that moved no data either way for longer
/// than `threshold`, by the kernel's figures as `ss -ti` prints them (lastsnd, lastrcv: the
/// oracle for observer's idle scan).
pub fn ss_idle(port: u16, threshold: Duration) -> usize {
    let out = std::process::Command::new("ss")
        .args([
            "-Htin",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss");
    idle_in(&String::from_utf8_lossy(&out.stdout), threshold)
}

/// The sockets of `ss -Hti` output idle longer than `threshold`. Each socket's figures follow
/// its address line, indented; ss leaves lastsnd or lastrcv out when it is 0 (data just now).
fn idle_in(ss: &str, threshold: Duration) -> usize {
    let threshold = threshold.as_millis() as u64;
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse().ok())
            .unwrap_or(0)
    };
    ss.lines()
        // A socket's figures are on the indented line under its addresses.
        .filter(|l| l.starts_with(char::is_whitespace))
        .filter(|l| field(l, "lastsnd:").min(field(l, "lastrcv:")) > threshold)
        .count()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_idle_times_from_ss() {
        let out = concat!(
            "0      0      127.0.0.1:8080 127.0.0.1:40000\n",
            "\t cubic wscale:7,7 rto:204 rtt:0.02/0.01 lastsnd:3000 lastrcv:2500 lastack:2500\n",
            "0      0      127.0.0.1:8080 127.0.0.1:40001\n",
            "\t bbr wscale:7,7 rto:204 rtt:0.02/0.01 lastsnd:3000 lastack:90\n",
            "0      0      127.0.0.1:8080 127.0.0.1:40002\n",
            "\t cubic wscale:7,7 rto:204 rtt:0.02/0.01 lastsnd:2100 lastrcv:2001 lastack:2001\n",
        );
        let t = std::time::Duration::from_secs(2);
        assert_eq!(super::idle_in(out, t), 2);
        assert_eq!(
            super::idle_in(out, std::time::Duration::from_millis(2400)),
            1
        );
    }

    #[test]
    fn reads_the_listen_queues_from_ss() {
        let out = "LISTEN 9      8          127.0.0.1:19402      0.0.0.0:*\nLISTEN 0 4096 [::]:80 [::]:*\n";
        assert_eq!(super::queues_in(out), [(9, 8), (0, 4096)]);
    }

    #[test]
    fn counts_the_sockets_ss_lists() {
        let out = "ESTAB 0 0 127.0.0.1:8080 127.0.0.1:40000\nESTAB 0 0 [::1]:8080 [::1]:40001\n\n";
        assert_eq!(super::count_lines(out), 2);
        assert_eq!(super::count_lines(""), 0);
    }
}
