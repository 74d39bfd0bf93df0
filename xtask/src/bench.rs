//! `cargo xtask bench`: comes with the benchmarks issue.
use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("the benchmark is not written yet")
}
