//! Prometheus metrics, read from the kernel's maps at scrape time (plus the start-up snapshot),
//! and a minimal HTTP endpoint for them. A scrape reads one entry per watched (direction, port):
//! its cost does not grow with the number of connections.
use std::{
    collections::BTreeSet,
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
use prometheus::{
    Registry,
    core::{Collector, Desc},
    proto::{self, MetricFamily, MetricType},
};
use tokio::net::TcpListener;

use crate::{idle, kernel::Kernel, snapshot::Baseline};

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
    descs: Vec<Desc>,
}

struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const FAMILIES: [Family; 17] = [
    Family {
        name: "observer_tcp_connections",
        help: "Watched sockets in each TCP state right now.",
        labels: &["direction", "port", "state"],
    },
    Family {
        name: "observer_tcp_connections_opened_total",
        help: "Connections that reached ESTABLISHED while observed.",
        labels: &["direction", "port"],
    },
    Family {
        name: "observer_tcp_connections_closed_total",
        help: "Established connections (also those open before observer started) that reached CLOSE while observed.",
        labels: &["direction", "port"],
    },
    Family {
        name: "observer_tcp_connections_failed_total",
        help: "Handshakes that ended in CLOSE without reaching ESTABLISHED, by reason: refused (RST to the SYN), timeout (no answer), unreachable (ICMP error), reset (an inbound handshake reset or given up), abandoned (closed locally first), other.",
        labels: &["direction", "port", "reason"],
    },
    Family {
        name: "observer_tcp_connections_reset_total",
        help: "Established connections that ended with a reset (a RST sent or received) instead of an orderly close.",
        labels: &["direction", "port"],
    },
    Family {
        name: "observer_tcp_connections_closed_by_total",
        help: "Closed connections by the side that closed first: local (this host's FIN or abort), remote (the peer's FIN or RST), unknown (a close the kernel did not deliver).",
        labels: &["direction", "port", "by"],
    },
    Family {
        name: "observer_tcp_connection_duration_seconds",
        help: "Lifetime, ESTABLISHED to CLOSE, of connections whose opening was observed.",
        labels: &["direction", "port"],
    },
    Family {
        name: "observer_events_dropped_total",
        help: "Events the kernel could not hand to userspace (ring buffer full). Metrics are not affected.",
        labels: &[],
    },
    Family {
        name: "observer_kernel_errors_total",
        help: "Things the kernel program could not do, by reason; the metrics may be off when these move.",
        labels: &["reason"],
    },
    Family {
        name: "observer_kernel_backup_transitions_total",
        help: "Transitions the kernel skipped for observer's main program (another tracing program was running on that CPU) that its backup program counted.",
        labels: &[],
    },
    Family {
        name: "observer_kernel_skipped_runs_total",
        help: "Runs of observer's programs that the kernel skipped because a tracing program was already running on that CPU (recursion_misses), by program.",
        labels: &["program"],
    },
    Family {
        name: "observer_kernel_nested_runs_total",
        help: "Runs of observer's main program that began inside another run of it on the same CPU (a softirq's transition interrupting it): kernels without a recursion guard for it (5.10) run it nested where newer ones skip it.",
        labels: &[],
    },
    Family {
        name: "observer_tcp_connections_idle",
        help: "Established watched connections that moved no data in either direction for longer than --idle-after, at the last scan.",
        labels: &["direction", "port"],
    },
    Family {
        name: "observer_tcp_connections_limit",
        help: "The warning level of established connections per watched port (--warn-connections).",
        labels: &["direction", "port"],
    },
    Family {
        name: "observer_idle_scan_duration_seconds",
        help: "Wall time of the last scan for idle connections.",
        labels: &[],
    },
    Family {
        name: "observer_idle_scan_cpu_seconds",
        help: "CPU time of the last scan for idle connections.",
        labels: &[],
    },
    Family {
        name: "observer_build_info",
        help: "observer's version.",
        labels: &["version"],
    },
];

