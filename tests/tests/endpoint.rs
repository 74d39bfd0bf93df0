//! The metrics endpoint under the clients that knocked the hand-written one over: idle and
//! half-sent connections, a low file descriptor limit, hundreds of parallel scrapes of a large
//! body; and HTTP as curl and Prometheus expect it (HEAD, 405, gzip, keep-alive). Behind TLS
//! and basic auth (`--web.config.file`): handshakes that never finish, and a flood of wrong
//! passwords.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use observer_tests::{
    curl::curl as curl_got,
    observer::Observer,
    pki::{Pki, bcrypt_hash},
    require_root,
    scrape::http_get,
    wait_for,
};

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_endpoint_speaks_http_as_exporters_do() {
    require_root();
    let o = Observer::start(&["--port", "9"]);
    let url = format!("http://{}/metrics", o.metrics.unwrap());
    // HEAD: the headers of a GET, no body.
    let (head, _) = curl(&["-I", &url]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (body, _) = curl(&["-X", "HEAD", "-o", "-", &url]);
    assert!(body.is_empty(), "HEAD sent a body: {body}");
    // Other methods: 405 with what is allowed.
    let (post, _) = curl(&["-X", "POST", "-D", "-", "-o", "/dev/null", &url]);
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(post.to_lowercase().contains("allow: get, head"), "{post}");
    // gzip when asked, as Prometheus asks.
    let (gz, _) = curl(&["--compressed", "-D", "-", &url]);
    assert!(gz.to_lowercase().contains("content-encoding: gzip"), "{gz}");
    assert!(gz.contains("# TYPE observer_build_info gauge"), "{gz}");
    // Keep-alive: two requests on one connection.
    let (_, verbose) = curl(&["-v", "-o", "/dev/null", "-o", "/dev/null", &url, &url]);
    assert!(
        verbose.contains("Re-using existing connection"),
        "{verbose}"
    );
}

/// (descriptors open, VmRSS in KiB) of a process.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn half_sent_requests_are_closed_and_leave_nothing_behind() {
    require_root();
    let o = Observer::start(&["--port", "9"]);
    let addr = o.metrics.unwrap();
    o.scrape();
    // The start: once the scrape's own connection is gone.
    std::thread::sleep(Duration::from_millis(500));
    let (fds0, rss0) = fds_and_rss(o.pid());
    // A header that never ends.
    let mut conns: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
        .collect();
    // The server closes every one of them within its header timeout (10 s).
    let start = Instant::now();
    for s in &mut conns {
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?} to close them",
        start.elapsed()
    );
    drop(conns);
    let back = wait_for(Duration::from_secs(10), || {
        let (fds, rss) = fds_and_rss(o.pid());
        (fds == fds0 && rss < rss0 + 4096).then_some((fds, rss))
    });
    assert!(
        back.is_some(),
        "fds {fds0} -> {:?}, RSS {rss0} KiB -> {:?}",
        fds_and_rss(o.pid()).0,
        fds_and_rss(o.pid()).1
    );
    assert!(http_get(addr, "/metrics").is_ok());
}

#[test]
fn idle_connections_under_a_low_fd_limit_cost_no_cpu_and_a_scrape_gets_through() {
    require_root();
    let o = Observer::start(&["--port", "9"]);
    let addr: SocketAddr = o.metrics.unwrap();
    // systemd's default soft limit is 1024; lower still, as the issue measured.
    let pid = o.pid().to_string();
    let status = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=256:256"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let t0 = cpu_ticks(o.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(o.pid()) - t0;
    // 3 s at 100 ticks a second: 5% of a core is 15 ticks.
    assert!(
        used < 15,
        "{used} ticks of CPU in 3 s with 1000 idle connections"
    );
    let start = Instant::now();
    let body = http_get(addr, "/metrics");
    let took = start.elapsed();
    assert!(body.is_ok(), "{body:?}");
    assert!(took < Duration::from_secs(1), "a real scrape took {took:?}");
    drop(idle);
}

