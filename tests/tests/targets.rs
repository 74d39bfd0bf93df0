//! Attaching by process, by cgroup, to outbound connections, across network namespaces; real
//! processes (`tcp-helper`), real namespaces and cgroups made by the tests.
use std::time::Duration;

use observer_tests::{
    net::{Mode, Server},
    observer::{Observer, loaded_programs, run_to_exit},
    process::Helper,
    require_root,
    sandbox::{Cgroup, Netns},
    scrape::Scrape,
    wait_for,
};
use serde_json::Value;

fn count(s: &Scrape, name: &str, dir: &str, port: u16) -> f64 {
    s.conn(name, dir, port).unwrap_or(0.0)
}

const OPENED: &str = "observer_tcp_connections_opened_total";
const CLOSED: &str = "observer_tcp_connections_closed_total";
const FAILED: &str = "observer_tcp_connections_failed_total";

#[test]
fn pid_counts_every_port_the_process_listens_on_and_nothing_else() {
    require_root();
    let mut server = Helper::start();
    let p1 = server.listen("127.0.0.1:0");
    let mut other = Helper::start();
    let p3 = other.listen("127.0.0.1:0");
    let mut client = Helper::start();

    let (o, events) =
        Observer::start_with_events(&["--pid", &server.pid().to_string(), "--events", "json"]);
    assert_eq!(client.connect(&format!("127.0.0.1:{p1}"), 40), (40, 0));
    // A port the process starts listening on after observer started.
    let p2 = server.listen("[::1]:0");
    assert_eq!(client.connect(&format!("[::1]:{p2}"), 25), (25, 0));
    assert_eq!(client.connect(&format!("127.0.0.1:{p3}"), 30), (30, 0));

    o.settle("40 and 25 closed", |s| {
        count(s, CLOSED, "inbound", p1) == 40.0 && count(s, CLOSED, "inbound", p2) == 25.0
    });
    std::thread::sleep(Duration::from_millis(300));
    let s = o.scrape();
    assert_eq!(count(&s, OPENED, "inbound", p1), 40.0);
    assert_eq!(count(&s, OPENED, "inbound", p2), 25.0);
    assert_eq!(s.established("inbound", p1), Some(0.0));
    assert!(
        s.conn(OPENED, "inbound", p3).is_none(),
        "another process's port leaks in:\n{}",
        s.text
    );
    assert!(
        s.samples(OPENED)
            .iter()
            .all(|(l, _)| !l.iter().any(|(k, v)| k == "direction" && v == "outbound")),
        "the client is another process: no outbound connections of the target"
    );
    // Inbound events under --pid name the process that owns the listening socket.
    let mut opens = 0;
    while let Ok(line) = events.recv_timeout(Duration::from_millis(500)) {
        let e: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["pid"], server.pid(), "{e}");
        assert_eq!(e["comm"], "tcp-helper", "{e}");
        assert!(e["port"] == p1 || e["port"] == p2, "{e}");
        opens += usize::from(e["type"] == "open");
    }
    assert_eq!(opens, 65);

    // The process exits: observer says so and keeps watching its ports.
    let pid = server.pid();
    server.kill();
    let said = wait_for(Duration::from_secs(10), || {
        o.stderr()
            .contains(&format!("process {pid} exited"))
            .then_some(())
    });
    assert!(said.is_some(), "{}", o.stderr());
    let mut again = Helper::start();
    assert_eq!(again.listen(&format!("127.0.0.1:{p1}")), p1);
    client.connect(&format!("127.0.0.1:{p1}"), 5);
    o.settle("a restarted server on the same port", |s| {
        count(s, CLOSED, "inbound", p1) == 45.0
    });
    assert_eq!(o.terminate().code(), Some(0));
}

