//! Command-line interface. Parsing only: `config` validates what needs the system to check.
use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::output::Format;

/// Default address of the metrics endpoint: loopback only, on a port outside the range that the
/// Prometheus exporters' registry has allocated (9100-9999).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:18090";

#[derive(Debug, Parser)]
#[command(
    name = "observer",
    version,
    about = "Watch the TCP connections of a running server from the kernel (eBPF), with no change to the server.",
    long_about = "Watch the TCP connections of a running server from the kernel (eBPF), with no change \
to the server: no restart, no code, no sidecar. observer counts connections per port and state, \
serves them to Prometheus, and can print every open/close as it happens. Connections that were \
already open when observer started are counted too. Needs CAP_BPF and CAP_PERFMON (and, by target, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN: the README says which), not root.",
    after_help = "\
Targets (combine and repeat them; the watched set is their union):
  --port 8080            inbound connections to local port 8080, in every network namespace
  --pid 1234             inbound connections on every port process 1234 listens on (now or later),
                         and the outbound connections it opens; its network namespace only
  --cgroup PATH          the same for every process in that cgroup v2 directory and below
  --remote-port 5432     outbound connections to remote port 5432, from any process
  (none)                 inbound connections on every listening port of the host

Examples:
  observer --port 8080                          serve metrics on http://127.0.0.1:18090/metrics
  observer --port 8080 --events text            and print each open/close/failed connection
  observer --pid $(pgrep -o nginx) --events json --no-metrics | jq .
  observer --remote-port 5432 --metrics-addr 0.0.0.0:18090
  observer --port 8080 --metrics-addr :18090 --web.config.file /etc/observer/web.yml
                                                TLS and basic auth, as exporters take them"
)]
pub struct Cli {
    /// Watch inbound connections to this local port (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = port)]
    pub ports: Vec<u16>,

    /// Watch a process: the ports it listens on and the connections it opens (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Watch every process of a cgroup v2 directory and below (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Watch outbound connections to this remote port, from any process (repeatable).
    #[arg(long = "remote-port", value_name = "PORT", value_parser = port)]
    pub remote_ports: Vec<u16>,

    /// Print one line per connection opened, closed or failed: `text` for people, `json` (one
    /// object per line) for jq and log shippers.
    #[arg(long, value_name = "FORMAT")]
    pub events: Option<Format>,

    /// Where to serve Prometheus metrics (GET /metrics): HOST:PORT, a name that resolves
    /// (localhost:18090), or :PORT for every interface, as exporters take it.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: String,

    /// Protect the metrics endpoint with TLS and basic auth, from a file in the Prometheus
    /// exporter-toolkit's format (tls_server_config, basic_auth_users, http_server_config),
    /// read once at start.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,