impl ConnCollector {
    pub fn new(
        kernel: Arc<Mutex<Kernel>>,
        baseline: Baseline,
        static_keys: Vec<StatsKey>,
        bucket_bounds: Vec<f64>,
        idle: Option<Arc<Mutex<idle::Report>>>,
        limit: Option<u32>,
    ) -> Result<ConnCollector> {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    f.labels.iter().map(|s| s.to_string()).collect(),
                    Default::default(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(ConnCollector {
            kernel,
            baseline,
            static_keys,
            bucket_bounds,
            idle,
            limit,
            descs,
        })
    }
}

impl Collector for ConnCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (stats, local_ports, health) = {
            let k = self.kernel.lock().expect("kernel lock");
            (k.stats(), k.local_ports(), k.health())
        };
        // Every watched key, even those the kernel has not counted anything for yet.
        let mut keys: BTreeSet<StatsKey> = self.static_keys.iter().copied().collect();
        keys.extend(
            local_ports
                .iter()
                .map(|(k, _)| StatsKey::new(DIR_INBOUND, k.port)),
        );
        keys.extend(self.baseline.gauges.keys().copied());
        keys.extend(stats.iter().map(|(k, _)| *k));
        let get = |key: &StatsKey| {
            stats
                .iter()
                .find(|(k, _)| k == key)
                .map_or(PortStats::ZERO, |(_, s)| *s)
        };

