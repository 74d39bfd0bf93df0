//! The event stream, end to end: the real program in this kernel, a real server, real clients.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use observer_tests::{
    events::{collect, of_type},
    net::{Mode, Server, open_close},
    observer::{Observer, Stdout, program_loaded, programs_released, run_to_exit},
    require_root,
};

#[test]
fn every_connection_opens_and_closes_once_on_ipv4_and_ipv6() {
    require_root();
    let watched = Server::start(&["127.0.0.1", "[::1]"], Mode::Hold);
    let other = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = watched.port();
    let (observer, rx) =
        Observer::start_with_events(&["--port", &port.to_string(), "--events", "json"]);

    const N: usize = 500;
    let mut clients: BTreeMap<String, usize> = BTreeMap::new();
    for (addr, n) in [(watched.addrs[0], N / 2), (watched.addrs[1], N / 2)] {
        for p in open_close(addr, n) {
            let remote = match addr {
                std::net::SocketAddr::V4(_) => format!("127.0.0.1:{p}"),
                std::net::SocketAddr::V6(_) => format!("[::1]:{p}"),
            };
            *clients.entry(remote).or_default() += 1;
        }
    }
    open_close(other.addrs[0], 50);

    let events = collect(
        &rx,
        Duration::from_secs(60),
        Duration::from_millis(1500),
        |e| of_type(e, "close").len() >= N,
    );
    let opens = of_type(&events, "open");
    let closes = of_type(&events, "close");
    assert_eq!(opens.len(), N, "open events");
    assert_eq!(closes.len(), N, "close events");
    assert!(
        of_type(&events, "failed").is_empty(),
        "every handshake succeeded"
    );
    assert_eq!(
        events.len(),
        2 * N,
        "nothing else, nothing for port {}",
        other.port()
    );

    for kind in [&opens, &closes] {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for e in kind.iter() {
            assert_eq!(e["direction"], "inbound");
            assert_eq!(e["port"], port);
            let local = e["local"].as_str().unwrap();
            assert!(
                local == format!("127.0.0.1:{port}") || local == format!("[::1]:{port}"),
                "{e}"
            );
            let remote = e["remote"].as_str().unwrap().to_string();
            assert_eq!(local.starts_with('['), remote.starts_with('['), "{e}");
            assert!(e["ts"].as_str().unwrap().ends_with('Z'), "{e}");
            // Inbound handshakes finish in softirq: the owner is not known under --port.
            assert!(e["pid"].is_null() && e["comm"].is_null(), "{e}");
            *seen.entry(remote).or_default() += 1;
        }
        assert_eq!(seen, clients, "each client connection exactly once");
    }
    for c in &closes {
        let d = c["duration_seconds"]
            .as_f64()
            .expect("a close whose open was seen has a duration");
        assert!((0.0..60.0).contains(&d), "{c}");
    }
    assert_eq!(observer.terminate().code(), Some(0));
}

#[test]
fn text_events_are_one_line_each() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let (observer, rx) =
        Observer::start_with_events(&["--port", &port.to_string(), "--events", "text"]);
    open_close(server.addrs[0], 3);
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while lines.len() < 6 && Instant::now() < end {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| l.contains(" open ")).count(),
        3,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(" close ")).count(),
        3,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains(&format!("port={port} 127.0.0.1:{port} <- 127.0.0.1:")))
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.contains(" close "))
            .all(|l| l.contains(" duration="))
    );
    drop(observer);
}

#[test]
fn sigterm_and_sigint_detach_everything_and_exit_zero() {
    require_root();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut observer = Observer::start(&["--port", "9", "--events", "json"]);
        let ids = observer.program_ids();
        assert_eq!(
            ids.len(),
            4,
            "observer loads its program, the backup and the sweep's two iterators: {ids:?}"
        );
        assert!(ids.iter().all(|id| program_loaded(*id)));
        observer.signal(sig);
        let status = observer.wait(Duration::from_secs(20));
        assert_eq!(
            status.code(),
            Some(0),
            "signal {sig}:\n{}",
            observer.stderr()
        );
        assert!(
            programs_released(&ids),
            "programs {ids:?} still loaded 5 s after signal {sig}"
        );
    }
}