#[test]
fn parallel_scrapes_of_4096_ports_are_all_answered_in_bounded_memory() {
    require_root();
    let ports: Vec<String> = (1..=4096).map(|p| p.to_string()).collect();
    let mut args = Vec::new();
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let o = Observer::start(&args);
    let addr = o.metrics.unwrap();
    let size = http_get(addr, "/metrics").expect("a scrape").len();
    assert!(size > 5_000_000, "a body of {size} bytes for 4096 ports");
    let scrapes: Vec<_> = (0..200)
        .map(|_| std::thread::spawn(move || http_get(addr, "/metrics").map(|b| b.len())))
        .collect();
    let results: Vec<Result<usize, String>> = scrapes
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| Err("panicked".into())))
        .collect();
    let answered = results
        .iter()
        .filter(|r| matches!(r, Ok(n) if *n > 5_000_000))
        .count();
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .take(3)
        .collect();
    let hwm = std::fs::read_to_string(format!("/proc/{}/status", o.pid()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    assert_eq!(answered, 200, "scrapes answered; failures: {failures:?}");
    // One gather at a time, shared by the scrapes that wait for it, written straight as text
    // (observer/src/exposition.rs): the peak is about one body, where a gather per scrape took
    // the hand-written server to 1.2 GB and the prometheus crate's protobufs to 110 MiB.
    eprintln!("peak RSS {hwm} KiB for 200 parallel scrapes of {size} bytes");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB");
}

/// An observer behind TLS (and basic auth for user `prometheus`, when `password` is given),
/// with the web configuration file in the PKI's directory; and the CA's path.
fn behind_tls(pki: &Pki, password: Option<&str>) -> (Observer, String) {
    let mut text =
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n".to_string();
    if let Some(p) = password {
        text += &format!("basic_auth_users:\n  prometheus: {}\n", bcrypt_hash(p));
    }
    let config = pki.path("web.yml");
    std::fs::write(&config, text).unwrap();
    let o = Observer::start(&[
        "--port",
        "9",
        "--web.config.file",
        &config.display().to_string(),
    ]);
    (o, pki.path("ca.crt").display().to_string())
}

/// Reads until the peer closes; how long that took.
fn until_closed(s: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn tls_handshakes_that_never_finish_are_closed_and_keep_no_scrape_out() {
    require_root();
    let pki = Pki::new();
    let (o, ca) = behind_tls(&pki, None);
    let addr = o.metrics.unwrap();
    let url = format!("https://{addr}/metrics");
    assert_eq!(curl_got(&["--cacert", &ca, &url]).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    let (fds0, _) = fds_and_rss(o.pid());

    // A client that connects and says nothing is closed when the handshake's time is up, as
    // one that never finishes its header is (10 s).
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let took = until_closed(&mut silent);
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(15)).contains(&took),
        "a silent client was closed after {took:?}"
    );

    // 600 at once, far past the 64 connections kept: half say nothing, half stop inside their
    // ClientHello (a record header announcing 512 bytes, then 3 of them).
    let mut conns: Vec<TcpStream> = (0..600)
        .map(|i| {
            let mut s = TcpStream::connect(addr).expect("connect");
            if i % 2 == 1 {
                s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
                    .unwrap();
            }
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    // Those that stalled are closed to make room: a scrape gets through.
    let got = curl_got(&["--cacert", &ca, &url]);
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.took < Duration::from_secs(1),
        "a scrape took {:?}",
        got.took
    );
    let start = Instant::now();
    for s in &mut conns {
        until_closed(s);
    }
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?} to close them",
        start.elapsed()
    );
    drop(conns);
    let back = wait_for(Duration::from_secs(10), || {
        (fds_and_rss(o.pid()).0 == fds0).then_some(())
    });
    assert!(back.is_some(), "fds {fds0} -> {}", fds_and_rss(o.pid()).0);
}