        let mut fams: Vec<MetricFamily> = FAMILIES
            .iter()
            .map(|f| {
                let mut m = MetricFamily::default();
                m.set_name(f.name.into());
                m.set_help(f.help.into());
                m
            })
            .collect();
        let mut gauges = Vec::new();
        let (mut opened, mut closed, mut failed, mut hists) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut reset, mut closed_by) = (Vec::new(), Vec::new());
        // Taken once: a scan that ends meanwhile does not mix two scans in one scrape.
        let idle = self
            .idle
            .as_ref()
            .map(|r| r.lock().expect("idle report").clone());
        let (mut idle_gauges, mut limits) = (Vec::new(), Vec::new());
        for key in &keys {
            let s = get(key);
            let base = self.baseline.gauges.get(key);
            let dir = direction(key.direction);
            let port = key.port.to_string();
            for state in tcp::GAUGED {
                let v = s.gauge(state) + base.map_or(0, |b| b[state as usize]);
                let mut g = proto::Gauge::default();
                g.set_value(v as f64);
                let mut m = metric(&[
                    ("direction", dir),
                    ("port", &port),
                    ("state", tcp::name(state)),
                ]);
                m.set_gauge(g);
                gauges.push(m);
            }
            let labels = [("direction", dir), ("port", port.as_str())];
            // The same series as the connections gauge: every watched port, even at 0.
            if let Some(r) = &idle {
                let n = r.idle.get(key).copied().unwrap_or(0);
                idle_gauges.push(gauge(&labels, n as f64));
            }
            if let Some(n) = self.limit {
                limits.push(gauge(&labels, n.into()));
            }
            opened.push(counter(&labels, s.opened));
            closed.push(counter(&labels, s.closed));
            for r in FAILURE_REASONS {
                let labels = [
                    ("direction", dir),
                    ("port", port.as_str()),
                    ("reason", REASON_NAMES[r as usize]),
                ];
                failed.push(counter(&labels, s.failed_by[r as usize]));
            }
            reset.push(counter(&labels, s.reset));
            for by in [BY_LOCAL, BY_REMOTE, BY_UNKNOWN] {
                let n = s.closed_by[by as usize];
                // Unknown only where it happened: the kernel failed to deliver a close.
                if by != BY_UNKNOWN || n != 0 {
                    let labels = [
                        ("direction", dir),
                        ("port", port.as_str()),
                        ("by", BY_NAMES[by as usize]),
                    ];
                    closed_by.push(counter(&labels, n));
                }
            }
            let mut h = proto::Histogram::default();
            h.set_sample_count(s.duration_count);
            h.set_sample_sum(s.duration_sum_ns as f64 / 1e9);
            let mut cumulative = 0;
            let buckets = self
                .bucket_bounds
                .iter()
                .zip(s.buckets.iter())
                .map(|(le, n)| {
                    cumulative += n;
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            h.set_bucket(buckets);
            let mut m = metric(&labels);
            m.set_histogram(h);
            hists.push(m);
        }
        let kernel_errors = [
            ("sockets_map_full", Some(health.sockets_full)),
            ("ports_map_full", Some(health.ports_full)),
            ("snapshot_map_full", Some(health.seen_full)),
            ("listeners_map_full", Some(health.local_ports_full)),
            ("stale_socket_retired", Some(health.stale_sockets)),
            ("late_open_counted", Some(health.late_opens)),
            ("cgroup_unknown", Some(health.cgroup_unknown)),
            // Only where the kernel counts skipped runs: lost is derived from that count.
            ("lost_transition", health.lost),
        ]
        .iter()
        .filter_map(|(reason, n)| Some(counter(&[("reason", reason)], (*n)?)))
        .collect();
        let mut info_gauge = proto::Gauge::default();
        info_gauge.set_value(1.0);
        let mut info = metric(&[("version", env!("CARGO_PKG_VERSION"))]);
        info.set_gauge(info_gauge);

        // Left out where the kernel keeps no count (before 5.12), rather than shown as 0.
        let skipped = [
            ("main", health.skipped_main),
            ("backup", health.skipped_backup),
        ]
        .iter()
        .filter_map(|(program, n)| Some(counter(&[("program", program)], (*n)?)))
        .collect();
        let (scan_wall, scan_cpu) = match &idle {
            Some(r) => (
                vec![gauge(&[], r.scan_seconds)],
                vec![gauge(&[], r.scan_cpu_seconds)],
            ),
            None => (Vec::new(), Vec::new()),
        };
        let parts: [(MetricType, Vec<proto::Metric>); 17] = [
            (MetricType::GAUGE, gauges),
            (MetricType::COUNTER, opened),
            (MetricType::COUNTER, closed),
            (MetricType::COUNTER, failed),
            (MetricType::COUNTER, reset),
            (MetricType::COUNTER, closed_by),
            (MetricType::HISTOGRAM, hists),
            (MetricType::COUNTER, vec![counter(&[], health.ring_full)]),
            (MetricType::COUNTER, kernel_errors),
            (MetricType::COUNTER, vec![counter(&[], health.nested)]),
            (MetricType::COUNTER, skipped),
            (MetricType::COUNTER, vec![counter(&[], health.nested_runs)]),
            (MetricType::GAUGE, idle_gauges),
            (MetricType::GAUGE, limits),
            (MetricType::GAUGE, scan_wall),
            (MetricType::GAUGE, scan_cpu),
            (MetricType::GAUGE, vec![info]),
        ];
        for (fam, (ty, metrics)) in fams.iter_mut().zip(parts) {
            fam.set_field_type(ty);
            fam.set_metric(metrics);
        }
        fams.retain(|f| !f.get_metric().is_empty());
        fams
    }
}

fn direction(d: u8) -> &'static str {
    if d == DIR_INBOUND {
        "inbound"
    } else {
        "outbound"
    }
}

fn metric(labels: &[(&str, &str)]) -> proto::Metric {
    let pairs = labels
        .iter()
        .map(|(n, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect();
    let mut m = proto::Metric::default();
    m.set_label(pairs);
    m
}

fn gauge(labels: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = metric(labels);
    m.set_gauge(g);
    m
}

fn counter(labels: &[(&str, &str)], v: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v as f64);
    let mut m = metric(labels);
    m.set_counter(c);
    m
}

/// The registry: the connection collector and the process collector (observer's own CPU,
/// memory and fds).
pub fn registry(collector: ConnCollector) -> Result<Registry> {
    let r = Registry::new();
    r.register(Box::new(collector))?;
    r.register(Box::new(crate::process::ProcessCollector::new()?))?;
    Ok(r)
}

/// Binds the metrics endpoint (before anything is loaded, so that a busy port fails early).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))
}
