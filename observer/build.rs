//! Builds the eBPF program (crate `observer-ebpf`, target bpfel-unknown-none) and leaves the
//! object in OUT_DIR, where `kernel.rs` embeds it. The toolchain comes from `cargo xtask setup`.
use std::process::Command;

use anyhow::{Context as _, bail};

/// The rustup toolchain that `cargo xtask setup` links to Debian's rustc and its `core` source.
const LINKED_TOOLCHAIN: &str = "observer-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=OBSERVER_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1") {
        // A quick `cargo check`: embed an empty object; loading it fails with a clear error.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("observer");
        std::fs::write(out, b"")?;
        return Ok(());
    }
    let toolchain = match std::env::var("OBSERVER_BPF_TOOLCHAIN") {
        Ok(t) => t,
        Err(_) => pick_toolchain()?,
    };
    // Debian's rustc is a stable compiler: -Z build-std needs RUSTC_BOOTSTRAP, which aya-build
    // also reads to decide whether to pass it.
    // SAFETY: the build script is single-threaded here.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf");
    let package = aya_build::Package {
        name: "observer-ebpf",
        root_dir: root,
        ..Default::default()
    };
    // aya-build watches the eBPF crate; the rules it shares with the daemon live in
    // observer-common, and a change there must rebuild the program too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-common")
    );
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain)).context(
        "building the eBPF program (run `cargo xtask setup` once if the toolchain is missing)",
    )
}

/// The linked toolchain when it exists, else a rustup nightly that has rust-src.
fn pick_toolchain() -> anyhow::Result<String> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running `rustup toolchain list`")?;
    let list = String::from_utf8_lossy(&out.stdout);
    if list.lines().any(|l| l.starts_with(LINKED_TOOLCHAIN)) {
        return Ok(LINKED_TOOLCHAIN.into());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    if let Ok(out) = sysroot
        && out.status.success()
    {
        let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if std::path::Path::new(&root)
            .join("lib/rustlib/src/rust/library/core")
            .exists()
        {
            return Ok("nightly".into());
        }
    }
    bail!(
        "no toolchain can build the eBPF program: run `cargo xtask setup` (links `{LINKED_TOOLCHAIN}`)"
    )
}
