//! Builds the empty eBPF program (crate `bench-floor-ebpf`) into OUT_DIR, as observer/build.rs
//! builds observer's. Only the bench builds this crate, after `cargo xtask setup` has linked
//! the toolchain; OBSERVER_BPF_TOOLCHAIN names another, as for observer.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=OBSERVER_BPF_TOOLCHAIN");
    let toolchain =
        std::env::var("OBSERVER_BPF_TOOLCHAIN").unwrap_or_else(|_| "observer-bpf".into());
    // Debian's rustc is a stable compiler: -Z build-std needs RUSTC_BOOTSTRAP (see observer's).
    // SAFETY: the build script is single-threaded here.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let package = aya_build::Package {
        name: "bench-floor-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../floor-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
        .context("building the floor's eBPF program (run `cargo xtask setup` once)")
}