#[test]
fn cgroup_counts_its_processes_including_those_that_join_later() {
    require_root();
    let cg = Cgroup::new();
    let mut inside = Helper::start();
    cg.add(inside.pid());
    let p1 = inside.listen("127.0.0.1:0");
    let mut outside = Helper::start();
    let p2 = outside.listen("127.0.0.1:0");
    let mut client = Helper::start();

    let o = Observer::start(&["--cgroup", cg.path.to_str().unwrap()]);
    let mut late = Helper::start();
    cg.add(late.pid());
    let p3 = late.listen("127.0.0.1:0");

    assert_eq!(client.connect(&format!("127.0.0.1:{p1}"), 30), (30, 0));
    assert_eq!(client.connect(&format!("127.0.0.1:{p2}"), 20), (20, 0));
    assert_eq!(client.connect(&format!("127.0.0.1:{p3}"), 15), (15, 0));
    let s = o.settle("30 and 15 closed", |s| {
        count(s, CLOSED, "inbound", p1) == 30.0 && count(s, CLOSED, "inbound", p3) == 15.0
    });
    assert_eq!(count(&s, OPENED, "inbound", p1), 30.0);
    assert_eq!(count(&s, OPENED, "inbound", p3), 15.0);
    assert!(
        s.conn(OPENED, "inbound", p2).is_none(),
        "a process outside the cgroup:\n{}",
        s.text
    );

    // Outbound connections opened from inside the cgroup are the cgroup's.
    assert_eq!(late.connect(&format!("127.0.0.1:{p2}"), 12), (12, 0));
    let s = o.settle("12 outbound", |s| count(s, CLOSED, "outbound", p2) == 12.0);
    assert_eq!(count(&s, OPENED, "outbound", p2), 12.0);
    drop(o);
}

#[test]
fn outbound_by_remote_port_and_by_pid_with_failures() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    // A port where nothing listens: bind, note it, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut client = Helper::start();
    let mut bystander = Helper::start();

    let by_port = Observer::start(&[
        "--remote-port",
        &port.to_string(),
        "--remote-port",
        &dead.to_string(),
    ]);
    let (by_pid, events) =
        Observer::start_with_events(&["--pid", &client.pid().to_string(), "--events", "json"]);

    assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 50), (50, 0));
    assert_eq!(client.connect(&format!("127.0.0.1:{dead}"), 7), (0, 7));
    assert_eq!(bystander.connect(&format!("127.0.0.1:{port}"), 10), (10, 0));

    let s = by_port.settle("60 outbound closed", |s| {
        count(s, CLOSED, "outbound", port) == 60.0
    });
    assert_eq!(count(&s, OPENED, "outbound", port), 60.0, "every process");
    assert_eq!(count(&s, FAILED, "outbound", dead), 7.0);
    assert_eq!(count(&s, OPENED, "outbound", dead), 0.0);

    let s = by_pid.settle("50 outbound closed", |s| {
        count(s, CLOSED, "outbound", port) == 50.0
    });
    assert_eq!(
        count(&s, OPENED, "outbound", port),
        50.0,
        "only the target process"
    );
    assert_eq!(count(&s, FAILED, "outbound", dead), 7.0);

    let mut seen = (0, 0, 0);
    while let Ok(line) = events.recv_timeout(Duration::from_millis(500)) {
        let e: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["direction"], "outbound", "{e}");
        assert_eq!(e["pid"], client.pid(), "the connecting process: {e}");
        assert_eq!(e["comm"], "tcp-helper", "{e}");
        match e["type"].as_str().unwrap() {
            "open" => seen.0 += 1,
            "close" => seen.1 += 1,
            "failed" => {
                assert_eq!(e["port"], dead, "{e}");
                assert_eq!(e["remote"], format!("127.0.0.1:{dead}"), "{e}");
                seen.2 += 1
            }
            t => panic!("{t}"),
        }
    }
    assert_eq!(seen, (50, 50, 7));
}

