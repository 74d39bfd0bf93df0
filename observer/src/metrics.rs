//! Prometheus metrics, read from the kernel's maps at scrape time (plus the start-up snapshot),
//! and a minimal HTTP endpoint for them. A scrape reads one entry per watched (direction, port):
//! its cost does not grow with the number of connections, but for the socket census (`census`),
//! which a scrape runs at most once a second.
use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use observer_common::{
    DIR_INBOUND,
    ending::{BY_LOCAL, BY_NAMES, BY_REMOTE, BY_UNKNOWN, FAILURE_REASONS, REASON_NAMES},
    stats::{PortStats, StatsKey},
    tcp,
};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::{
    by_remote::{self, Selection},
    census::{self, Census},
    exposition::{Kind, Text},
    idle,
    kernel::Kernel,
    snapshot::Baseline,
};

/// Reads the kernel's counters at each scrape.
pub struct ConnCollector {
    kernel: Arc<Mutex<Kernel>>,
    baseline: Baseline,
    /// Ports that are watched from the start (so that they show up at 0).
    static_keys: Vec<StatsKey>,
    bucket_bounds: Vec<f64>,
    /// The idle scan's results (`--idle-after`).
    idle: Option<Arc<Mutex<idle::Report>>>,
    /// `--warn-connections`.
    limit: Option<u32>,
    /// The socket census (TIME_WAIT, listen queues, pending handshakes).
    census: Option<Arc<Mutex<Census>>>,
    /// `--by-remote`: its settings, and which remotes have a series (kept between scrapes).
    by_remote: Option<(by_remote::Settings, Mutex<Selection>)>,
}

/// What a scrape shows besides the kernel's counters, each where its flag asked for it.
#[derive(Default)]
pub struct Opted {
    /// The idle scan's results (`--idle-after`).
    pub idle: Option<Arc<Mutex<idle::Report>>>,
    /// `--warn-connections`.
    pub limit: Option<u32>,
    /// The socket census (with the metrics endpoint).
    pub census: Option<Arc<Mutex<Census>>>,
    /// `--by-remote`.
    pub by_remote: Option<by_remote::Settings>,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

const FAMILIES: [Family; 23] = [
    Family {
        name: "observer_tcp_connections",
        help: "Watched sockets in each TCP state right now; time_wait from the socket census at the last scrape.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_tcp_connections_opened_total",
        help: "Connections that reached ESTABLISHED while observed.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_tcp_connections_closed_total",
        help: "Established connections (also those open before observer started) that reached CLOSE while observed.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_tcp_connections_failed_total",
        help: "Handshakes that ended in CLOSE without reaching ESTABLISHED, by reason: refused (RST to the SYN), timeout (no answer), unreachable (ICMP error), reset (an inbound handshake reset or given up), abandoned (closed locally first), other.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_tcp_connections_reset_total",
        help: "Established connections that ended with a reset (a RST sent or received) instead of an orderly close.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_tcp_connections_closed_by_total",
        help: "Closed connections by the side that closed first: local (this host's FIN or abort), remote (the peer's FIN or RST), unknown (a close the kernel did not deliver).",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_tcp_connection_duration_seconds",
        help: "Lifetime, ESTABLISHED to CLOSE, of connections whose opening was observed.",
        kind: Kind::Histogram,
    },
    Family {
        name: "observer_events_dropped_total",
        help: "Events the kernel could not hand to userspace (ring buffer full). Metrics are not affected.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_kernel_errors_total",
        help: "Things the kernel program could not do, by reason; the metrics may be off when these move.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_kernel_backup_transitions_total",
        help: "Transitions the kernel skipped for observer's main program (another tracing program was running on that CPU) that its backup program counted.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_kernel_skipped_runs_total",
        help: "Runs of observer's programs that the kernel skipped because a tracing program was already running on that CPU (recursion_misses), by program.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_kernel_nested_runs_total",
        help: "Runs of observer's main program that began inside another run of it on the same CPU (a softirq's transition interrupting it): kernels without a recursion guard for it (5.10) run it nested where newer ones skip it.",
        kind: Kind::Counter,
    },
    Family {
        name: "observer_tcp_connections_idle",
        help: "Established watched connections that moved no data in either direction for longer than --idle-after, at the last scan.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_tcp_connections_limit",
        help: "The warning level of established connections per watched port (--warn-connections).",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_tcp_connections_by_remote",
        help: "Established watched connections per remote address, or prefix (--remote-prefix); remotes beyond --max-remotes per port summed under remote=\"other\".",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_idle_scan_duration_seconds",
        help: "Wall time of the last scan for idle connections.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_idle_scan_cpu_seconds",
        help: "CPU time of the last scan for idle connections.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_tcp_listen_queue",
        help: "Connections waiting for accept() on the listeners of a watched port, summed over them (SO_REUSEPORT, IPv4 and IPv6, every watched namespace), at the last census.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_tcp_listen_queue_max",
        help: "Backlog of the listeners of a watched port (the most connections that may wait for accept()), summed over them, at the last census.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_tcp_handshakes_pending",
        help: "Inbound handshakes of a watched port waiting for the client's ACK (the kernel's request sockets, not in the syn_recv state), at the last census.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_census_duration_seconds",
        help: "Wall time of the last socket census.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_census_cpu_seconds",
        help: "CPU time of the last socket census.",
        kind: Kind::Gauge,
    },
    Family {
        name: "observer_build_info",
        help: "observer's version.",
        kind: Kind::Gauge,
    },
];

impl ConnCollector {
    pub fn new(
        kernel: Arc<Mutex<Kernel>>,
        baseline: Baseline,
        static_keys: Vec<StatsKey>,
        bucket_bounds: Vec<f64>,
        opted: Opted,
    ) -> ConnCollector {
        ConnCollector {
            kernel,
            baseline,
            static_keys,
            bucket_bounds,
            idle: opted.idle,
            limit: opted.limit,
            census: opted.census,
            by_remote: opted
                .by_remote
                .map(|b| (b, Mutex::new(Selection::new(b.max_remotes)))),
        }
    }

