//! Least privilege: observer runs as a user with only the capabilities the README documents,
//! under a host's 64 KiB memlock limit, counts exactly, and keeps only CAP_BPF once started; a
//! capability missing is named at start, and nothing is loaded. (This kernel charges BPF maps to
//! the memory cgroup: the memlock limit must not matter, and is not touched. Kernels before 5.11
//! charge them to the limit: `cargo xtask vm-test`'s `least_privilege` tests those.)
use std::time::Duration;

use observer_tests::{
    observer::{HOST_MEMLOCK, Observer, binary, loaded_program_ids},
    privilege::{CAP_BPF, effective_caps, memlock_limit},
    process::Helper,
    require_root,
    sandbox::Cgroup,
};

/// The tests here that start observers run one at a time: one of them counts the programs
/// loaded on the machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const OPENED: &str = "observer_tcp_connections_opened_total";
const CLOSED: &str = "observer_tcp_connections_closed_total";
/// What this machine needs for each target, the README's set: CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH find which process holds each socket (`--pid`, `--cgroup`: the servers
/// here are root's), and CAP_SYS_PTRACE the network namespaces of other users' processes
/// (`--port` counts every namespace). No other network namespace exists here, so no
/// CAP_SYS_ADMIN.
const CAPS: [&str; 4] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search"];

#[test]
fn with_only_the_documented_capabilities_each_target_counts_exactly() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Helper::start();
    let port = server.listen("127.0.0.1:0");
    let cgroup = Cgroup::new();
    cgroup.add(server.pid());
    let mut client = Helper::start();
    let port_arg = port.to_string();
    let pid_arg = server.pid().to_string();
    let cgroup_arg = cgroup.path.display().to_string();
    for args in [
        ["--port", port_arg.as_str()],
        ["--pid", pid_arg.as_str()],
        ["--cgroup", cgroup_arg.as_str()],
    ] {
        let o = Observer::start_with_caps(&CAPS, &args);
        assert_eq!(
            effective_caps(o.pid()).expect("a CapEff line"),
            CAP_BPF,
            "{args:?}: only CAP_BPF is kept once started"
        );
        let host = HOST_MEMLOCK.to_string();
        assert_eq!(
            memlock_limit(o.pid()).expect("a Max locked memory line"),
            (host.clone(), host),
            "{args:?}: the memlock limit, which this kernel does not charge, as it was"
        );
        assert_eq!(client.connect(&format!("127.0.0.1:{port}"), 20), (20, 0));
        let s = o.settle(&format!("{args:?}: 20 closed"), |s| {
            s.conn(CLOSED, "inbound", port) == Some(20.0)
        });
        assert_eq!(s.conn(OPENED, "inbound", port), Some(20.0), "{args:?}");
        assert_eq!(s.established("inbound", port), Some(0.0), "{args:?}");
        // The sweep, which reads the kernel's maps, runs with CAP_BPF alone.
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            observer_tests::observer::warnings(&o.stderr()).is_empty(),
            "{args:?}: {}",
            o.stderr()
        );
    }
}

#[test]
fn a_missing_capability_is_named_at_start_and_nothing_is_loaded() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = loaded_program_ids();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+bpf",
            "--ambient-caps=+bpf",
        ])
        .arg(binary())
        .args(["--pid", "1", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CAP_PERFMON (to attach"), "{err}");
    assert!(
        err.contains("CAP_SYS_PTRACE (to find which process"),
        "{err}"
    );
    assert!(!err.contains("CAP_BPF"), "it has CAP_BPF: {err}");
    let after = loaded_program_ids();
    assert!(
        after.is_subset(&before),
        "no program loaded: {:?} new",
        after.difference(&before).collect::<Vec<_>>()
    );
}

/// The unit in deploy/systemd, with its ExecStart pointed at this build (verify checks that
/// the binary exists), in a directory that goes away with it.
fn unit_for_this_build() -> (observer_tests::sandbox::TempDir, std::path::PathBuf) {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/observer.service"
    ))
    .expect("deploy/systemd/observer.service");
    assert!(unit.contains("ExecStart=/usr/bin/observer "), "{unit}");
    let dir = observer_tests::sandbox::TempDir::new("unit");
    let here = binary().display().to_string();
    let path = dir.write(
        "observer.service",
        &unit.replace("/usr/bin/observer", &here),
    );
    (dir, path)
}

#[test]
fn the_systemd_unit_verifies_clean_and_is_well_sandboxed() {
    let (_dir, unit) = unit_for_this_build();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for observer.service: ")
                .nth(1)
        })
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    // The README gives 3.1 ("OK"); systemd calls up to 3.9 OK, from 4 medium.
    assert!(score <= 3.5, "exposure {score}:\n{text}");
}
