//! The cost of the socket census (observer's scrape-time sock_diag dump of TIME_WAIT, request and
//! listening sockets), with few and with many TIME_WAIT sockets on the watched port, next to
//! `ss` listing them.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    interrupt::{check_interrupt, pause, say},
    net::ss_state,
    observer::{Metrics, Observer},
    stats::ms,
};

/// The small level of TIME_WAIT sockets.
pub(super) const FEW_TIME_WAIT: usize = 100;
/// The churn's client address, and the first of the source ports it binds one by one: each
/// connection a 4-tuple of its own, so each leaves a TIME_WAIT socket of its own on the server.
/// (Ports the kernel picks repeat, and a new SYN then takes over the old TIME_WAIT socket: ab
/// from 127.0.0.1 leaves about 12,000 however many connections it makes.)
const CHURN_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const FIRST_SOURCE_PORT: u16 = 10_000;
const CHURN_THREADS: usize = 4;
/// A scrape's start comes a little before the census's own clock starts.
const MARGIN: Duration = Duration::from_millis(150);

/// Scrapes that ran a census, at one level of TIME_WAIT sockets.
pub(super) struct CensusLevel {
    pub(super) target: usize,
    /// TIME_WAIT sockets on the watched port, for each timed scrape: ss's count (right after
    /// it) and observer's gauge.
    pub(super) ss_count: Vec<f64>,
    pub(super) gauge: Vec<f64>,
    /// TIME_WAIT sockets on the whole host, which the kernel walks too.
    pub(super) host: usize,
    /// A scrape that ran a census, one right after it (served the last result), the census's
    /// own gauges, and `ss` listing the same sockets.
    pub(super) scrape_ms: Vec<f64>,
    pub(super) cached_ms: Vec<f64>,
    pub(super) wall_ms: Vec<f64>,
    pub(super) cpu_ms: Vec<f64>,
    pub(super) ss_ms: Vec<f64>,
}

/// The earliest start of observer's next census: at most one a second, and no sooner than 20
/// times the last one's CPU time after it (observer's `census::interval`).
pub(super) fn next_census(started: Instant, cpu_secs: f64) -> Instant {
    started + Duration::from_secs(1).max(Duration::from_secs_f64(20.0 * cpu_secs)) + MARGIN
}

/// Starts observer on `port` (an nginx there, which closes first: its side keeps the TIME_WAIT
/// sockets), churns up to each level of TIME_WAIT sockets and times `pairs` censuses at each.
pub(super) fn census_cost(
    observer: &Path,
    port: u16,
    many: usize,
    pairs: usize,
) -> Result<Vec<CensusLevel>> {
    let obs = Observer::start(observer, port, None)?;
    let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut sources = (FIRST_SOURCE_PORT..=u16::MAX).filter(|p| *p != port);
    let mut due = Instant::now();
    let mut levels = Vec::new();
    for target in [FEW_TIME_WAIT, many] {
        let (have, _) = ss_state("time-wait", Some(port))?;
        let ports: Vec<u16> = sources.by_ref().take(target.saturating_sub(have)).collect();
        let made = churn(dst, &ports)?;
        say(format_args!(
            "census: {made} connections churned, {} TIME_WAIT on the port",
            ss_state("time-wait", Some(port))?.0
        ));
        levels.push(level(&obs, port, target, pairs, &mut due)?);
    }
    obs.stop()?;
    Ok(levels)
}

/// Times `pairs` scrapes that each run a census (each once the last allows the next), each
/// followed by a scrape served its result and an `ss` listing the same sockets.
fn level(
    obs: &Observer,
    port: u16,
    target: usize,
    pairs: usize,
    due: &mut Instant,
) -> Result<CensusLevel> {
    let p = port.to_string();
    let labels = [
        ("direction", "inbound"),
        ("port", &p),
        ("state", "time_wait"),
    ];
    let mut l = CensusLevel {
        target,
        ss_count: Vec::new(),
        gauge: Vec::new(),
        host: ss_state("time-wait", None)?.0,
        scrape_ms: Vec::new(),
        cached_ms: Vec::new(),
        wall_ms: Vec::new(),
        cpu_ms: Vec::new(),
        ss_ms: Vec::new(),
    };
    let mut last = None;
    for _ in 0..pairs {
        // A scrape that runs a census: its gauges differ from the last one's.
        let mut tries = 0;
        let (m, took, started, cost) = loop {
            pause(due.saturating_duration_since(Instant::now()))?;
            let (m, took, started) = timed_scrape(obs)?;
            let cost = census_ms(&m);
            if last != Some(cost) {
                break (m, took, started, cost);
            }
            tries += 1;
            if tries == 10 {
                bail!("ten scrapes in a row got the last census's result ({cost:?} ms)");
            }
            *due = Instant::now() + MARGIN;
        };
        last = Some(cost);
        *due = next_census(started, cost.1 / 1e3);
        l.scrape_ms.push(took);
        l.wall_ms.push(cost.0);
        l.cpu_ms.push(cost.1);
        l.gauge.push(m.value("observer_tcp_connections", &labels));
        let (cached, cached_ms, _) = timed_scrape(obs)?;
        // Served the last result, unless that scrape came too late for it.
        if census_ms(&cached) == cost {
            l.cached_ms.push(cached_ms);
        }
        let (count, ss_ms) = ss_state("time-wait", Some(port))?;
        l.ss_count.push(count as f64);
        l.ss_ms.push(ss_ms);
    }
    Ok(l)
}

