//! Loopback helpers: HTTP GETs, a listener to poke the tracepoint with, `ss`.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use super::{TOOL_TIMEOUT, process::run_bounded, stats::ms};

/// GET `path` over a new connection (HTTP/1.0: the server closes it); returns the 200 body.
pub(super) fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    observer_tests::scrape::http_get(addr, path).map_err(|e| anyhow!("http://{addr}{path}: {e}"))
}

/// A listener of the bench's own. A connection to it fires the tracepoint without touching the
/// watched port, which shows that a tracer's program is attached.
pub(super) struct Poker(TcpListener);

impl Poker {
    pub(super) fn new() -> Result<Poker> {
        Ok(Poker(
            TcpListener::bind("127.0.0.1:0").context("binding the poke listener")?,
        ))
    }

    /// Its port: no load goes there, so a tool watching it rejects every transition of the load.
    pub(super) fn port(&self) -> Result<u16> {
        Ok(self.0.local_addr()?.port())
    }

    pub(super) fn poke(&self) -> Result<()> {
        let addr = self.0.local_addr()?;
        let client = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        let (server, _) = self.0.accept()?;
        drop((client, server));
        Ok(())
    }
}

/// `ss` counting the established connections of a local port, as a collector would poll it;
/// returns the count and the time from spawn to the end of its output.
pub(super) fn ss_established(port: u16) -> Result<(usize, f64)> {
    ss_state("established", Some(port))
}

/// `ss` counting the sockets in `state` (ss's name) of a local port, or of every port; returns
/// the count and the time from spawn to the end of its output. Not the harness's `ss_state`:
/// this one is a measurement, timed as a collector that runs ss pays for it.
pub(super) fn ss_state(state: &str, port: Option<u16>) -> Result<(usize, f64)> {
    let mut cmd = Command::new("ss");
    cmd.args(["-Htan", "state", state]);
    if let Some(port) = port {
        cmd.arg(format!("( sport = :{port} )"));
    }
    let start = Instant::now();
    let out = run_bounded("ss", &mut cmd, TOOL_TIMEOUT)?;
    Ok((out.stdout.lines().count(), ms(out.ended - start)))
}