    /// Serve no metrics (events only, so --events is required).
    #[arg(
        long,
        conflicts_with_all = ["metrics_addr", "web_config_file"],
        requires = "events"
    )]
    pub no_metrics: bool,

    /// Upper bounds of the connection-duration histogram, in seconds, comma-separated and
    /// ascending, at most 31 [default: 100 µs to 1000 s in steps of 1-2.5-5, then 3600]
    #[arg(long, value_name = "SECONDS,...", value_delimiter = ',')]
    pub duration_buckets: Vec<f64>,

    /// Size of the event ring buffer in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    pub ring_kib: u32,

    /// Longest time between two sweeps for connections whose close the kernel did not deliver
    /// (they are swept for at once when it reports a lost transition): 1s to 1h, as 30s, 5m.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = sweep_interval)]
    pub sweep_interval: Duration,

    /// Count the established connections that moved no data either way for longer than this
    /// (observer_tcp_connections_idle), and print an `idle` event for each as it crosses it:
    /// 1s to 24h, as 30s, 5m.
    #[arg(long, value_name = "DURATION", value_parser = idle_after)]
    pub idle_after: Option<Duration>,

    /// A warning level for the established connections of each watched port: exported as
    /// observer_tcp_connections_limit, and a `limit` event when a port's count reaches it and
    /// when it falls back under it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub warn_connections: Option<u32>,
    /// Also count established connections per remote address, kept in the kernel like every
    /// other count (observer_tcp_connections_by_remote).
    #[arg(long)]
    pub by_remote: bool,

    /// With --by-remote, per prefix instead of per address: a length up to 32 is an IPv4
    /// prefix, 33 to 128 an IPv6 one, or name it: v4:N, v6:N (repeat for both).
    #[arg(long, value_name = "BITS", requires = "by_remote", value_parser = remote_prefix)]
    pub remote_prefix: Vec<RemotePrefix>,

    /// With --by-remote, at most this many remotes per watched port have a series of their
    /// own (those with the most connections first; a remote keeps its series while it has
    /// connections); the rest are summed under remote="other".
    #[arg(long, value_name = "N", default_value_t = 100, requires = "by_remote",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_remotes: u32,

    /// The most connections tracked at once, in kernel memory sized at start (~128 bytes
    /// each): 1024 to 16777216 [default: 65536, or twice the watched connections open at start]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1_024..=16_777_216))]
    pub max_connections: Option<u32>,

    /// The most (direction, port) pairs with counters of their own, in per-CPU kernel memory
    /// (~450 bytes each per CPU): 1 to 4096 [default: the named ports; 1024 where ports are found
    /// as they come (--pid, --cgroup, no target)]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4_096))]
    pub max_ports: Option<u32>,

    /// (for packagers) Print the man page or a shell's completion script, then exit.
    #[arg(long, value_name = "KIND", hide = true)]
    pub generate: Option<Generate>,
}

/// What `--generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

/// A `--remote-prefix`: which family, and its length in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemotePrefix {
    V4(u8),
    V6(u8),
}

fn remote_prefix(s: &str) -> Result<RemotePrefix, String> {
    let bad = || format!("`{s}` is not a prefix length like 24, 64, v4:16 or v6:48");
    let bits = |v: &str| v.parse::<u8>().map_err(|_| bad());
    match s.split_once(':') {
        Some(("v4", n)) => match bits(n)? {
            n @ 0..=32 => Ok(RemotePrefix::V4(n)),
            _ => Err(format!("`{s}`: an IPv4 prefix is at most 32 bits")),
        },
        Some(("v6", n)) => match bits(n)? {
            n @ 0..=128 => Ok(RemotePrefix::V6(n)),
            _ => Err(format!("`{s}`: an IPv6 prefix is at most 128 bits")),
        },
        Some(_) => Err(bad()),
        None => match bits(s)? {
            n @ 0..=32 => Ok(RemotePrefix::V4(n)),
            n @ 33..=128 => Ok(RemotePrefix::V6(n)),
            _ => Err(format!("`{s}`: a prefix is at most 128 bits")),
        },
    }
}

fn idle_after(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if (Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&d) => Ok(d),
        Ok(_) => Err(format!("`{s}` is not between 1s and 24h")),
        Err(e) => Err(format!("`{s}` is not a duration like 30s or 5m: {e}")),
    }
}

