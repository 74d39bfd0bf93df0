//! node_exporter with only its `tcpstat` collector, the exporter a user would scrape instead
//! of observer for connection counts: it reads /proc/net/tcp and tcp6 at each scrape and counts
//! sockets per state over the whole host (no port of their own).
use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use observer_tests::scrape::Scrape;

use super::{START_TIMEOUT, interrupt::wait_until, net::http_get, process::Proc, stats::ms};

/// Debian's prometheus-node-exporter names its binary after the package.
const BINARY: &str = "prometheus-node-exporter";

pub(super) struct NodeExporter {
    pub(super) proc: Proc,
    addr: SocketAddr,
}

impl NodeExporter {
    pub(super) fn start(dir: &Path) -> Result<NodeExporter> {
        let [port] = observer_tests::net::free_ports_below_ephemeral().map_err(|e| anyhow!(e))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let err = dir.join("node_exporter.err");
        let mut cmd = Command::new(BINARY);
        cmd.args(["--collector.disable-defaults", "--collector.tcpstat"])
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?);
        let mut proc = Proc::spawn(BINARY, &mut cmd)?;
        wait_until(
            "node_exporter to listen",
            START_TIMEOUT,
            Duration::from_millis(20),
            || {
                if let Some(s) = proc.poll()? {
                    let said = std::fs::read_to_string(&err).unwrap_or_default();
                    bail!("{BINARY} exited ({s}): {}", said.trim());
                }
                Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    .is_ok()
                    .then_some(()))
            },
        )?;
        Ok(NodeExporter { proc, addr })
    }

    /// One scrape, and the time it took (a new connection, to the last byte).
    pub(super) fn timed_scrape(&self) -> Result<(Scrape, f64)> {
        let start = Instant::now();
        let text = http_get(self.addr, "/metrics")?;
        Ok((Scrape { text }, ms(start.elapsed())))
    }

    pub(super) fn stop(mut self) -> Result<()> {
        self.proc.stop(libc::SIGTERM).map(|_| ())
    }
}

/// The established TCP sockets of the whole host, as the tcpstat collector counted them.
pub(super) fn established(m: &Scrape) -> Result<f64> {
    m.value("node_tcp_connection_states", &[("state", "established")])
        .ok_or_else(|| anyhow!("no established sockets in node_exporter's scrape"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_established_sockets_of_a_real_scrape() {
        let m = Scrape {
            text: include_str!("testdata/node_exporter_metrics.txt").into(),
        };
        assert_eq!(established(&m).unwrap(), 2.0);
        assert_eq!(
            m.value("node_tcp_connection_states", &[("state", "time_wait")]),
            Some(25.0)
        );
        assert!(
            established(&Scrape {
                text: String::new()
            })
            .is_err()
        );
    }
}
