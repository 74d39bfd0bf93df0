//! Turns the command line into validated settings, before anything is loaded into the kernel.
use std::{
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs as _},
    path::PathBuf,
};

use observer_common::limits::{MAX_BUCKETS, MAX_CGROUPS, MAX_LOCAL_PORTS, MAX_PIDS};

use crate::{
    by_remote,
    cli::{Cli, RemotePrefix},
    output::Format,
    web_config::{self, WebConfig, WebConfigError},
};

/// A value that parses but cannot be used: one line for the user, exit code 1 (2 for the web
/// configuration file, see `exit_code`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--metrics-addr `{0}` is not an address like 127.0.0.1:18090, [::1]:18090, localhost:18090 or :18090"
    )]
    MetricsAddr(String),
    #[error("--duration-buckets: {0}")]
    Buckets(String),
    #[error("--ring-kib {0}: must be a power of two between 4 and 1048576")]
    Ring(u32),
    #[error("--remote-prefix given twice for {0}")]
    RemotePrefixTwice(&'static str),
    #[error("too many {what}: at most {max}")]
    TooMany { what: &'static str, max: usize },
    /// A usage error: exit code 2, as for a flag that does not parse.
    #[error("--web.config.file {}: {source}", path.display())]
    WebConfig {
        path: PathBuf,
        source: WebConfigError,
    },
}

impl ConfigError {
    /// The exit code: 2 for a web configuration file that cannot be used (the exporters' usage
    /// error), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::WebConfig { .. } => 2,
            _ => 1,
        }
    }
}

/// Default histogram buckets for connection lifetimes, in seconds: 100 µs to 1 h.
/// A steady 1-2.5-5 progression from 100 µs to 1000 s, then the hour: a lifetime anywhere in
/// that range lands in a bucket at most 2.5 times as wide as its lower bound (a 3 s connection
/// reads as 2.5-5 s, where bounds of 1, 10 and 60 s made it 5.5 s at the median).
pub const DEFAULT_BUCKETS: [f64; 24] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 3600.0,
];

#[derive(Clone, Debug)]
pub struct Config {
    pub ports: Vec<u16>,
    pub remote_ports: Vec<u16>,
    pub pids: Vec<u32>,
    pub cgroups: Vec<PathBuf>,
    pub events: Option<Format>,
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds, ascending.
    pub buckets: Vec<f64>,
    pub ring_bytes: u32,
    /// Longest time between two sweeps (see `sweep`).
    pub sweep_interval: std::time::Duration,
    /// TLS, basic auth and headers of the metrics endpoint (`--web.config.file`).
    pub web: WebConfig,
    /// Connections that moved no data for longer than this are idle (see `idle`).
    pub idle_after: Option<std::time::Duration>,
    /// The warning level of established connections per watched port (see `limit`).
    pub warn_connections: Option<u32>,
    /// `--by-remote` and its settings (see `by_remote`).
    pub by_remote: Option<by_remote::Settings>,
    /// `--max-connections` and `--max-ports`, when given (see `sizing`).
    pub max_connections: Option<u32>,
    pub max_ports: Option<u32>,
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let metrics_addr = if cli.no_metrics {
            None
        } else {
            Some(metrics_addr(&cli.metrics_addr)?)
        };
        let buckets = if cli.duration_buckets.is_empty() {
            DEFAULT_BUCKETS.to_vec()
        } else {
            buckets(&cli.duration_buckets)?
        };
        if !cli.ring_kib.is_power_of_two() || !(4..=1 << 20).contains(&cli.ring_kib) {
            return Err(ConfigError::Ring(cli.ring_kib));
        }
        if cli.pids.len() > MAX_PIDS as usize {
            return Err(ConfigError::TooMany {
                what: "--pid",
                max: MAX_PIDS as usize,
            });
        }
        if dedup(cli.ports.clone()).len() > MAX_LOCAL_PORTS as usize {
            return Err(ConfigError::TooMany {
                what: "--port values",
                max: MAX_LOCAL_PORTS as usize,
            });
        }
        // The same directory named twice is one target, not two of the eight.
        let cgroups = dedup(
            cli.cgroups
                .iter()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
                .collect(),
        );
        if cgroups.len() > MAX_CGROUPS as usize {
            return Err(ConfigError::TooMany {
                what: "--cgroup",
                max: MAX_CGROUPS as usize,
            });
        }
        // Read before anything is loaded, and only once: certificates are not reloaded.
        let web = match &cli.web_config_file {
            Some(path) => web_config::load(path).map_err(|source| ConfigError::WebConfig {
                path: path.clone(),
                source,
            })?,
            None => WebConfig::default(),
        };
        let by_remote = if cli.by_remote {
            Some(by_remote_settings(&cli.remote_prefix, cli.max_remotes)?)
        } else {
            None
        };
        Ok(Config {
            by_remote,
            max_connections: cli.max_connections,
            max_ports: cli.max_ports,
            ports: dedup(cli.ports),
            remote_ports: dedup(cli.remote_ports),
            pids: dedup(cli.pids),
            cgroups,
            events: cli.events,
            metrics_addr,
            buckets,
            ring_bytes: cli.ring_kib * 1024,
            sweep_interval: cli.sweep_interval,
            web,
            idle_after: cli.idle_after,
            warn_connections: cli.warn_connections,
        })
    }

    /// No target at all: every listening port of the host.
    pub fn all_listeners(&self) -> bool {
        self.ports.is_empty()
            && self.remote_ports.is_empty()
            && self.pids.is_empty()
            && self.cgroups.is_empty()
    }

    pub fn bucket_bounds_ns(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|s| (s * 1e9).round() as u64)
            .collect()
    }
}