fn sweep_interval(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) => Ok(d),
        Ok(_) => Err(format!("`{s}` is not between 1s and 1h")),
        Err(e) => Err(format!("`{s}` is not a duration like 30s or 5m: {e}")),
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("`{s}` is not a TCP port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ports_repeat_and_are_checked() {
        let c = Cli::try_parse_from(["observer", "--port", "80", "--port", "8080"]).unwrap();
        assert_eq!(c.ports, vec![80, 8080]);
        for bad in ["0", "65536", "-1", "http"] {
            let e = Cli::try_parse_from(["observer", "--port", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn no_metrics_needs_events() {
        // Without either, observer would count and show nothing.
        let e = Cli::try_parse_from(["observer", "--no-metrics"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--events"), "{e}");
        assert!(Cli::try_parse_from(["observer", "--no-metrics", "--events", "json"]).is_ok());
    }

    #[test]
    fn sweep_interval_is_a_bounded_duration() {
        let c = Cli::try_parse_from(["observer"]).unwrap();
        assert_eq!(c.sweep_interval, Duration::from_secs(60));
        let c = Cli::try_parse_from(["observer", "--sweep-interval", "5m"]).unwrap();
        assert_eq!(c.sweep_interval, Duration::from_secs(300));
        for bad in ["0s", "500ms", "2h", "soon", "10"] {
            let e = Cli::try_parse_from(["observer", "--sweep-interval", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn web_config_file_is_spelled_as_exporters_spell_it() {
        let c = Cli::try_parse_from(["observer", "--web.config.file", "web.yml"]).unwrap();
        assert_eq!(c.web_config_file, Some(PathBuf::from("web.yml")));
        // Nothing to protect without an endpoint.
        let e = Cli::try_parse_from([
            "observer",
            "--no-metrics",
            "--events",
            "json",
            "--web.config.file",
            "web.yml",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn idle_after_is_a_bounded_duration() {
        assert_eq!(Cli::try_parse_from(["observer"]).unwrap().idle_after, None);
        let c = Cli::try_parse_from(["observer", "--idle-after", "5m"]).unwrap();
        assert_eq!(c.idle_after, Some(Duration::from_secs(300)));
        for bad in ["0", "0s", "500ms", "25h", "soon", "10", ""] {
            let e = Cli::try_parse_from(["observer", "--idle-after", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn warn_connections_is_a_positive_count() {
        let c = Cli::try_parse_from(["observer", "--warn-connections", "10"]).unwrap();
        assert_eq!(c.warn_connections, Some(10));
        for bad in ["0", "-1", "ten", "4294967296"] {
            let e = Cli::try_parse_from(["observer", "--warn-connections", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn by_remote_flags() {
        let c = Cli::try_parse_from(["observer", "--by-remote"]).unwrap();
        assert!(c.by_remote);
        assert_eq!((c.max_remotes, c.remote_prefix.len()), (100, 0));
        let c = Cli::try_parse_from([
            "observer",
            "--by-remote",
            "--remote-prefix",
            "24",
            "--remote-prefix",
            "64",
            "--max-remotes",
            "1",
        ])
        .unwrap();
        assert_eq!(
            c.remote_prefix,
            vec![RemotePrefix::V4(24), RemotePrefix::V6(64)]
        );
        assert_eq!(c.max_remotes, 1);
        for (arg, v) in [
            ("v6:32", RemotePrefix::V6(32)),
            ("v4:0", RemotePrefix::V4(0)),
        ] {
            let c = Cli::try_parse_from(["observer", "--by-remote", "--remote-prefix", arg]);
            assert_eq!(c.unwrap().remote_prefix, vec![v]);
        }
        for bad in ["129", "v4:33", "v5:1", "x", "-1", ""] {
            let e = Cli::try_parse_from(["observer", "--by-remote", "--remote-prefix", bad]);
            assert_eq!(e.unwrap_err().exit_code(), 2, "{bad}");
        }
        for bad in ["0", "10001", "many"] {
            let e = Cli::try_parse_from(["observer", "--by-remote", "--max-remotes", bad]);
            assert_eq!(e.unwrap_err().exit_code(), 2, "{bad}");
        }
        // Without --by-remote they would do nothing.
        for flag in ["--remote-prefix", "--max-remotes"] {
            let e = Cli::try_parse_from(["observer", flag, "24"]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{flag}");
        }
    }

    #[test]
    fn map_sizes_are_bounded() {
        let c = Cli::try_parse_from(["observer", "--max-connections", "3000000"]).unwrap();
        assert_eq!(c.max_connections, Some(3_000_000));
        let c = Cli::try_parse_from(["observer", "--max-ports", "16"]).unwrap();
        assert_eq!(c.max_ports, Some(16));
        for bad in ["0", "1023", "16777217", "lots"] {
            let e = Cli::try_parse_from(["observer", "--max-connections", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
        for bad in ["0", "4097"] {
            let e = Cli::try_parse_from(["observer", "--max-ports", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn events_formats() {
        let c = Cli::try_parse_from(["observer", "--port", "1", "--events", "json"]).unwrap();
        assert_eq!(c.events, Some(Format::Json));
        assert!(Cli::try_parse_from(["observer", "--events", "xml"]).is_err());
    }
}
