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
    "prometheus",
    "nginx-light",
    "wrk",
    "apache2-utils",
    // The endpoint's TLS tests: certificates made with openssl, requests made with curl.
    "openssl",
    "curl",
    "linux-perf",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    // The least-privilege tests: setpriv runs observer as another user with ambient
    // capabilities; systemd-analyze verifies the systemd unit.
    "util-linux",
    "systemd",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
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
    toolchain()?;
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
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX))
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

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