fn timed_scrape(obs: &Observer) -> Result<(Metrics, f64, Instant)> {
    let started = Instant::now();
    let m = obs.scrape()?;
    Ok((m, ms(started.elapsed()), started))
}

/// observer's own gauges of the last census: wall and CPU time, ms.
pub(super) fn census_ms(m: &Metrics) -> (f64, f64) {
    (
        m.value("observer_census_duration_seconds", &[]) * 1e3,
        m.value("observer_census_cpu_seconds", &[]) * 1e3,
    )
}

/// One short HTTP/1.0 request to `dst` from each of `ports` of CHURN_FROM, CHURN_THREADS at a
/// time; the server answers and closes first. A source port in use is skipped. Returns the
/// connections made.
fn churn(dst: SocketAddr, ports: &[u16]) -> Result<usize> {
    if ports.is_empty() {
        return Ok(0);
    }
    let chunk = ports.len().div_ceil(CHURN_THREADS);
    let results: Vec<(usize, usize)> = thread::scope(|s| {
        let handles: Vec<_> = ports
            .chunks(chunk)
            .map(|ports| s.spawn(move || churn_from(dst, ports)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, usize::MAX)))
            .collect()
    });
    let made: usize = results.iter().map(|r| r.0).sum();
    let failed = results.iter().fold(0usize, |a, r| a.saturating_add(r.1));
    check_interrupt()?;
    if failed > ports.len() / 100 {
        bail!(
            "the census churn failed {failed} of {} connections",
            ports.len()
        );
    }
    Ok(made)
}

/// (made, failed) of one churn thread.
fn churn_from(dst: SocketAddr, ports: &[u16]) -> (usize, usize) {
    let (mut made, mut failed) = (0, 0);
    for &p in ports {
        if check_interrupt().is_err() {
            break;
        }
        let src = SocketAddr::from((CHURN_FROM, p));
        let mut c = match observer_tests::net::try_connect_from(src, dst) {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            Err(_) => {
                failed += 1;
                continue;
            }
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reply = Vec::new();
        let asked = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
        match asked.and_then(|_| c.read_to_end(&mut reply)) {
            Ok(_) if reply.starts_with(b"HTTP/1.1 200") => made += 1,
            _ => failed += 1,
        }
    }
    (made, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_census_waits_a_second_or_twenty_times_the_last_ones_cpu() {
        let t = Instant::now();
        assert_eq!(next_census(t, 0.003), t + Duration::from_secs(1) + MARGIN);
        assert_eq!(next_census(t, 0.1), t + Duration::from_secs(2) + MARGIN);
    }

    #[test]
    fn reads_the_census_gauges_of_a_scrape() {
        // The lines observer writes for them (metrics.rs), among others.
        let text = "# HELP observer_census_duration_seconds Wall time of the last socket census.\n\
            # TYPE observer_census_duration_seconds gauge\n\
            observer_census_duration_seconds 0.0845\n\
            # HELP observer_census_cpu_seconds CPU time of the last socket census.\n\
            # TYPE observer_census_cpu_seconds gauge\n\
            observer_census_cpu_seconds 0.0712\n";
        let m = Metrics(observer_tests::scrape::Scrape { text: text.into() });
        let (wall, cpu) = census_ms(&m);
        assert!(
            (wall - 84.5).abs() < 1e-9 && (cpu - 71.2).abs() < 1e-9,
            "{wall} {cpu}"
        );
        // No census yet (no scrape came): 0, as a gauge with no sample reads.
        let none = Metrics(observer_tests::scrape::Scrape {
            text: String::new(),
        });
        assert_eq!(census_ms(&none), (0.0, 0.0));
    }
}
