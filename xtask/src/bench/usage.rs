//! What a process uses: CPU time from /proc/PID/stat; memory, in its resident set
//! (/proc/PID/status) and in the kernel, for the BPF maps it keeps (their `memlock`).
use std::{
    collections::{BTreeMap, btree_map::Entry},
    fs,
};

use anyhow::{Context as _, Result, anyhow};
use serde_json::Value;

use super::{MIB, bpf::bpftool_progs};

/// CPU seconds (user + system, all threads) a process has used, from /proc/PID/stat.
pub(super) fn cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| anyhow!("unexpected {path}: {stat}"))?;
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_sec)
}

/// utime + stime, in clock ticks, of a /proc/PID/stat line.
fn cpu_ticks(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are fields 14 and 15 of the line, 12th and 13th after the name.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some(ticks(11)? + ticks(12)?)
}

/// What a process holds in memory, read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Memory {
    /// Peak and current resident set size (VmHWM, VmRSS), KiB.
    pub(super) peak_rss_kib: u64,
    pub(super) rss_kib: u64,
    /// Kernel memory charged for the BPF maps it keeps (their `memlock`), bytes: the maps it
    /// holds an fd of, and the maps its programs use that it holds no fd of (observer closes
    /// its fd of a map its programs keep alive).
    pub(super) maps_bytes: u64,
}

impl Memory {
    pub(super) fn of(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name| status_kib(&status, name).ok_or_else(|| anyhow!("no {name} in {path}"));
        Ok(Memory {
            peak_rss_kib: field("VmHWM:")?,
            rss_kib: field("VmRSS:")?,
            maps_bytes: maps_bytes(pid)?,
        })
    }

    pub(super) fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }

    pub(super) fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    pub(super) fn maps_mib(&self) -> f64 {
        self.maps_bytes as f64 / MIB
    }
}

/// A `Name:   N kB` field of /proc/PID/status, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The `memlock:` of every BPF map process `pid` keeps, summed once per map.
fn maps_bytes(pid: u32) -> Result<u64> {
    let held = observer_tests::observer::map_fds(pid)
        .into_iter()
        .map(|m| (m.id, m.memlock));
    let mut used = Vec::new();
    for prog in observer_tests::observer::programs_of(pid) {
        let prog = u32::try_from(prog).context("a program ID")?;
        used.extend(observer_tests::bpftool::map_ids(&bpftool_progs(Some(
            prog,
        ))?));
    }
    sum_maps(held, used, |id| {
        let map = observer_tests::bpftool::try_json(&["map", "show", "id", &id.to_string()])
            .map_err(|e| anyhow!(e))?;
        map_memlock(&map).ok_or_else(|| anyhow!("no bytes_memlock for map {id}: {map}"))
    })
}

/// `bytes_memlock` of one map of `bpftool map show --json`.
fn map_memlock(map: &Value) -> Option<u64> {
    map["bytes_memlock"].as_u64()
}

/// The maps held by fd, (id, bytes), and those the programs use, each counted once; `size_of`
/// gives the size of a map used but not held.
fn sum_maps(
    held: impl IntoIterator<Item = (u64, u64)>,
    used: impl IntoIterator<Item = u64>,
    mut size_of: impl FnMut(u64) -> Result<u64>,
) -> Result<u64> {
    let mut maps: BTreeMap<u64, u64> = held.into_iter().collect();
    for id in used {
        if let Entry::Vacant(map) = maps.entry(id) {
            map.insert(size_of(id)?);
        }
    }
    Ok(maps.values().sum())
}

#[cfg(test)]
mod tests {
    use observer_tests::observer::map_fd;

    use super::*;

    /// `/proc/PID/fd` of `observer --port 19103` as `readlink` shows it (`== FD TARGET`),
    /// with /proc/PID/fdinfo/FD under each BPF fd.
    const FDS: &str = include_str!("testdata/observer_fds.txt");

