//! observer's own `process_*` metrics, with the names and meanings every Prometheus client
//! library uses. The prometheus crate's process collector keeps the CPU time in an integer
//! counter of whole seconds, which `rate()` cannot read over a few minutes of a quiet daemon;
//! this one reports it to the clock tick.
use prometheus::{
    core::{Collector, Desc},
    proto::{self, MetricFamily, MetricType},
};

/// (name, help, type) of each family, in the order `collect` returns them.
const FAMILIES: [(&str, &str, MetricType); 7] = [
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        MetricType::COUNTER,
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        MetricType::GAUGE,
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        MetricType::GAUGE,
    ),
    (
        "process_open_fds",
        "Number of open file descriptors.",
        MetricType::GAUGE,
    ),
    (
        "process_max_fds",
        "Maximum number of open file descriptors.",
        MetricType::GAUGE,
    ),
    (
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        MetricType::GAUGE,
    ),
    (
        "process_threads",
        "Number of OS threads in the process.",
        MetricType::GAUGE,
    ),
];

pub struct ProcessCollector {
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub fn new() -> prometheus::Result<ProcessCollector> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| Desc::new(name.to_string(), help.to_string(), vec![], [].into()))
            .collect::<prometheus::Result<_>>()?;
        Ok(ProcessCollector { descs })
    }
}

/// The values of `FAMILIES`, read from /proc/self; None when it cannot be read.
fn read() -> Option<[f64; 7]> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let boot = procfs::boot_time_secs().ok()? as f64;
    let open_fds = me.fd_count().ok()? as f64;
    let max_fds = me
        .limits()
        .ok()
        .and_then(|l| match l.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(v) => Some(v as f64),
            procfs::process::LimitValue::Unlimited => None,
        })
        .unwrap_or(f64::INFINITY);
    Some([
        (stat.utime + stat.stime) as f64 / ticks,
        (stat.rss * procfs::page_size()) as f64,
        stat.vsize as f64,
        open_fds,
        max_fds,
        boot + stat.starttime as f64 / ticks,
        stat.num_threads as f64,
    ])
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(values) = read() else {
            return Vec::new();
        };
        FAMILIES
            .iter()
            .zip(values)
            .map(|((name, help, kind), v)| {
                let mut m = proto::Metric::default();
                if *kind == MetricType::COUNTER {
                    let mut c = proto::Counter::default();
                    c.set_value(v);
                    m.set_counter(c);
                } else {
                    let mut g = proto::Gauge::default();
                    g.set_value(v);
                    m.set_gauge(g);
                }
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(*kind);
                f.set_metric(vec![m]);
                f
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_ticks() -> u64 {
        let stat = procfs::process::Process::myself().unwrap().stat().unwrap();
        stat.utime + stat.stime
    }

    #[test]
    fn cpu_time_is_reported_to_the_tick() {
        // Spin through a few ticks of CPU time.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let tps = procfs::ticks_per_second() as f64;
        let before = cpu_ticks() as f64 / tps;
        let families = ProcessCollector::new().unwrap().collect();
        let after = cpu_ticks() as f64 / tps;
        assert_eq!(families.len(), FAMILIES.len());
        // Whole seconds would fall below `before` (unless it is a whole number itself).
        let cpu = families[0].get_metric()[0].get_counter().get_value();
        assert!(
            before <= cpu && cpu <= after,
            "{before} <= {cpu} <= {after}"
        );
        let rss = families[1].get_metric()[0].get_gauge().get_value();
        assert!(rss > 1e6, "rss {rss}");
        let threads = families[6].get_metric()[0].get_gauge().get_value();
        assert!(threads >= 1.0);
    }
}
