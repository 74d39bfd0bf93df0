//! `cargo xtask <command>`: the project's developer commands. Every command first runs `setup`,
//! which installs what is missing and does nothing when everything is there.
mod bench;
mod setup;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  setup              install what the build and the tests need (idempotent)
  build              set up, then build observer (release)
  run [-- ARGS]      set up, build, then run observer with ARGS (as root)
  test [ARGS]        set up, then run every test (unit and integration, as root)
  bench              set up, then measure observer against its peers; writes BENCHMARKS.md
  vm-test [KERNEL..] set up, then boot Debian's kernels under qemu and run the guest tests
                     against static builds; KERNEL: 5.10 6.1 6.12 6.12-trixie 7 (default: all),
                     a Debian package name, or a .deb";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "setup" => setup::all().map(|_| ExitCode::SUCCESS),
        "build" => {
            setup::all()?;
            cargo(&["build", "--release", "--package", "observer"])?;
            Ok(ExitCode::SUCCESS)
        }
        "run" => {
            setup::all()?;
            cargo(&["build", "--release", "--package", "observer"])?;
            let args = rest.iter().skip_while(|a| *a == "--");
            // Become observer, so that signals (a supervisor's SIGTERM too) reach it directly.
            use std::os::unix::process::CommandExt as _;
            let err = Command::new(setup::workspace().join("target/release/observer"))
                .args(args)
                .exec();
            Err(err).context("starting observer")
        }
        "test" => {
            setup::all()?;
            // The integration tests run the observer binary itself.
            cargo(&["build", "--package", "observer"])?;
            let mut args = vec!["test", "--workspace", "--exclude", "observer-ebpf"];
            args.extend(rest.iter().map(String::as_str));
            test(&args)
        }
        "bench" => {
            setup::all()?;
            bench::run(&rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "vm-test" => {
            setup::all()?;
            vm::run(&rest)
        }
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

/// Runs `cargo test`, passing its output through, and ends with one line that sums every test
/// binary's results (cargo's own last line is often a doc-test run of 0 tests).
fn test(args: &[&str]) -> Result<ExitCode> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
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

/// Runs cargo (the one that runs xtask) in the workspace.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
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