    fn fds(listing: &str) -> Vec<(&str, &str)> {
        listing
            .split("== ")
            .skip(1)
            .map(|fd| {
                let (head, info) = fd.split_once('\n').unwrap();
                (head.split_once(' ').unwrap().1, info)
            })
            .collect()
    }

    fn held(listing: &str) -> Vec<(u64, u64)> {
        fds(listing)
            .into_iter()
            .filter(|(target, _)| *target == "anon_inode:bpf-map")
            .map(|(_, info)| {
                let m = map_fd(info).unwrap();
                (m.id, m.memlock)
            })
            .collect()
    }

    #[test]
    fn reads_cpu_ticks_from_stat() {
        let stat = include_str!("testdata/observer_stat.txt");
        assert_eq!(cpu_ticks(stat), Some(75.0));
        // A command name may hold spaces and parentheses.
        let odd = "7 (a b) c) S 1 1 1 0 -1 0 0 0 0 0 3 4 0 0 20 0\n";
        assert_eq!(cpu_ticks(odd), Some(7.0));
        assert_eq!(cpu_ticks("7 (short) S 1"), None);
    }

    #[test]
    fn reads_the_resident_set_from_status() {
        let status = include_str!("testdata/observer_status.txt");
        assert_eq!(status_kib(status, "VmHWM:"), Some(38_592));
        assert_eq!(status_kib(status, "VmRSS:"), Some(15_892));
        assert_eq!(status_kib(status, "VmNone:"), None);
    }

    #[test]
    fn reads_a_maps_memlock_from_its_fdinfo_only() {
        let all = fds(FDS);
        let map = all
            .iter()
            .find(|(t, _)| *t == "anon_inode:bpf-map")
            .unwrap();
        assert!(map_fd(map.1).is_some());
        // A program's fdinfo has a memlock line too, and a link's has a prog_id: not maps.
        for kind in ["anon_inode:bpf-prog", "anon_inode:bpf_link"] {
            let (_, info) = all.iter().find(|(t, _)| *t == kind).unwrap();
            assert_eq!(map_fd(info), None, "{kind}");
        }
        assert_eq!(held(FDS).len(), 15);
    }

    #[test]
    fn sums_the_maps_held_and_the_maps_its_programs_use_once_each() {
        let progs: Vec<Value> = include_str!("testdata/observer_progs.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let maps: BTreeMap<u64, u64> = include_str!("testdata/observer_maps.jsonl")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|m| (m["id"].as_u64().unwrap(), map_memlock(&m).unwrap()))
            .collect();
        let used: Vec<u64> = progs
            .iter()
            .flat_map(observer_tests::bpftool::map_ids)
            .collect();
        let mut asked = Vec::new();
        let total = sum_maps(held(FDS), used, |id| {
            asked.push(id);
            Ok(maps[&id])
        })
        .unwrap();
        // SOCKETS (32 MiB), CGROUPS and FREE_SLOTS: used by the programs, no fd left.
        assert_eq!(asked, [42033, 42024, 42026]);
        assert_eq!(total, 108_000_028);
        // The fds alone: 71 MiB.
        assert_eq!(
            sum_maps(held(FDS), [], |_| unreachable!()).unwrap(),
            74_427_320
        );
        // bpftrace's counting script: its map and its perf buffer map.
        let bpftrace = held(include_str!("testdata/bpftrace_fds.txt"));
        assert_eq!(sum_maps(bpftrace, [], |_| unreachable!()).unwrap(), 394_440);
    }

    #[test]
    fn memory_in_mib() {
        let m = Memory {
            peak_rss_kib: 38_592,
            rss_kib: 15_892,
            maps_bytes: 108_000_028,
        };
        assert!((m.peak_rss_mib() - 37.6875).abs() < 1e-9);
        assert!((m.rss_mib() - 15.519_531_25).abs() < 1e-9);
        assert!((m.maps_mib() - 102.996_853).abs() < 1e-6);
    }
}