#[test]
fn sighup_is_noted_and_observer_keeps_running() {
    require_root();
    let mut observer = Observer::start(&["--port", "9"]);
    observer.signal(libc::SIGHUP);
    // Its default action kills at once; handled, it leaves one line and changes nothing.
    let end = Instant::now() + Duration::from_secs(5);
    while !observer.stderr().contains("SIGHUP") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        observer.try_wait().is_none(),
        "SIGHUP ended observer:\n{}",
        observer.stderr()
    );
    let said: Vec<String> = observer
        .stderr()
        .lines()
        .filter(|l| l.contains("SIGHUP"))
        .map(str::to_string)
        .collect();
    assert_eq!(said.len(), 1, "{}", observer.stderr());
    observer.scrape();
    observer.signal(libc::SIGTERM);
    assert_eq!(observer.wait(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn a_reader_that_goes_away_ends_observer_even_on_a_quiet_port() {
    require_root();
    // As in `observer --port 9 --events json | head -3` where nothing ever comes.
    let (mut observer, _) = Observer::spawn(&["--port", "9", "--events", "json"], Stdout::Pipe);
    let ids = observer.program_ids();
    drop(observer.take_stdout());
    let status = observer.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", observer.stderr());
    assert!(programs_released(&ids), "programs {ids:?} still loaded");
}

#[test]
fn a_failed_write_to_stdout_is_an_error_not_a_clean_end() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port().to_string();
    // As in `observer --events json > /dev/full`: ENOSPC is no reader gone.
    let (mut observer, _) = Observer::spawn(&["--port", &port, "--events", "json"], Stdout::Full);
    let ids = observer.program_ids();
    open_close(server.addrs[0], 1);
    let status = observer.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", observer.stderr());
    let stderr = observer.stderr();
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !l.starts_with("observer: ready")
                && !l.contains(observer_tests::observer::NO_REQUEST_PROGRAMS)
        })
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].contains("No space left on device"), "{stderr}");
    assert!(programs_released(&ids), "programs {ids:?} still loaded");
}

#[test]
fn the_ring_takes_what_ring_kib_asks_only_with_events() {
    require_root();
    // max_entries of the process's ring buffer map (map_type 27), from its fds' fdinfo.
    let ring = |o: &Observer| -> Option<u64> {
        std::fs::read_dir(format!("/proc/{}/fdinfo", o.pid()))
            .ok()?
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find(|info| info.lines().any(|l| l == "map_type:\t27"))?
            .lines()
            .find_map(|l| l.strip_prefix("max_entries:"))?
            .trim()
            .parse()
            .ok()
    };
    let quiet = Observer::start(&["--port", "9", "--ring-kib", "65536"]);
    assert_eq!(
        ring(&quiet),
        Some(4096),
        "a page, not 64 MiB, without --events"
    );
    drop(quiet);
    let streaming = Observer::start(&["--port", "9", "--ring-kib", "65536", "--events", "json"]);
    assert_eq!(ring(&streaming), Some(65536 * 1024));
}

#[test]
fn a_closed_stdout_ends_observer_cleanly() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port().to_string();
    // As in `observer --port P --events json | head -3`.
    let (mut observer, rx) = Observer::spawn(&["--port", &port, "--events", "json"], Stdout::Lines);
    let rx = rx.unwrap();
    let ids = observer.program_ids();
    let mut got = 0;
    let end = Instant::now() + Duration::from_secs(20);
    while got < 3 && Instant::now() < end {
        open_close(server.addrs[0], 1);
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            got += 1;
        }
    }
    assert_eq!(got, 3);
    drop(rx); // the reader goes away; the pipe closes at its next line
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        open_close(server.addrs[0], 1);
        std::thread::sleep(Duration::from_millis(50));
        if let Some(s) = observer.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "observer kept running with stdout closed"
        );
    };
    assert_eq!(status.code(), Some(0), "{}", observer.stderr());
    assert!(
        !observer.stderr().contains("panicked"),
        "{}",
        observer.stderr()
    );
    assert!(programs_released(&ids), "programs {ids:?} still loaded");
}

#[test]
fn ports_outside_the_tcp_range_are_usage_errors() {
    for bad in ["0", "65536", "http"] {
        let (code, stderr) = run_to_exit(&["--port", bad]);
        assert_eq!(code, Some(2), "--port {bad}: {stderr}");
        assert!(stderr.contains("not a TCP port"), "{stderr}");
    }
}
