//! What users install, as they install it: the static binary, the container image and the .deb
//! that `cargo xtask dist` made (`cargo xtask test` names its directory in OBSERVER_DIST).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use observer_tests::{nginx::Nginx, observer::Observer, require_root};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const IMAGE: &str = concat!("localhost/observer:", env!("CARGO_PKG_VERSION"));

fn dist() -> PathBuf {
    let dir = std::env::var_os("OBSERVER_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dist"));
    assert!(
        dir.join("observer").exists(),
        "{} has no dist build: run `cargo xtask dist` (or `cargo xtask test`)",
        dir.display()
    );
    dir
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    // dpkg refuses at once while another process (apt, a package install of the setup) holds
    // its lock: wait for it, as apt's own DPkg::Lock::Timeout does, rather than fail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        let locked = program == "dpkg"
            && !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("lock was locked by another process");
        if !locked || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_binary_is_static() {
    let binary = dist().join("observer");
    let out = run("ldd", &[binary.to_str().unwrap()]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // glibc's ldd says "not a dynamic executable", or "statically linked" for a static PIE.
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );
    assert!(!said.contains("=>"), "ldd lists libraries: {said}");
    let version = ok(binary.to_str().unwrap(), &["--version"]);
    assert_eq!(version.trim(), format!("observer {VERSION}"));
}

/// The capabilities the DaemonSet grants (deploy/kubernetes/daemonset.yaml), as podman spells
/// them.
fn daemonset_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("the DaemonSet's containers");
    let observer = containers
        .iter()
        .find(|c| c["name"] == "observer")
        .expect("a container named observer");
    let caps = &observer["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]), "{caps}");
    let add: Vec<String> = caps["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("a capability name").to_string())
        .collect();
    assert!(!add.is_empty());
    add
}

/// `podman run` as this host needs it: runc (podman's default crun fails on its cgroups), and
/// rlimits no higher than root here may set.
fn podman_run<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--runtime", "runc", "run", "--rm"];
    all.extend([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    all.extend(args);
    all
}

#[test]
fn the_image_holds_the_static_binary_alone() {
    require_root();
    let dist = dist();
    // The archive is what users get: load it, then run what it holds.
    let archive = dist.join(format!("observer-{VERSION}.oci.tar"));
    let loaded = ok(
        "podman",
        &["load", "--quiet", "--input", archive.to_str().unwrap()],
    );
    assert!(loaded.contains("observer"), "podman load: {loaded}");
    let version = ok("podman", &podman_run(&[IMAGE, "--version"]));
    assert_eq!(version.trim(), format!("observer {VERSION}"));
    // FROM scratch: the binary and the licences, nothing else (no shell to run).
    let inspect = ok(
        "podman",
        &[
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            IMAGE,
        ],
    );
    assert_eq!(inspect.trim(), "1", "one layer, on nothing");
    let shell = run(
        "podman",
        &podman_run(&["--entrypoint", "/bin/sh", IMAGE, "-c", "true"]),
    );
    assert!(!shell.status.success(), "the image has a shell");
}

#[test]
fn the_container_counts_a_host_nginx_exactly_with_the_daemonsets_capabilities() {
    require_root();
    let _ = dist();
    let caps = daemonset_capabilities();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let nginx = Nginx::start();
    let port = nginx.port.to_string();
    let observer = Observer::start_in_container(IMAGE, &caps, &["--port", &port]);

    let before = nginx.accepts();
    const N: u64 = 1000;
    let url = format!("http://127.0.0.1:{port}/");
    // ab: a new connection per request, 10 at a time.
    let report = ok("ab", &["-q", "-n", &N.to_string(), "-c", "10", &url]);
    assert!(
        report.contains(&format!("Complete requests:      {N}")),
        "{report}"
    );
    // Less this reading's own connection to the status port. ab can open a few connections
    // more than it sends requests on: nginx's count is the truth, not N.
    let accepted = nginx.accepts() - before - 1;
    assert!(accepted >= N, "nginx accepted {accepted}");

    let p = nginx.port;
    let s = observer.settle("every connection closed", |s| {
        s.conn("observer_tcp_connections_closed_total", "inbound", p) == Some(accepted as f64)
    });
    assert_eq!(
        s.conn("observer_tcp_connections_opened_total", "inbound", p),
        Some(accepted as f64),
        "opened, against nginx's stub_status"
    );
    assert_eq!(s.established("inbound", p), Some(0.0));
}

/// The .deb installed, removed and purged; purged on drop whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "observer"]);
    }
}

#[test]
fn the_deb_installs_documents_and_removes_cleanly() {
    require_root();
    let deb = dist().join(format!("observer_{VERSION}-1_amd64.deb"));
    let installed = Installed;
    ok("dpkg", &["--install", deb.to_str().unwrap()]);

    let version = ok("/usr/bin/observer", &["--version"]);
    assert_eq!(version.trim(), format!("observer {VERSION}"));
    let out = Command::new("man")
        .arg("observer")
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "man observer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(page.contains("--remote-port"), "{page}");
    for completion in [
        "/usr/share/bash-completion/completions/observer",
        "/usr/share/zsh/vendor-completions/_observer",
        "/usr/share/fish/vendor_completions.d/observer.fish",
    ] {
        let text =
            std::fs::read_to_string(completion).unwrap_or_else(|e| panic!("{completion}: {e}"));
        assert!(text.contains("remote-port"), "{completion}");
    }
    for doc in ["LICENSE-MIT", "LICENSE-APACHE", "copyright"] {
        assert!(
            Path::new("/usr/share/doc/observer").join(doc).exists(),
            "{doc}"
        );
    }
    let unit = "/usr/lib/systemd/system/observer.service";
    let out = run("systemd-analyze", &["verify", unit]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");

    let files: Vec<String> = ok("dpkg", &["--listfiles", "observer"])
        .lines()
        .filter(|f| Path::new(f).is_file())
        .map(String::from)
        .collect();
    assert!(files.iter().any(|f| f == "/usr/bin/observer"), "{files:?}");
    let conffiles = ["/etc/default/observer"];

    // Removed: every file goes but the configuration, which Debian keeps until a purge.
    ok("dpkg", &["--remove", "observer"]);
    let left: Vec<&String> = files
        .iter()
        .filter(|f| Path::new(f).exists() && !conffiles.contains(&f.as_str()))
        .collect();
    assert!(left.is_empty(), "left after dpkg -r: {left:?}");
    // Purged: nothing at all, the configuration and the unit's state included.
    ok("dpkg", &["--purge", "observer"]);
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after dpkg --purge: {left:?}");
    for state in [
        "/etc/systemd/system/observer.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/observer.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-masked/observer.service",
    ] {
        assert!(!Path::new(state).exists(), "{state} left after purge");
    }
    let status = run(
        "dpkg-query",
        &["--show", "--showformat=${Status}", "observer"],
    );
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        !status.contains("installed") || status.contains("not-installed"),
        "dpkg still knows it: {status}"
    );
    drop(installed);
}
