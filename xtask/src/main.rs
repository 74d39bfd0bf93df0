//! `cargo xtask <command>`: the project's developer commands. Every command first runs `setup`,
//! which installs what is missing and does nothing when everything is there.
mod bench;
mod dist;
mod setup;
mod vm;

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// The project's developer commands. Each one first runs `setup`, which installs only what is
/// missing.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Xtask {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build and the tests need (idempotent).
    Setup,
    /// Set up, then build observer (release).
    Build,
    /// Set up, build, then run observer with ARGS (as root).
    Run {
        /// observer's own arguments, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then build what users install into target/dist: the static binary, the .deb
    /// and the OCI image.
    Dist,
    /// Set up, build the dist, then run every test, unit and integration (as root).
    Test {
        /// Passed on to `cargo test` as written (`--test soak -- --ignored`, `-- --nocapture`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CARGO_TEST_ARGS"
        )]
        _args: Vec<String>,
    },
    /// The gates CI runs first: rustfmt, and clippy with warnings as errors on every crate, the
    /// eBPF ones included.
    Lint,
    /// Set up, then measure observer against its peers; writes BENCHMARKS.md.
    Bench {
        /// A short run for trying changes; BENCHMARKS.md is left as it is.
        #[arg(long)]
        quick: bool,
    },
    /// Set up, then boot Debian's kernels under qemu and run the guest tests against static
    /// builds.
    VmTest {
        /// 5.10 6.1 6.12 6.12-trixie 7 (default: all), a Debian package name, or a .deb.
        kernels: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Xtask::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Setup => setup::all().map(|_| ExitCode::SUCCESS),
        Command::Build => {
            setup::all()?;
            cargo(&["build", "--release", "--package", "observer"])?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { args } => {
            setup::all()?;
            cargo(&["build", "--release", "--package", "observer"])?;
            let args = args.iter().skip_while(|a| *a == "--");
            // Become observer, so that signals (a supervisor's SIGTERM too) reach it directly.
            use std::os::unix::process::CommandExt as _;
            let err =
                std::process::Command::new(setup::workspace().join("target/release/observer"))
                    .args(args)
                    .exec();
            Err(err).context("starting observer")
        }
        Command::Dist => {
            setup::all()?;
            dist::run().map(|_| ExitCode::SUCCESS)
        }
        Command::Test { .. } => {
            setup::all()?;
            // The integration tests run the observer binary itself: this build's, named to them;
            // the dist tests run what users install.
            let observer = build_observer()?;
            let dist = dist::run()?;
            // What follows `test` goes to cargo test as written: clap drops a `--` that comes
            // first, which `cargo xtask test -- --nocapture` needs kept.
            let rest: Vec<String> = std::env::args()
                .skip_while(|a| a != "test")
                .skip(1)
                .collect();
            let mut all = vec!["test", "--workspace"];
            for ebpf in EBPF_CRATES {
                all.extend(["--exclude", ebpf]);
            }
            all.extend(rest.iter().map(String::as_str));
            test(&all, &observer, &dist.dir)
        }
        Command::Lint => {
            setup::all()?;
            lint()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { quick } => {
            setup::all()?;
            bench::run(quick)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::VmTest { kernels } => {
            setup::all()?;
            vm::run(&kernels)
        }
    }
}

/// The crates that build only for bpfel-unknown-none: observer's program, and the bench's
/// floor (an empty program).
const EBPF_CRATES: [&str; 2] = ["observer-ebpf", "bench-floor-ebpf"];

/// rustfmt and clippy, warnings as errors, on every crate of the workspace (the bench's floor
/// too, which is no default member). The eBPF crates build for bpfel-unknown-none (from
/// build.rs), so clippy checks them on their own, for the host: the toolchain that builds them
/// for the kernel is Debian's rustc linked into rustup, which has no clippy. They are `no_std`,
/// so they need panic=abort there, and a target directory of their own so that the flag does
/// not rebuild everything else.
fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    let mut host = vec!["clippy", "--workspace", "--all-targets"];
    for ebpf in EBPF_CRATES {
        host.extend(["--exclude", ebpf]);
    }
    host.extend(["--", "-D", "warnings"]);
    cargo(&host)?;
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for ebpf in EBPF_CRATES {
        let status = std::process::Command::new(&cargo_bin)
            .args(["clippy", "--package", ebpf, "--target-dir"])
            .arg(setup::workspace().join("target/clippy-ebpf"))
            .args(["--", "-D", "warnings"])
            .env("CARGO_PROFILE_DEV_PANIC", "abort")
            .current_dir(setup::workspace())
            .status()
            .with_context(|| format!("starting clippy on {ebpf}"))?;
        if !status.success() {
            bail!("clippy on {ebpf} failed ({status})");
        }
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and ends with one line that sums every test
/// binary's results (cargo's own last line is often a doc-test run of 0 tests).
fn test(args: &[&str], observer: &std::path::Path, dist: &std::path::Path) -> Result<ExitCode> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = std::process::Command::new(cargo)
        .args(args)
        .env("OBSERVER_BIN", observer)
        .env("OBSERVER_DIST", dist)
        .current_dir(setup::workspace())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The number just before `word` in a cargo test summary ("ok. 5 passed; 0 failed; ...").
fn count_before(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Builds observer (debug) and returns its binary's path, from cargo's own report of what it
/// built rather than a guess at the target directory.
fn build_observer() -> Result<std::path::PathBuf> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = std::process::Command::new(cargo)
        .args([
            "build",
            "--package",
            "observer",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(setup::workspace())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo build")?;
    let mut exe = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo build's output")?;
        exe = executable(&line, "observer").or(exe);
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("cargo build --package observer failed ({status})");
    }
    exe.context("cargo built no observer binary")
}

/// The executable of binary target `name` in one line of cargo's JSON messages.
fn executable(line: &str, name: &str) -> Option<std::path::PathBuf> {
    let m: serde_json::Value = serde_json::from_str(line).ok()?;
    (m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .then(|| m["executable"].as_str().map(Into::into))
        .flatten()
}

/// Runs cargo (the one that runs xtask) in the workspace.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(args)
        .current_dir(setup::workspace())
        .status()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn finds_the_binary_in_cargos_messages() {
        let built = r#"{"reason":"compiler-artifact","target":{"name":"observer","kind":["bin"]},"executable":"/w/target/debug/observer"}"#;
        assert_eq!(
            super::executable(built, "observer"),
            Some("/w/target/debug/observer".into())
        );
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"observer-common","kind":["lib"]},"executable":null}"#;
        assert_eq!(super::executable(lib, "observer"), None);
        assert_eq!(super::executable("not json", "observer"), None);
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Xtask::command().debug_assert();
    }

    #[test]
    fn reads_cargo_test_summaries() {
        let ok =
            "ok. 22 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.36s";
        assert_eq!(
            (count_before(ok, " passed"), count_before(ok, " failed")),
            (22, 0)
        );
        let bad = "FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(
            (count_before(bad, " passed"), count_before(bad, " failed")),
            (5, 1)
        );
    }
}