/// A child process killed on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `parallel` connections at once, each sending wrong passwords to `url` one request after
/// another, until dropped; and the count of 401s they got.
fn wrong_passwords(url: &str, ca: &str, parallel: usize) -> (KillOnDrop, Arc<AtomicUsize>) {
    let mut flood = KillOnDrop(
        Command::new("curl")
            .args(["-s", "--no-progress-meter", "-Z", "--parallel-max"])
            .arg(parallel.to_string())
            .args(["--cacert", ca, "-u", "prometheus:wrong", "-o", "/dev/null"])
            // Each answer's status, on stderr, which curl does not buffer.
            .args([
                "-w",
                "%{stderr}HTTP %{http_code}\n",
                &format!("{url}?[1-1000000]"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl"),
    );
    let refused = Arc::new(AtomicUsize::new(0));
    let (out, count) = (flood.0.stderr.take().unwrap(), refused.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line == "HTTP 401" {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (flood, refused)
}

/// Over 10 scrapes 300 ms apart: (the slowest scrape, cores observer used, 401s the flood got,
/// seconds).
fn during(
    o: &Observer,
    scrape: impl Fn() -> observer_tests::curl::Got,
    refused: &AtomicUsize,
) -> (Duration, f64, usize, f64) {
    let (t0, refused0, start) = (
        cpu_ticks(o.pid()),
        refused.load(Ordering::Relaxed),
        Instant::now(),
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let got = scrape();
        assert_eq!(got.status, 200, "during the flood: {got:?}");
        slowest = slowest.max(got.took);
        std::thread::sleep(Duration::from_millis(300));
    }
    let secs = start.elapsed().as_secs_f64();
    let cores = (cpu_ticks(o.pid()) - t0) as f64 / 100.0 / secs;
    (
        slowest,
        cores,
        refused.load(Ordering::Relaxed) - refused0,
        secs,
    )
}

#[test]
fn a_flood_of_wrong_passwords_takes_one_core_at_most_and_keeps_no_scrape_out() {
    require_root();
    let pki = Pki::new();
    let (o, ca) = behind_tls(&pki, Some("s3cret"));
    let url = format!("https://{}/metrics", o.metrics.unwrap());
    let scrape = || curl_got(&["--cacert", &ca, "-u", "prometheus:s3cret", &url]);
    // Prometheus's password: bcrypt once, then remembered.
    assert_eq!(scrape().status, 200);

    // 48 connections (under the 64 kept), every request a wrong password: they queue for the
    // one bcrypt check at a time, which runs flat out off the serving thread.
    let (mut flood, refused) = wrong_passwords(&url, &ca, 48);
    std::thread::sleep(Duration::from_secs(2));
    let (slowest, cores, refused, secs) = during(&o, scrape, &refused);
    assert!(flood.0.try_wait().unwrap().is_none(), "the flood lasted");
    drop(flood);
    eprintln!(
        "48 connections of wrong passwords: {refused} refused in {secs:.1} s; observer used \
         {cores:.2} cores; slowest scrape {slowest:?}"
    );
    assert!(
        refused >= 10,
        "the flood was answered: {refused} in {secs:.1} s"
    );
    // One check at a time: a core, and a little for the handshakes.
    assert!(cores < 1.5, "observer took {cores:.2} cores");
    assert!(
        slowest < Duration::from_secs(1),
        "a scrape took {slowest:?}"
    );

    // 150 (past the 64 kept): those waiting their turn are closed to make room.
    let (mut flood, refused) = wrong_passwords(&url, &ca, 150);
    std::thread::sleep(Duration::from_secs(2));
    let (slowest, cores, refused, secs) = during(&o, scrape, &refused);
    assert!(flood.0.try_wait().unwrap().is_none(), "the flood lasted");
    eprintln!(
        "150 connections of wrong passwords: {refused} refused in {secs:.1} s; observer used \
         {cores:.2} cores; slowest scrape {slowest:?}"
    );
    assert!(cores < 1.5, "observer took {cores:.2} cores");
    assert!(
        slowest < Duration::from_secs(1),
        "a scrape took {slowest:?}"
    );
}