    /// Writes every family (those with no sample left out), reading the kernel once.
    pub fn write(&self, t: &mut Text) {
        // First, and outside the kernel's lock, which a census takes for a moment itself.
        let census: Option<census::Report> = self
            .census
            .as_ref()
            .map(|c| c.lock().expect("census").latest(&self.kernel));
        let (stats, local_ports, health, remotes) = {
            let k = self.kernel.lock().expect("kernel lock");
            let remotes = k.remote_counts().unwrap_or_else(|e| {
                eprintln!("observer: warning: {e:#}");
                None
            });
            (k.stats(), k.local_ports(), k.health(), remotes)
        };
        // Every watched key, even those the kernel has not counted anything for yet.
        let mut keys: BTreeSet<StatsKey> = self.static_keys.iter().copied().collect();
        keys.extend(
            local_ports
                .iter()
                .map(|(k, _)| StatsKey::new(DIR_INBOUND, k.port)),
        );
        keys.extend(self.baseline.gauges.keys().copied());
        keys.extend(stats.keys().copied());
        if let Some(c) = &census {
            keys.extend(c.counts.time_wait.keys().copied());
        }
        // Taken once: a scan that ends meanwhile does not mix two scans in one scrape.
        let idle = self
            .idle
            .as_ref()
            .map(|r| r.lock().expect("idle report").clone());
        let rows: Vec<Row> = keys
            .iter()
            .map(|key| Row {
                dir: direction(key.direction),
                port: key.port.to_string(),
                stats: stats.get(key).unwrap_or(&PortStats::ZERO),
                base: self.baseline.gauges.get(key),
                idle: idle.as_ref().map(|r| r.idle.get(key).copied().unwrap_or(0)),
                time_wait: census
                    .as_ref()
                    .map(|c| c.counts.time_wait.get(key).copied().unwrap_or(0)),
            })
            .collect();

        // Lines per watched port: the states, opened, closed, the failure reasons, reset, who
        // closed, the histogram's buckets, +Inf, sum and count, idle and limit, and the census's
        // time_wait and three per-port gauges; none is longer than 160 bytes.
        let lines =
            tcp::GAUGED.len() + 4 + FAILURE_REASONS.len() + 2 + self.bucket_bounds.len() + 5 + 4;
        t.reserve(rows.len() * lines * 160 + 64 * 1024);
        let mut fams = FAMILIES.iter();
        // One family after another, each over every watched (direction, port).
        let name = open(t, &mut fams, !rows.is_empty());
        for r in &rows {
            for state in tcp::GAUGED {
                let v = r.stats.gauge(state) + r.base.map_or(0, |b| b[state as usize]);
                let labels = [
                    ("direction", r.dir),
                    ("port", r.port.as_str()),
                    ("state", tcp::name(state)),
                ];
                t.sample(name, &labels, v as f64);
            }
            // Not a kernel gauge: the kernel program never sees time-wait sockets.
            if let Some(n) = r.time_wait {
                let labels = [
                    ("direction", r.dir),
                    ("port", r.port.as_str()),
                    ("state", tcp::name(tcp::TIME_WAIT)),
                ];
                t.sample(name, &labels, n as f64);
            }
        }
        let per_row = |t: &mut Text, name: &str, v: &dyn Fn(&PortStats) -> u64| {
            for r in &rows {
                t.sample(name, &r.labels(), v(r.stats) as f64);
            }
        };
        let name = open(t, &mut fams, !rows.is_empty());
        per_row(t, name, &|s| s.opened);
        let name = open(t, &mut fams, !rows.is_empty());
        per_row(t, name, &|s| s.closed);
        let name = open(t, &mut fams, !rows.is_empty());
        for r in &rows {
            for reason in FAILURE_REASONS {
                let labels = [
                    ("direction", r.dir),
                    ("port", r.port.as_str()),
                    ("reason", REASON_NAMES[reason as usize]),
                ];
                t.sample(name, &labels, r.stats.failed_by[reason as usize] as f64);
            }
        }
        let name = open(t, &mut fams, !rows.is_empty());
        per_row(t, name, &|s| s.reset);
        let name = open(t, &mut fams, !rows.is_empty());
        for r in &rows {
            for by in [BY_LOCAL, BY_REMOTE, BY_UNKNOWN] {
                let n = r.stats.closed_by[by as usize];
                // Unknown only where it happened: the kernel failed to deliver a close.
                if by != BY_UNKNOWN || n != 0 {
                    let labels = [
                        ("direction", r.dir),
                        ("port", r.port.as_str()),
                        ("by", BY_NAMES[by as usize]),
                    ];
                    t.sample(name, &labels, n as f64);
                }
            }
        }
        let name = open(t, &mut fams, !rows.is_empty());
        for r in &rows {
            let s = &r.stats;
            t.histogram(
                name,
                &r.labels(),
                &self.bucket_bounds,
                &s.buckets[..self.bucket_bounds.len()],
                s.duration_sum_ns as f64 / 1e9,
                s.duration_count,
            );
        }
        let name = open(t, &mut fams, true);
        t.sample(name, &[], health.ring_full as f64);
        let name = open(t, &mut fams, true);
        for (reason, n) in [
            ("sockets_map_full", Some(health.sockets_full)),
            ("ports_map_full", Some(health.ports_full)),
            ("snapshot_map_full", Some(health.seen_full)),
            ("listeners_map_full", Some(health.local_ports_full)),
            ("stale_socket_retired", Some(health.stale_sockets)),
            ("late_open_counted", Some(health.late_opens)),
            ("pids_map_full", Some(health.pids_full)),
            ("cgroup_unknown", Some(health.cgroup_unknown)),
            ("map_busy", Some(health.map_busy)),
            // Only where the kernel counts skipped runs: lost is derived from that count.
            ("lost_transition", health.lost),
        ] {
            if let Some(n) = n {
                t.sample(name, &[("reason", reason)], n as f64);
            }
        }
        let name = open(t, &mut fams, true);
        t.sample(name, &[], health.nested as f64);
        // Left out where the kernel keeps no count (before 5.12), rather than shown as 0.
        let skipped = [
            ("main", health.skipped_main),
            ("backup", health.skipped_backup),
            ("request", health.skipped_request),
        ];
        let f = fams.next().expect("skipped runs");
        if skipped.iter().any(|(_, n)| n.is_some()) {
            t.family(f.name, f.help, f.kind);
            for (program, n) in skipped {
                if let Some(n) = n {
                    t.sample(f.name, &[("program", program)], n as f64);
                }
            }
        }
        let name = open(t, &mut fams, true);
        t.sample(name, &[], health.nested_runs as f64);
        // The idle and limit families only with their flags: every watched port, even at 0.
        let f = fams.next().expect("idle");
        if idle.is_some() && !rows.is_empty() {
            t.family(f.name, f.help, f.kind);
            for r in &rows {
                t.sample(f.name, &r.labels(), r.idle.unwrap_or(0) as f64);
            }
        }
        let f = fams.next().expect("limit");
        if let Some(n) = self.limit.filter(|_| !rows.is_empty()) {
            t.family(f.name, f.help, f.kind);
            for r in &rows {
                t.sample(f.name, &r.labels(), n.into());
            }
        }
        let f = fams.next().expect("by remote");
        if let (Some((settings, selection)), Some(counts)) = (&self.by_remote, remotes) {
            let groups: Vec<StatsKey> = keys.iter().copied().collect();
            let series = selection
                .lock()
                .expect("selection")
                .series(&groups, &counts);
            if !rows.is_empty() {
                t.family(f.name, f.help, f.kind);
            }
            for (key, r) in keys.iter().zip(&rows) {
                let s = &series[key];
                for (remote, n) in &s.remotes {
                    let label = settings.label(remote);
                    let labels = [
                        ("direction", r.dir),
                        ("port", r.port.as_str()),
                        ("remote", label.as_str()),
                    ];
                    t.sample(f.name, &labels, *n as f64);
                }
                let labels = [
                    ("direction", r.dir),
                    ("port", r.port.as_str()),
                    ("remote", "other"),
                ];
                t.sample(f.name, &labels, s.other as f64);
            }
        }
        for value in [
            idle.as_ref().map(|r| r.scan_seconds),
            idle.as_ref().map(|r| r.scan_cpu_seconds),
        ] {
            let f = fams.next().expect("idle scan");
            if let Some(v) = value {
                t.family(f.name, f.help, f.kind);
                t.sample(f.name, &[], v);
            }
        }
        // The census's families: every watched inbound port, even at 0 (no listener there).
        let inbound: Vec<&Row> = rows.iter().filter(|r| r.dir == "inbound").collect();
        for pick in [
            (|c: &census::Counts| &c.listen_queue) as fn(&census::Counts) -> &HashMap<u16, u64>,
            |c| &c.listen_queue_max,
            |c| &c.handshakes_pending,
        ] {
            let f = fams.next().expect("census");
            if let Some(c) = census.as_ref().filter(|_| !inbound.is_empty()) {
                t.family(f.name, f.help, f.kind);
                for r in &inbound {
                    let port: u16 = r.port.parse().expect("a port");
                    let n = pick(&c.counts).get(&port).copied().unwrap_or(0);
                    t.sample(f.name, &[("port", r.port.as_str())], n as f64);
                }
            }
        }
        for value in [
            census.as_ref().map(|r| r.seconds),
            census.as_ref().map(|r| r.cpu_seconds),
        ] {
            let f = fams.next().expect("census cost");
            if let Some(v) = value {
                t.family(f.name, f.help, f.kind);
                t.sample(f.name, &[], v);
            }
        }
        let name = open(t, &mut fams, true);
        t.sample(name, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        debug_assert!(fams.next().is_none(), "every family written");
    }
}

/// Starts the next family of `FAMILIES` (written in their order) when it has samples
/// (`shown`); its name.
fn open(t: &mut Text, fams: &mut std::slice::Iter<'static, Family>, shown: bool) -> &'static str {
    let f = fams.next().expect("a family for each part, in order");
    if shown {
        t.family(f.name, f.help, f.kind);
    }
    f.name
}

/// One watched (direction, port), as a scrape reads it.
struct Row<'a> {
    dir: &'static str,
    port: String,
    stats: &'a PortStats,
    base: Option<&'a [i64; tcp::NUM_STATES]>,
    idle: Option<u64>,
    /// From the census.
    time_wait: Option<u64>,
}

impl Row<'_> {
    fn labels(&self) -> [(&str, &str); 2] {
        [("direction", self.dir), ("port", self.port.as_str())]
    }
}

fn direction(d: u8) -> &'static str {
    if d == DIR_INBOUND {
        "inbound"
    } else {
        "outbound"
    }
}

/// What the endpoint serves: the connection families, then observer's own `process_*` ones.
pub struct Metrics {
    conn: ConnCollector,
    process: Registry,
}

impl Metrics {
    pub fn new(conn: ConnCollector) -> Result<Metrics> {
        let process = Registry::new();
        process.register(Box::new(crate::process::ProcessCollector::new()?))?;
        Ok(Metrics { conn, process })
    }

    /// The exposition, in Prometheus's text format.
    pub fn render(&self) -> Result<Vec<u8>> {
        let mut t = Text::new();
        self.conn.write(&mut t);
        let mut out = t.into_bytes();
        TextEncoder::new()
            .encode(&self.process.gather(), &mut out)
            .context("encoding the process metrics")?;
        Ok(out)
    }
}

/// Binds the metrics endpoint (before anything is loaded, so that a busy port fails early).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))
}
