//! Installs what observer's build and tests need, on Debian bookworm as root, and only what is
//! missing. The eBPF crate needs a compiler whose `core` source is at hand: rustup cannot fetch
//! rust-src here, so Debian's rustc (rustc-web) and its matching source (rust-web-src) are linked
//! into a rustup toolchain of their own, and bpf-linker is built against Debian's LLVM 22.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages: the eBPF toolchain, the kernel tools the tests use as oracles, the real
/// servers, clients and Prometheus that tests and benchmarks talk to, perf for the bench, and
/// what `vm-test` boots Debian's kernels with (qemu, a static busybox for the guest, the tools
/// that unpack kernel modules and pack the initramfs), and what the least-privilege tests run.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "rust-web-src",
    "cargo-web",
    "llvm-22-dev",
    "bpftool",
    "bpftrace",
    "iproute2",
    // The census test drops a handshake's last ACK with a firewall rule in a test namespace.
    "iptables",
    "prometheus",
    "nginx-light",
    "wrk",
    "apache2-utils",
    // The endpoint's TLS tests: certificates made with openssl, requests made with curl.
    "openssl",
    "curl",
    "linux-perf",
    // The bench's peers: tcplife and tcpstates from libbpf-tools, node_exporter's tcpstat.
    "libbpf-tools",
    "prometheus-node-exporter",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    // The least-privilege tests: setpriv runs observer as another user with ambient
    // capabilities; systemd-analyze verifies the systemd unit.
    "util-linux",
    "systemd",
    // `cargo xtask dist` and its tests: the OCI image (podman, with runc: crun fails on this
    // host's cgroups), the man page (gzip, man-db).
    "podman",
    "runc",
    "gzip",
    "man-db",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Makes the .deb of `cargo xtask dist`.
const CARGO_DEB_VERSION: &str = "3.6.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Name of the linked toolchain; observer/build.rs looks for it.
const TOOLCHAIN: &str = "observer-bpf";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn all() -> Result<()> {
    packages()?;
    bpf_linker()?;
    cargo_deb()?;
    toolchain()?;
    deploy_validators()?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn packages() -> Result<()> {
    debian(PACKAGES)
}

fn bpf_linker() -> Result<()> {
    cargo_tool(
        "bpf-linker",
        BPF_LINKER_VERSION,
        &["--no-default-features", "--features", "llvm-22"],
        Some(("LLVM_PREFIX", LLVM_PREFIX)),
    )
}

fn cargo_deb() -> Result<()> {
    cargo_tool("cargo-deb", CARGO_DEB_VERSION, &[], None)
}

/// `cargo install --locked NAME --version VERSION` unless `NAME --version` says it already.
fn cargo_tool(name: &str, version: &str, args: &[&str], env: Option<(&str, &str)>) -> Result<()> {
    let ok = Command::new(name)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    eprintln!("setup: building {name} {version}");
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "--locked", name, "--version", version])
        .args(args);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

fn toolchain() -> Result<()> {
    let works = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    let home = std::env::var("HOME").context("HOME is not set")?;
    let dir = Path::new(&home).join(".local/share/observer/bpf-toolchain");
    std::fs::create_dir_all(dir.join("bin"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for (link, target) in [
        ("bin/rustc", "/usr/bin/rustc"),
        ("bin/cargo", "/usr/bin/cargo"),
        ("lib", "/usr/lib"),
    ] {
        let link = dir.join(link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("linking {} to {target}", link.display()))?;
    }
    if !Path::new("/usr/lib/rustlib/src/rust/library/core").exists() {
        bail!(
            "Debian's rust-web-src is not installed: /usr/lib/rustlib/src/rust/library/core is missing"
        );
    }
    run(Command::new("rustup")
        .args(["toolchain", "link", TOOLCHAIN])
        .arg(&dir))
}

/// Where the validators of deploy/ live (tests/tests/deploy.rs looks for them here): a Python
/// venv with kubernetes-validate (it ships the Kubernetes API's JSON schemas) and
/// check-jsonschema, and the npm package whose files hold the Prometheus Operator's PodMonitor
/// schema.
pub const DEPLOY_TOOLS: &str = "/var/cache/observer-tools";
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const CHECK_JSONSCHEMA_VERSION: &str = "0.39.0";
/// @kubernetes-models/prometheus-operator: 1.x is the last line whose files hold the CRD's
/// schema as JSON (the PodMonitor's openAPIV3Schema in monitoring.coreos.com/v1/PodMonitor.js);
/// from 4.0 on they hold only validators compiled from it.
const OPERATOR_MODELS_VERSION: &str = "1.6.3";

/// The offline validators of deploy/, each installed only when missing: Debian's python3-venv
/// and npm where they are not there, a venv of pinned PyPI packages, the pinned npm package
/// unpacked (its files are data here: no dependency and no script of it is installed or run).
fn deploy_validators() -> Result<()> {
    let root = Path::new(DEPLOY_TOOLS);
    let venv = root.join("venv");
    let pinned = [
        ("kubernetes-validate", KUBERNETES_VALIDATE_VERSION),
        ("check-jsonschema", CHECK_JSONSCHEMA_VERSION),
    ];
    let venv_ready = pinned.iter().all(|(tool, version)| {
        Command::new(venv.join("bin").join(tool))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
            .unwrap_or(false)
    });
    if !venv_ready {
        debian(&["python3-venv"])?;
        eprintln!(
            "setup: installing kubernetes-validate and check-jsonschema in {}",
            venv.display()
        );
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(
                pinned
                    .iter()
                    .map(|(tool, version)| format!("{tool}=={version}")),
            ))?;
    }

    let models = operator_models_dir();
    let manifest = std::fs::read_to_string(models.join("package.json")).unwrap_or_default();
    let unpacked = serde_json::from_str::<serde_json::Value>(&manifest)
        .is_ok_and(|m| m["version"] == OPERATOR_MODELS_VERSION);
    if !unpacked {
        if Command::new("npm").arg("--version").output().is_err() {
            debian(&["npm"])?;
        }
        let package = format!("@kubernetes-models/prometheus-operator@{OPERATOR_MODELS_VERSION}");
        eprintln!("setup: unpacking {package} in {}", models.display());
        let packs = root.join("npm");
        std::fs::create_dir_all(&packs).with_context(|| format!("creating {}", packs.display()))?;
        run(Command::new("npm")
            .args(["pack", "--silent", &package, "--pack-destination"])
            .arg(&packs)
            .current_dir(&packs)
            .stdout(Stdio::null()))?;
        let tarball = packs.join(format!(
            "kubernetes-models-prometheus-operator-{OPERATOR_MODELS_VERSION}.tgz"
        ));
        let _ = std::fs::remove_dir_all(&models);
        std::fs::create_dir_all(&models)
            .with_context(|| format!("creating {}", models.display()))?;
        run(Command::new("tar")
            .args(["-xzf"])
            .arg(&tarball)
            .args(["--strip-components=1", "-C"])
            .arg(&models))?;
    }
    Ok(())
}

/// Where the npm package is unpacked.
fn operator_models_dir() -> PathBuf {
    Path::new(DEPLOY_TOOLS)
        .join("npm")
        .join(format!("prometheus-operator-{OPERATOR_MODELS_VERSION}"))
}

/// Installs those of `pkgs` that are missing from Debian's archive.
fn debian(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
