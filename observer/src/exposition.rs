//! Prometheus's text format (version 0.0.4), written straight from observer's figures. Pure.
//!
//! Why not the prometheus crate's `Collector` and `TextEncoder`, as for the `process_*` family:
//! they build every sample as a protobuf message before writing a byte. With 4,096 watched ports
//! (~190,000 series, a 12 MB body) one gather held ~60 MiB of messages, and the endpoint's peak
//! reached 110 MiB against a 64 MiB goal (tests/tests/endpoint.rs). Written directly, a scrape
//! holds its body and little else. The bytes are the crate's own (unit-tested against it), so
//! nothing changes for a scraper.
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The exposition being written.
#[derive(Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Reserves room for about `bytes` more, at once: a body grown by doubling holds the old
    /// copy and the new one at the moment it moves, while reserved pages never written take no
    /// memory.
    pub fn reserve(&mut self, bytes: usize) {
        self.out.reserve(bytes);
    }

    /// The `# HELP` and `# TYPE` lines that start a family.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape(help, false),
            kind.name()
        );
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.line(name, "", labels, None, value);
    }

    /// The samples of one histogram: cumulative `_bucket`s (from per-bucket `counts`, one per
    /// bound, then the +Inf bucket's), `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
        count: u64,
    ) {
        let mut cumulative = 0;
        for (le, n) in bounds.iter().zip(counts) {
            cumulative += n;
            let le = le.to_string();
            self.line(
                name,
                "_bucket",
                labels,
                Some(("le", &le)),
                cumulative as f64,
            );
        }
        self.line(name, "_bucket", labels, Some(("le", "+Inf")), count as f64);
        self.line(name, "_sum", labels, None, sum);
        self.line(name, "_count", labels, None, count as f64);
    }

    fn line(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
        value: f64,
    ) {
        let o = &mut self.out;
        o.push_str(name);
        o.push_str(suffix);
        let mut sep = '{';
        for (k, v) in labels.iter().chain(extra.as_ref()) {
            o.push(sep);
            o.push_str(k);
            o.push_str("=\"");
            o.push_str(&escape(v, true));
            o.push('"');
            sep = ',';
        }
        if sep == ',' {
            o.push('}');
        }
        let _ = writeln!(o, " {value}");
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out.into_bytes()
    }
}

/// Backslashes and newlines escaped, and double quotes in label values.
fn escape(v: &str, quotes: bool) -> std::borrow::Cow<'_, str> {
    if !(v.contains(['\\', '\n']) || quotes && v.contains('"')) {
        return v.into();
    }
    let mut s = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '"' if quotes => s.push_str("\\\""),
            c => s.push(c),
        }
    }
    s.into()
}

#[cfg(test)]
mod tests {
    use prometheus::{
        Encoder as _, TextEncoder,
        proto::{self, MetricFamily, MetricType},
    };

    use super::*;

    fn metric(labels: &[(&str, &str)]) -> proto::Metric {
        let mut m = proto::Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = proto::LabelPair::default();
                    l.set_name(k.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        m
    }

    fn family(name: &str, help: &str, ty: MetricType, ms: Vec<proto::Metric>) -> MetricFamily {
        let mut f = MetricFamily::default();
        f.set_name(name.into());
        f.set_help(help.into());
        f.set_field_type(ty);
        f.set_metric(ms);
        f
    }

    /// The same figures through the prometheus crate and through `Text`: the same bytes.
    #[test]
    fn writes_what_the_prometheus_crate_writes() {
        let labels = [("direction", "inbound"), ("port", "8080")];
        let odd = [("reason", "a \"quoted\"\\ line\nbreak")];
        let mut crate_side = Vec::new();

        let mut c = proto::Counter::default();
        c.set_value(12.0);
        let mut m = metric(&labels);
        m.set_counter(c);
        let mut c2 = proto::Counter::default();
        c2.set_value(0.5);
        let mut m2 = metric(&odd);
        m2.set_counter(c2);
        crate_side.push(family(
            "x_total",
            "Help with a \\ and\na newline.",
            MetricType::COUNTER,
            vec![m, m2],
        ));

        let mut g = proto::Gauge::default();
        g.set_value(-3.0);
        let mut m = metric(&[]);
        m.set_gauge(g);
        crate_side.push(family("y", "A gauge.", MetricType::GAUGE, vec![m]));

        let (bounds, counts) = ([0.001, 0.25, 5.0], [2u64, 0, 7, 1]);
        let mut h = proto::Histogram::default();
        h.set_sample_count(10);
        h.set_sample_sum(31.5);
        let mut cumulative = 0;
        h.set_bucket(
            bounds
                .iter()
                .zip(counts.iter())
                .map(|(le, n)| {
                    cumulative += n;
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect(),
        );
        let mut m = metric(&labels);
        m.set_histogram(h);
        crate_side.push(family(
            "z_seconds",
            "A histogram.",
            MetricType::HISTOGRAM,
            vec![m],
        ));
        let mut expected = Vec::new();
        TextEncoder::new()
            .encode(&crate_side, &mut expected)
            .unwrap();

        let mut t = Text::new();
        t.family("x_total", "Help with a \\ and\na newline.", Kind::Counter);
        t.sample("x_total", &labels, 12.0);
        t.sample("x_total", &odd, 0.5);
        t.family("y", "A gauge.", Kind::Gauge);
        t.sample("y", &[], -3.0);
        t.family("z_seconds", "A histogram.", Kind::Histogram);
        t.histogram("z_seconds", &labels, &bounds, &counts, 31.5, 10);
        assert_eq!(
            String::from_utf8(t.into_bytes()).unwrap(),
            String::from_utf8(expected).unwrap()
        );
    }
}
