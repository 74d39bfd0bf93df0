//! `cargo xtask dist`: what users install, in target/dist/. One static observer (it runs on any
//! x86_64 Linux whatever its libc, and is the binary the kernel matrix boots), a .deb made by
//! cargo-deb around it, and an OCI image `FROM scratch` holding it, built by podman.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, vm::elf_interpreter};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The image's name, as the DaemonSet (deploy/kubernetes) refers to it.
pub const IMAGE: &str = concat!("localhost/observer:", env!("CARGO_PKG_VERSION"));

/// What `dist` made.
pub struct Dist {
    pub dir: PathBuf,
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| setup::workspace().join("target"))
}

/// `cargo build --release --target TARGET` with `args`, linked statically; returns the directory
/// the binaries are in. The target-specific variable keeps the flag away from the nested eBPF
/// build, which has a target of its own.
pub fn static_build(args: &[&str]) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET])
        .args(args)
        .current_dir(setup::workspace())
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .status()
        .context("starting cargo build")?;
    if !status.success() {
        bail!(
            "cargo build --release --target {TARGET} {} failed ({status})",
            args.join(" ")
        );
    }
    Ok(target_dir().join(TARGET).join("release"))
}

/// Fails unless `binary` is a static executable (no program interpreter to load it).
pub fn check_static(binary: &Path) -> Result<()> {
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    if let Some(interp) =
        elf_interpreter(&bytes).with_context(|| format!("reading {}", binary.display()))?
    {
        bail!(
            "{} is dynamically linked (interpreter {interp}): build it with \
             RUSTFLAGS=\"-C target-feature=+crt-static\" --target {TARGET}",
            binary.display()
        );
    }
    Ok(())
}

pub fn run() -> Result<Dist> {
    let t = Instant::now();
    let release = static_build(&["-p", "observer", "--bin", "observer"])?;
    let built = release.join("observer");
    check_static(&built)?;

    let dir = target_dir().join("dist");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = dir.join("observer");
    fs::copy(&built, &binary).with_context(|| format!("copying {}", built.display()))?;

    generated(&binary, &release.join("generated"))?;
    deb(&dir)?;
    image(&binary, &dir)?;
    checksums(&dir)?;
    println!(
        "dist: {} in {} s: observer (static), {}, observer-{VERSION}.oci.tar ({IMAGE})",
        dir.display(),
        t.elapsed().as_secs(),
        deb_name()
    );
    Ok(Dist { dir })
}

pub fn deb_name() -> String {
    format!("observer_{VERSION}-1_amd64.deb")
}

/// The man page and completions, from the binary's own command-line definition, where the
/// .deb's assets (observer/Cargo.toml) expect them.
fn generated(binary: &Path, out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (kind, file) in [
        ("man", "observer.1"),
        ("complete-bash", "observer.bash"),
        ("complete-zsh", "_observer"),
        ("complete-fish", "observer.fish"),
    ] {
        let o = Command::new(binary)
            .args(["--generate", kind])
            .output()
            .with_context(|| format!("running {} --generate {kind}", binary.display()))?;
        if !o.status.success() || o.stdout.is_empty() {
            bail!(
                "{} --generate {kind} failed ({}): {}",
                binary.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let path = out.join(file);
        fs::write(&path, &o.stdout).with_context(|| format!("writing {}", path.display()))?;
    }
    // Debian ships man pages compressed; -n keeps the name and time out of the header, so that
    // the same page gives the same bytes.
    let _ = fs::remove_file(out.join("observer.1.gz"));
    setup::run(
        Command::new("gzip")
            .args(["-9n"])
            .arg(out.join("observer.1")),
    )
}

fn deb(dir: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    setup::run(
        Command::new(cargo)
            .args(["deb", "-p", "observer", "--no-build", "--target", TARGET])
            .arg("--output")
            .arg(dir.join(deb_name()))
            .current_dir(setup::workspace()),
    )
}

/// The OCI image, built by podman from deploy/container/Containerfile, saved as an OCI archive
/// (and left in podman's local storage as IMAGE).
fn image(binary: &Path, dir: &Path) -> Result<()> {
    let ws = setup::workspace();
    let context = dir.join("image-context");
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    for (from, name) in [
        (binary.to_path_buf(), "observer"),
        (ws.join("LICENSE-MIT"), "LICENSE-MIT"),
        (ws.join("LICENSE-APACHE"), "LICENSE-APACHE"),
    ] {
        fs::copy(&from, context.join(name))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let previous = image_id();
    let built = setup::run(
        Command::new("podman")
            // One layer, on nothing (the COPYs made one), and no cached step images left behind.
            .args(["build", "--quiet", "--format", "oci", "--squash-all"])
            .args(["--build-arg", &format!("VERSION={VERSION}")])
            .args(["--tag", IMAGE, "--file"])
            .arg(ws.join("deploy/container/Containerfile"))
            .arg(&context),
    );
    fs::remove_dir_all(&context).with_context(|| format!("removing {}", context.display()))?;
    built?;
    // The image this one replaced would stay behind untagged, one per build.
    if let Some(old) = previous.filter(|old| Some(old) != image_id().as_ref()) {
        let _ = Command::new("podman")
            .args(["image", "rm", &old])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    setup::run(
        Command::new("podman")
            .args(["save", "--quiet", "--format", "oci-archive", "--output"])
            .arg(dir.join(format!("observer-{VERSION}.oci.tar")))
            .arg(IMAGE),
    )
}

/// The ID of the image tagged IMAGE, if there is one.
fn image_id() -> Option<String> {
    let o = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !id.is_empty()).then_some(id)
}

/// SHA256SUMS, as `sha256sum -c` reads it.
fn checksums(dir: &Path) -> Result<()> {
    let o = Command::new("sha256sum")
        .args([
            "observer".to_string(),
            deb_name(),
            format!("observer-{VERSION}.oci.tar"),
        ])
        .current_dir(dir)
        .output()
        .context("running sha256sum")?;
    if !o.status.success() {
        bail!("sha256sum failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    fs::write(dir.join("SHA256SUMS"), o.stdout).context("writing SHA256SUMS")
}