#[test]
fn pid_counts_only_its_own_network_namespace() {
    require_root();
    let (a, b, c) = (Netns::new(), Netns::new(), Netns::new());
    let (server_ip, _) = Netns::link(&a, &b, 1);
    let mut server = Helper::start_in(&a.name);
    let port = server.listen(&format!("{server_ip}:8080"));
    // The same port in a third namespace, busy too.
    let mut twin = Helper::start_in(&c.name);
    twin.listen("127.0.0.1:8080");
    let mut twin_client = Helper::start_in(&c.name);
    let mut client = Helper::start_in(&b.name);

    let o = Observer::start(&["--pid", &server.pid().to_string()]);
    assert_eq!(client.connect(&format!("{server_ip}:{port}"), 33), (33, 0));
    assert_eq!(twin_client.connect("127.0.0.1:8080", 21), (21, 0));
    o.settle("33 closed", |s| count(s, CLOSED, "inbound", 8080) == 33.0);
    // Give the twin's closes time to land, had they leaked in.
    std::thread::sleep(Duration::from_millis(500));
    let s = o.scrape();
    assert_eq!(
        count(&s, OPENED, "inbound", 8080),
        33.0,
        "the twin in another namespace stays out"
    );
    assert_eq!(count(&s, CLOSED, "inbound", 8080), 33.0);
    assert_eq!(s.established("inbound", 8080), Some(0.0));
    drop(o);
}

#[test]
fn bad_targets_are_one_clear_error_and_leave_nothing_loaded() {
    require_root();
    let before = loaded_programs();
    // A child that exited and is not waited for: a zombie, with no sockets left.
    let mut zombie = std::process::Command::new("true").spawn().expect("true");
    let zpid = zombie.id();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{zpid}/stat")).is_ok_and(|s| s.contains(") Z "))
        && std::time::Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--pid".into(), zpid.to_string()],
            "has exited (a zombie",
        ),
        (
            vec!["--pid".into(), "4000000".into()],
            "--pid 4000000: no such process",
        ),
        (vec!["--pid".into(), "2".into()], "kernel thread"),
        (
            vec!["--cgroup".into(), "/no/such/cgroup".into()],
            "--cgroup /no/such/cgroup: no such directory",
        ),
        (
            vec!["--cgroup".into(), "/tmp".into()],
            "--cgroup /tmp: not a cgroup v2 directory",
        ),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = run_to_exit(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    assert!(loaded_programs() <= before, "nothing left loaded");
    let _ = zombie.wait();
}

#[test]
fn no_target_leaves_out_observers_own_endpoint_unless_named() {
    require_root();
    let o = Observer::start(&[]);
    let own = o.metrics.expect("metrics address").port();
    for _ in 0..3 {
        o.scrape();
    }
    let s = o.scrape();
    let label = format!("port=\"{own}\"");
    assert!(
        !s.text.lines().any(|l| l.contains(&label)),
        "its own port {own} is counted:\n{}",
        s.text
    );
    drop(o);
    // Named with --port, it is counted like any port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let o = Observer::start(&["--port", &port.to_string(), "--metrics-addr", &addr]);
    for _ in 0..3 {
        o.scrape();
    }
    let s = o.settle("its own scrapes counted", |s| {
        count(s, CLOSED, "inbound", port) >= 3.0
    });
    assert!(count(&s, CLOSED, "inbound", port) >= 3.0);
}

#[test]
fn no_target_counts_every_listening_port_each_under_its_own_label() {
    require_root();
    let before = Server::start(&["127.0.0.1"], Mode::Hold);
    let o = Observer::start(&[]);
    let mut after = Helper::start();
    let p2 = after.listen("127.0.0.1:0");
    let p1 = before.port();
    let mut client = Helper::start();
    assert_eq!(client.connect(&format!("127.0.0.1:{p1}"), 9), (9, 0));
    assert_eq!(client.connect(&format!("127.0.0.1:{p2}"), 4), (4, 0));
    let s = o.settle("9 and 4 closed", |s| {
        count(s, CLOSED, "inbound", p1) == 9.0 && count(s, CLOSED, "inbound", p2) == 4.0
    });
    assert_eq!(count(&s, OPENED, "inbound", p1), 9.0);
    assert_eq!(count(&s, OPENED, "inbound", p2), 4.0);
    // Client sides are not inbound connections of any port.
    assert!(
        s.samples(OPENED)
            .iter()
            .all(|(l, _)| l.iter().any(|(k, v)| k == "direction" && v == "inbound"))
    );
    drop(o);
}