/// The metrics endpoint's address: HOST:PORT, a name that resolves (`localhost:18090`), or
/// `:PORT` for every interface, as Prometheus exporters take it.
fn metrics_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    let bad = || ConfigError::MetricsAddr(s.to_string());
    if let Some(port) = s.strip_prefix(':') {
        let port = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(bad)
}

fn buckets(v: &[f64]) -> Result<Vec<f64>, ConfigError> {
    if v.len() > MAX_BUCKETS {
        return Err(ConfigError::Buckets(format!(
            "at most {MAX_BUCKETS} bounds"
        )));
    }
    if let Some(b) = v.iter().find(|b| !b.is_finite() || **b <= 0.0) {
        return Err(ConfigError::Buckets(format!(
            "{b} is not a positive number of seconds"
        )));
    }
    if v.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ConfigError::Buckets(
            "bounds must be strictly ascending".into(),
        ));
    }
    if v.iter().any(|b| b * 1e9 < 1.0) {
        return Err(ConfigError::Buckets(
            "bounds below one nanosecond are meaningless".into(),
        ));
    }
    Ok(v.to_vec())
}

fn dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

fn by_remote_settings(
    prefixes: &[RemotePrefix],
    max_remotes: u32,
) -> Result<by_remote::Settings, ConfigError> {
    let (mut v4, mut v6) = (None, None);
    for p in prefixes {
        let (slot, name, bits) = match *p {
            RemotePrefix::V4(b) => (&mut v4, "IPv4", b),
            RemotePrefix::V6(b) => (&mut v6, "IPv6", b),
        };
        if slot.replace(bits).is_some() {
            return Err(ConfigError::RemotePrefixTwice(name));
        }
    }
    Ok(by_remote::Settings {
        v4_prefix: v4.unwrap_or(32),
        v6_prefix: v6.unwrap_or(128),
        max_remotes: max_remotes as usize,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["observer"];
        all.extend_from_slice(args);
        Config::from_cli(Cli::try_parse_from(all).unwrap())
    }

    #[test]
    fn defaults() {
        let c = parse(&["--port", "8080"]).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:18090".parse().unwrap()));
        assert_eq!(c.buckets.first(), Some(&0.0001));
        assert_eq!(c.buckets.last(), Some(&3600.0));
        // No bucket wider than 2.5 times its lower bound, so common lifetimes resolve.
        assert!(
            c.buckets.windows(2).all(|w| w[1] / w[0] <= 2.5 + 1e-9),
            "{:?}",
            c.buckets
        );
        assert!(c.buckets.len() <= MAX_BUCKETS);
        assert!(!c.all_listeners());
        assert!(parse(&[]).unwrap().all_listeners());
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(&["--metrics-addr", "localhost"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`localhost`"), "{e}");
        let e = parse(&["--duration-buckets", "1,0.5"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ascending"), "{e}");
        assert!(parse(&["--ring-kib", "1000"]).is_err());
    }

    #[test]
    fn metrics_addresses_as_exporters_take_them() {
        let addr = |a: &str| parse(&["--metrics-addr", a]).map(|c| c.metrics_addr.unwrap());
        assert_eq!(addr(":18090").unwrap(), "0.0.0.0:18090".parse().unwrap());
        assert!(addr("localhost:18090").unwrap().ip().is_loopback());
        assert_eq!(addr("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        for bad in [":", ":http", "localhost", "no.such.host.invalid:1"] {
            assert!(addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_prefixes_one_per_family() {
        let s = by_remote_settings(&[RemotePrefix::V6(48)], 5).unwrap();
        assert_eq!((s.v4_prefix, s.v6_prefix, s.max_remotes), (32, 48, 5));
        let e = by_remote_settings(&[RemotePrefix::V4(24), RemotePrefix::V4(16)], 5).unwrap_err();
        assert_eq!(e.to_string(), "--remote-prefix given twice for IPv4");
    }

    #[test]
    fn limits_are_said_and_duplicates_do_not_count() {
        let many: Vec<String> = (1..=4097).map(|p| p.to_string()).collect();
        let mut args = Vec::new();
        for p in &many {
            args.extend(["--port", p.as_str()]);
        }
        let e = parse(&args).unwrap_err().to_string();
        assert_eq!(e, "too many --port values: at most 4096");
        args.truncate(2 * 4096);
        assert!(parse(&args).is_ok());
        // Nine spellings of two directories are two targets.
        let dir = std::env::temp_dir();
        let mut args = Vec::new();
        let spelled: Vec<String> = (0..8)
            .map(|i| format!("{}{}", dir.display(), "/".repeat(i % 3)))
            .chain([format!("{}/..", dir.display())])
            .collect();
        for p in &spelled {
            args.extend(["--cgroup", p.as_str()]);
        }
        assert_eq!(parse(&args).unwrap().cgroups.len(), 2);
    }

    #[test]
    fn buckets_in_nanoseconds() {
        let c = parse(&["--duration-buckets", "0.001,1,60"]).unwrap();
        assert_eq!(
            c.bucket_bounds_ns(),
            vec![1_000_000, 1_000_000_000, 60_000_000_000]
        );
    }
}
