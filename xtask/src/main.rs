//! `cargo xtask <command>`: the project's developer commands. Every command first runs `setup`,
//! which installs what is missing and does nothing when everything is there.
mod bench;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  setup              install what the build and the tests need (idempotent)
  build              set up, then build observer (release)
  run [-- ARGS]      set up, build, then run observer with ARGS (as root)
  test [ARGS]        set up, then run every test (unit and integration, as root)
  bench              set up, then measure observer against its peers; writes BENCHMARKS.md";

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
            let status = Command::new(setup::workspace().join("target/release/observer"))
                .args(args)
                .status()
                .context("starting observer")?;
            Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        "test" => {
            setup::all()?;
            // The integration tests run the observer binary itself.
            cargo(&["build", "--package", "observer"])?;
            let mut args = vec!["test", "--workspace", "--exclude", "observer-ebpf"];
            args.extend(rest.iter().map(String::as_str));
            cargo(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        "bench" => {
            setup::all()?;
            bench::run(&rest)?;
            Ok(ExitCode::SUCCESS)
        }
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
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