#[test]
fn outbound_connections_open_before_observer_are_counted_from_the_first_scrape() {
    require_root();
    let server = Server::start(&["127.0.0.1"], Mode::Hold);
    let port = server.port();
    let mut client = Helper::start();
    client.hold(&format!("127.0.0.1:{port}"), 17);
    let mut bystander = Helper::start();
    bystander.hold(&format!("127.0.0.1:{port}"), 5);

    let by_pid = Observer::start(&["--pid", &client.pid().to_string()]);
    let by_port = Observer::start(&["--remote-port", &port.to_string()]);
    assert_eq!(
        by_pid.scrape().established("outbound", port),
        Some(17.0),
        "the target's own"
    );
    assert_eq!(
        by_port.scrape().established("outbound", port),
        Some(22.0),
        "every process's"
    );

    client.release();
    bystander.release();
    let s = by_pid.settle("17 closed", |s| count(s, CLOSED, "outbound", port) == 17.0);
    assert_eq!(s.established("outbound", port), Some(0.0));
    let s = by_port.settle("22 closed", |s| count(s, CLOSED, "outbound", port) == 22.0);
    assert_eq!(s.established("outbound", port), Some(0.0));
    assert_eq!(
        count(&s, OPENED, "outbound", port),
        0.0,
        "opened before observer"
    );
}

#[test]
fn without_root_observer_says_so_and_exits_1() {
    require_root();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(observer_tests::observer::binary())
        .args(["--port", "8080", "--no-metrics", "--events", "json"])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("CAP_BPF (to load") && err.contains("CAP_PERFMON (to attach"),
        "{err}"
    );
}

#[test]
fn a_new_process_given_an_exited_targets_pid_is_not_watched() {
    require_root();
    let mut target = Helper::start();
    let pid = target.pid();
    let port = target.listen("127.0.0.1:0");
    let elsewhere = Server::start(&["127.0.0.1"], Mode::Hold);
    let o = Observer::start(&["--pid", &pid.to_string()]);
    let mut client = Helper::start();
    assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 5), (5, 0));
    o.settle("the target's 5 closed", |s| {
        count(s, CLOSED, "inbound", port) == 5.0
    });
    target.kill();
    wait_for(Duration::from_secs(5), || {
        o.stderr()
            .contains(&format!("process {pid} exited"))
            .then_some(())
    })
    .expect("observer says the target exited");

    // Another process with the same PID listens and connects: none of it is the target's.
    let mut reborn = Helper::start_with_pid(pid).expect("a process with the target's PID");
    let p2 = reborn.listen("127.0.0.1:0");
    assert_eq!(client.connect(&format!("127.0.0.1:{p2}"), 5), (5, 0));
    let out = elsewhere.addrs[0].to_string();
    assert_eq!(reborn.connect(&out, 5), (5, 0));
    std::thread::sleep(Duration::from_millis(500));
    let s = o.scrape();
    assert!(
        s.conn(OPENED, "inbound", p2).is_none(),
        "the new process's port is not watched:\n{}",
        s.text
    );
    let dport = elsewhere.port();
    assert!(
        s.conn(OPENED, "outbound", dport).is_none(),
        "the new process's connections are not the target's:\n{}",
        s.text
    );
    assert_eq!(count(&s, OPENED, "inbound", port), 5.0);
}

#[test]
fn a_connect_that_times_out_is_failed() {
    require_root();
    let (a, b) = (Netns::new(), Netns::new());
    let (_, _) = Netns::link(&a, &b, 2);
    // Nobody has 10.213.2.3: the SYN never gets an answer. One retry: ETIMEDOUT after ~3 s.
    b.sysctl("net.ipv4.tcp_syn_retries", "1");
    let mut client = Helper::start_in(&b.name);
    let (o, events) = Observer::start_with_events(&["--remote-port", "9", "--events", "json"]);
    assert_eq!(client.connect("10.213.2.3:9", 2), (0, 2));
    let s = o.settle("2 failed", |s| count(s, FAILED, "outbound", 9) == 2.0);
    assert_eq!(count(&s, OPENED, "outbound", 9), 0.0);
    assert_eq!(
        s.value(
            "observer_tcp_connections",
            &[("port", "9"), ("state", "syn_sent")]
        ),
        Some(0.0)
    );
    let failed: Vec<Value> =
        std::iter::from_fn(|| events.recv_timeout(Duration::from_millis(500)).ok())
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().all(|e| e["type"] == "failed"
        && e["remote"] == "10.213.2.3:9"
        && e["pid"] == client.pid()));
}

