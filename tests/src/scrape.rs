//! Reading a Prometheus text exposition, and plain HTTP GETs on loopback.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// GET `path` from `addr`; returns the body of a 200 response.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let (head, body) = buf.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}

/// One scrape of /metrics.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub text: String,
}

impl Scrape {
    /// `promtool check metrics` finds nothing to say about a scrape.
    pub fn promtool_check(&self) {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is installed by cargo xtask setup");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool: {report}\n{}",
            self.text
        );
    }

    /// The value of the sample `name{labels}` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name)
            .into_iter()
            .find(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
    }

    /// Every sample of metric `name` (exact name), with its labels.
    pub fn samples(&self, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        let mut out = Vec::new();
        for line in self.text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                continue;
            }
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            if let Ok(v) = value.parse::<f64>() {
                out.push((labels, v));
            }
        }
        out
    }

    /// Every metric family of the exposition, by name, with its type (from the `# TYPE` lines).
    pub fn families(&self) -> std::collections::BTreeMap<String, String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, ty)| (name.to_string(), ty.trim().to_string()))
            .collect()
    }

    /// Whether a query can read series named `name` from this exposition: a family's own name,
    /// or a histogram's (summary's) `_bucket`, `_sum` and `_count` series.
    pub fn exports(&self, name: &str) -> bool {
        let families = self.families();
        families.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|family| families.get(family))
                    .is_some_and(|ty| {
                        ty == "histogram" || (ty == "summary" && *suffix != "_bucket")
                    })
            })
    }

    /// The sum of the samples of `name` whose labels include all of `labels` (None when there
    /// is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples(name)
            .into_iter()
            .filter(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Shorthand for a (direction, port)-labelled counter, summed over its other labels (the
    /// reasons of `observer_tcp_connections_failed_total`).
    pub fn conn(&self, name: &str, direction: &str, port: u16) -> Option<f64> {
        self.sum(
            name,
            &[("direction", direction), ("port", &port.to_string())],
        )
    }

    pub fn established(&self, direction: &str, port: u16) -> Option<f64> {
        self.value(
            "observer_tcp_connections",
            &[
                ("direction", direction),
                ("port", &port.to_string()),
                ("state", "established"),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP observer_tcp_connections Watched sockets.
# TYPE observer_tcp_connections gauge
observer_tcp_connections{direction=\"inbound\",port=\"8080\",state=\"established\"} 3
observer_tcp_connections{direction=\"inbound\",port=\"8080\",state=\"close_wait\"} 0
observer_tcp_connections_opened_total{direction=\"outbound\",port=\"5432\"} 12
observer_build_info{version=\"0.1.0\"} 1
process_open_fds 9
";

    #[test]
    fn reads_samples_by_name_and_labels() {
        let s = Scrape { text: TEXT.into() };
        assert_eq!(s.established("inbound", 8080), Some(3.0));
        assert_eq!(
            s.conn("observer_tcp_connections_opened_total", "outbound", 5432),
            Some(12.0)
        );
        assert_eq!(s.value("process_open_fds", &[]), Some(9.0));
        assert_eq!(s.samples("observer_tcp_connections").len(), 2);
        // A name is matched whole, not as a prefix.
        assert!(s.samples("observer_tcp").is_empty());
        assert_eq!(s.established("inbound", 9090), None);
    }

    #[test]
    fn knows_its_families_and_a_histograms_series() {
        let s = Scrape {
            text: format!(
                "{TEXT}# TYPE observer_tcp_connection_duration_seconds histogram\n\
                 observer_tcp_connection_duration_seconds_bucket{{le=\"+Inf\"}} 0\n\
                 # TYPE rpc_seconds summary\n"
            ),
        };
        assert_eq!(
            s.families()
                .get("observer_tcp_connections")
                .map(String::as_str),
            Some("gauge")
        );
        // A sample without a `# TYPE` line names no family.
        assert!(!s.exports("observer_tcp_connections_opened_total"));
        assert!(s.exports("observer_tcp_connections"));
        assert!(s.exports("observer_tcp_connection_duration_seconds"));
        for series in ["_bucket", "_sum", "_count"] {
            assert!(s.exports(&format!("observer_tcp_connection_duration_seconds{series}")));
        }
        // A gauge has no _count series, a summary no buckets; a prefix is no family.
        assert!(!s.exports("observer_tcp_connections_count"));
        assert!(s.exports("rpc_seconds_count"));
        assert!(!s.exports("rpc_seconds_bucket"));
        assert!(!s.exports("observer_tcp"));
        assert!(!s.exports("process_open_fds"));
    }
}
