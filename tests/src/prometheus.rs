//! A real Prometheus server (Debian's `prometheus`) that scrapes what a test tells it to, its
//! storage in a directory of its own; stopped and removed on drop.
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{sandbox::TempDir, scrape::http_get, wait_for};

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus, scraping and evaluating every second, with `scrape_configs`: the
    /// items of that list, in YAML, each starting `  - job_name: ...`. Waits until it is ready.
    pub fn start(scrape_configs: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed by cargo xtask setup");
        let p = Prometheus { child, addr, dir };
        wait_for(Duration::from_secs(60), || {
            http_get(p.addr, "/-/ready").ok()
        })
        .unwrap_or_else(|| panic!("Prometheus did not get ready:\n{}", p.log()));
        p
    }

    /// The result of an instant query: each series' labels and value.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, String)> {
        let Ok(body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        ) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.to_string())))
            .collect()
    }

    /// Waits up to a minute for `promql` to give the single value `want`; Err with the last
    /// result and the targets' state otherwise.
    pub fn settle(&self, promql: &str, want: &str) -> Result<(), String> {
        let mut last = Vec::new();
        wait_for(Duration::from_secs(60), || {
            last = self.query(promql);
            (last.len() == 1 && last[0].1 == want).then_some(())
        })
        .ok_or_else(|| {
            format!(
                "{promql}: {last:?}, not {want}; targets: {}",
                http_get(self.addr, "/api/v1/targets").unwrap_or_default()
            )
        })
    }

    /// What Prometheus logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query's text as a URL's query component: everything but letters and digits escaped.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port free now on loopback (Prometheus is told its address; it cannot report one it chose).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_escaped() {
        assert_eq!(
            super::encode(r#"up{job="a b"}"#),
            "up%7Bjob%3D%22a%20b%22%7D"
        );
    }
}