/// The PIDs in observer's kernel filter of target processes.
fn filtered_pids(o: &Observer) -> Vec<u32> {
    let map = observer_tests::bpftool::map_of(o.pid(), "PIDS");
    observer_tests::bpftool::map_entries(map)
        .iter()
        .map(|(k, _)| u32::from_le_bytes(k[..4].try_into().unwrap()))
        .collect()
}

/// `--pid` is a process tree: the children the target forked before observer started and
/// after, and theirs, listen and connect as the target; a child that exits leaves the filter.
#[test]
fn pid_covers_its_process_tree_present_and_future() {
    require_root();
    let mut server = Helper::start();
    let (old, old_pid) = server.spawn_child();
    let reply = server.child(old, "listen 127.0.0.1:0");
    let p_old: u16 = reply.strip_prefix("listening ").unwrap().parse().unwrap();
    let mut upstream = Helper::start();
    let r = upstream.listen("127.0.0.1:0");
    let mut client = Helper::start();

    let (o, events) =
        Observer::start_with_events(&["--pid", &server.pid().to_string(), "--events", "json"]);
    let (new, new_pid) = server.spawn_child();
    let reply = server.child(new, "listen 127.0.0.1:0");
    let p_new: u16 = reply.strip_prefix("listening ").unwrap().parse().unwrap();
    let reply = server.child(new, "spawn");
    let grandchild: u32 = reply.split_whitespace().nth(2).unwrap().parse().unwrap();

    assert_eq!(client.connect(&format!("127.0.0.1:{p_old}"), 10), (10, 0));
    assert_eq!(client.connect(&format!("127.0.0.1:{p_new}"), 20), (20, 0));
    assert_eq!(
        server.child(old, &format!("connect 127.0.0.1:{r} 5")),
        "connected 5 0"
    );
    assert_eq!(
        server.child(new, &format!("child 0 connect 127.0.0.1:{r} 7")),
        "connected 7 0"
    );
    let s = o.settle("every connection closed", |s| {
        count(s, CLOSED, "inbound", p_old) == 10.0
            && count(s, CLOSED, "inbound", p_new) == 20.0
            && count(s, CLOSED, "outbound", r) == 12.0
    });
    assert_eq!(count(&s, OPENED, "outbound", r), 12.0);
    // The client is no descendant: its connections are not outbound ones of the target.
    for p in [p_old, p_new] {
        assert!(s.conn(OPENED, "outbound", p).is_none(), "{}", s.text);
    }
    let mut by_pid = std::collections::BTreeMap::new();
    while let Ok(line) = events.recv_timeout(Duration::from_millis(500)) {
        let e: Value = serde_json::from_str(&line).unwrap();
        if e["type"] == "open" && e["direction"] == "outbound" {
            *by_pid.entry(e["pid"].as_u64().unwrap() as u32).or_insert(0) += 1;
        }
    }
    assert_eq!(
        by_pid,
        std::collections::BTreeMap::from([(old_pid, 5), (grandchild, 7)])
    );

    let mut pids = filtered_pids(&o);
    pids.sort_unstable();
    let mut want = vec![server.pid(), old_pid, new_pid, grandchild];
    want.sort_unstable();
    assert_eq!(pids, want);
    // The new child exits (its child, left without stdin, follows): both leave the filter.
    server.reap(new);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let p = filtered_pids(&o);
            (!p.contains(&new_pid) && !p.contains(&grandchild)).then_some(())
        })
        .is_some(),
        "exited descendants still in the filter: {:?}",
        filtered_pids(&o)
    );
    assert!(filtered_pids(&o).contains(&old_pid));
}
