//! The machine the bench ran on, for the report's header.
use std::fs;

use anyhow::{Context as _, Result};

use crate::setup;

use super::{MIB, process::capture};

pub(super) struct Machine {
    pub(super) date: String,
    pub(super) kernel: String,
    pub(super) cpu: String,
    pub(super) cores: usize,
    pub(super) memory_gib: f64,
    pub(super) debian: String,
    pub(super) nofile: String,
    pub(super) nginx: String,
    pub(super) ab: String,
    pub(super) bpftrace: String,
    pub(super) libbpf_tools: String,
    pub(super) node_exporter: String,
    pub(super) ss: String,
    pub(super) observer: String,
}

impl Machine {
    pub(super) fn read() -> Result<Machine> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let meminfo = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let limits = fs::read_to_string("/proc/self/limits").context("reading limits")?;
        Ok(Machine {
            date: capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?,
            kernel: capture("uname", &["-r"])?,
            cpu: field_after(&cpuinfo, "model name", ':').unwrap_or_else(|| "unknown".into()),
            cores: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            memory_gib: field_after(&meminfo, "MemTotal", ':')
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / MIB),
            debian: fs::read_to_string("/etc/debian_version")
                .unwrap_or_default()
                .trim()
                .to_string(),
            nofile: limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4))
                .unwrap_or("?")
                .to_string(),
            nginx: capture("nginx", &["-v"])?
                .trim_start_matches("nginx version: nginx/")
                .to_string(),
            // "This is ApacheBench, Version 2.3 <$Revision$>"
            ab: capture("ab", &["-V"])?
                .lines()
                .next()
                .and_then(|l| l.split(" <").next())
                .unwrap_or_default()
                .trim_start_matches("This is ")
                .replace(", Version", "")
                .to_string(),
            bpftrace: capture("bpftrace", &["--version"])?,
            libbpf_tools: capture("dpkg-query", &["-W", "-f", "${Version}", "libbpf-tools"])?,
            node_exporter: capture(
                "dpkg-query",
                &["-W", "-f", "${Version}", "prometheus-node-exporter"],
            )?,
            ss: capture("ss", &["-V"])?,
            observer: observer_revision()?,
        })
    }
}

pub(super) fn field_after(text: &str, key: &str, sep: char) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(sep))
        .map(|(_, v)| v.trim().to_string())
}

pub(super) fn observer_revision() -> Result<String> {
    let dir = setup::workspace();
    let dir = dir.to_str().context("workspace path")?;
    let commit = capture("git", &["-C", dir, "rev-parse", "--short", "HEAD"])?;
    // Only the crates that make the binary.
    let changes = capture(
        "git",
        &[
            "-C",
            dir,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "observer",
            "observer-common",
            "observer-ebpf",
        ],
    )?;
    Ok(if changes.is_empty() {
        format!("commit {commit}")
    } else {
        format!("commit {commit} with uncommitted changes")
    })
}
