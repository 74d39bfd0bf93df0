//! Connection events as people and machines read them: one line of text, or one JSON object per
//! line. Pure: no IO here.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use observer_common::{
    DIR_INBOUND,
    conn::{EVENT_CLOSE, EVENT_FAILED, EVENT_OPEN},
    ending::{self, BY_NAMES, BY_UNKNOWN, REASON_NAMES},
    filter::Owner,
    record::{RECORD_ADDRESSES_GONE, RECORD_HAS_DURATION, RECORD_HAS_TCP, RECORD_UNSEEN, Record},
    stats::StatsKey,
    tracepoint::AF_INET,
};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Open,
    Close,
    Failed,
    /// A watched connection that moved no data for longer than `--idle-after` (see `idle`).
    Idle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One connection event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// RFC 3339, UTC.
    pub ts: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub direction: Direction,
    pub port: u16,
    pub local: String,
    pub remote: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<Option<f64>>,
    /// On `idle` only: how long it has moved no data, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<f64>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Why a handshake failed, or how a connection closed (`normal`, `reset`, `timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Close events: who closed first, `local` or `remote` (null when not known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<Option<&'static str>>,
    /// Close events: what the connection carried, read from its socket at CLOSE, as `ss -ti`
    /// and tcplife show it (null for a close the kernel did not deliver): data bytes sent, each
    /// once, and received; the smoothed round-trip time (µs); segments retransmitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<Option<u64>>,
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock ns since the Unix epoch minus monotonic ns, taken once at start.
    pub offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let read = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid clock id and pointer.
            unsafe { libc::clock_gettime(id, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        let mono = read(libc::CLOCK_MONOTONIC);
        let real = read(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    pub fn wall_ns(&self, monotonic_ns: u64) -> i128 {
        monotonic_ns as i128 + self.offset_ns
    }
}

impl Event {
    /// The event a transition record stands for, if it is one a person would want to see.
    pub fn from_record(r: &Record, clock: &Clock) -> Option<Event> {
        let kind = match r.event {
            EVENT_OPEN => Kind::Open,
            EVENT_CLOSE => Kind::Close,
            EVENT_FAILED => Kind::Failed,
            _ => return None,
        };
        let duration_seconds = (kind == Kind::Close)
            .then(|| (r.flags & RECORD_HAS_DURATION != 0).then_some(r.duration_ns as f64 / 1e9));
        let pid = (r.pid != 0).then_some(r.pid);
        let comm = pid.map(|_| comm(&r.comm));
        let closing = kind == Kind::Close;
        // The same rule the kernel counted it by, from the same state and error.
        let end = if r.flags & RECORD_UNSEEN != 0 {
            ending::unseen(r.event, r.oldstate)
        } else {
            ending::at_close(r.event, r.direction, r.oldstate, r.err)
        };
        let reason = (kind != Kind::Open)
            .then(|| REASON_NAMES.get(end.reason as usize).copied())
            .flatten();
        let closed_by = closing.then(|| {
            (end.by != BY_UNKNOWN)
                .then(|| BY_NAMES.get(end.by as usize).copied())
                .flatten()
        });
        let carried = |v: u64| closing.then(|| (r.flags & RECORD_HAS_TCP != 0).then_some(v));
        Some(Event {
            ts: rfc3339(clock.wall_ns(r.ts_ns)),
            kind,
            direction: Direction::of(r.direction),
            port: r.port,
            local: endpoint(r, &r.saddr, r.sport),
            remote: endpoint(r, &r.daddr, r.dport),
            duration_seconds,
            idle_seconds: None,
            pid,
            comm,
            reason,
            closed_by,
            bytes_sent: carried(r.bytes_sent),
            bytes_received: carried(r.bytes_received),
            rtt_us: carried(r.srtt_us.into()),
            retransmits: carried(r.retransmits.into()),
        })
    }

    /// An `idle` event, at wall-clock `ts_ns`: the connection of `key` between `local` and
    /// `remote`, silent for `idle`, whose owner (if known) is `owner`.
    pub fn idle(
        ts_ns: i128,
        key: StatsKey,
        local: SocketAddr,
        remote: SocketAddr,
        idle: Duration,
        owner: &Owner,
    ) -> Event {
        let pid = (owner.pid != 0).then_some(owner.pid);
        Event {
            ts: rfc3339(ts_ns),
            kind: Kind::Idle,
            direction: Direction::of(key.direction),
            port: key.port,
            local: local.to_string(),
            remote: remote.to_string(),
            duration_seconds: None,
            idle_seconds: Some(idle.as_secs_f64()),
            pid,
            comm: pid.map(|_| comm(&owner.comm)),
            reason: None,
            closed_by: None,
            bytes_sent: None,
            bytes_received: None,
            rtt_us: None,
            retransmits: None,
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serialises")
    }

    pub fn text(&self) -> String {
        let kind = match self.kind {
            Kind::Open => "open",
            Kind::Close => "close",
            Kind::Failed => "failed",
            Kind::Idle => "idle",
        };
        let (dir, arrow) = match self.direction {
            Direction::Inbound => ("inbound", "<-"),
            Direction::Outbound => ("outbound", "->"),
        };
        let mut line = format!(
            "{} {kind:<6} {dir:<8} port={} {} {arrow} {}",
            self.ts, self.port, self.local, self.remote
        );
        if let Some(d) = self.duration_seconds {
            match d {
                Some(d) => write!(line, " duration={d:.6}s").unwrap(),
                None => line.push_str(" duration=unknown(opened before observer)"),
            }
        }
        if let Some(reason) = self.reason {
            write!(line, " reason={reason}").unwrap();
        }
        if let Some(by) = self.closed_by {
            write!(line, " by={}", by.unwrap_or("unknown")).unwrap();
        }
        if let (Some(Some(tx)), Some(Some(rx)), Some(Some(rtt)), Some(Some(re))) = (
            self.bytes_sent,
            self.bytes_received,
            self.rtt_us,
            self.retransmits,
        ) {
            write!(line, " sent={tx}B received={rx}B rtt={rtt}us retrans={re}").unwrap();
        }
        if let Some(i) = self.idle_seconds {
            write!(line, " idle={i:.3}s").unwrap();
        }
        match (&self.pid, &self.comm) {
            (Some(pid), Some(comm)) => write!(line, " pid={pid} comm={comm}").unwrap(),
            _ => line.push_str(" pid=- comm=-"),
        }
        line
    }

    pub fn format(&self, f: Format) -> String {
        match f {
            Format::Text => self.text(),
            Format::Json => self.json(),
        }
    }
}

impl Direction {
    fn of(direction: u8) -> Direction {
        if direction == DIR_INBOUND {
            Direction::Inbound
        } else {
            Direction::Outbound
        }
    }

    fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A `limit` event (`--warn-connections`): the established connections of a watched port
/// reached the limit (`over`), or fell back under it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitEvent {
    pub ts: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub direction: Direction,
    pub port: u16,
    /// Established connections of the port when the crossing was seen.
    pub connections: i64,
    pub limit: u32,
    pub over: bool,
}

impl LimitEvent {
    pub fn new(ts_ns: i128, key: StatsKey, connections: i64, limit: u32, over: bool) -> Self {
        LimitEvent {
            ts: rfc3339(ts_ns),
            kind: "limit",
            direction: Direction::of(key.direction),
            port: key.port,
            connections,
            limit,
            over,
        }
    }

    pub fn text(&self) -> String {
        format!(
            "{} limit  {:<8} port={} connections={} limit={} {}",
            self.ts,
            self.direction.name(),
            self.port,
            self.connections,
            self.limit,
            if self.over { "over" } else { "under" }
        )
    }

    pub fn format(&self, f: Format) -> String {
        match f {
            Format::Text => self.text(),
            Format::Json => serde_json::to_string(self).expect("a LimitEvent always serialises"),
        }
    }
}

/// Wall-clock time now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// `address:port`, or `unknown` for a close whose addresses the kernel no longer had and whose
/// open was not seen (see `endpoints`).
fn endpoint(r: &Record, addr: &[u8; 16], port: u16) -> String {
    if r.flags & RECORD_ADDRESSES_GONE != 0 {
        return "unknown".into();
    }
    SocketAddr::new(ip(r.family, addr), port).to_string()
}

fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// RFC 3339 in UTC with microseconds, from nanoseconds since the Unix epoch (clamped to the
/// epoch: the kernel's clock never gives an earlier time).
pub fn rfc3339(ns: i128) -> String {
    let ns = u64::try_from(ns).unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use observer_common::{DIR_OUTBOUND, tcp, tracepoint::AF_INET6};

    use super::*;

    fn record(event: u8) -> Record {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"nginx");
        Record {
            ts_ns: 1_000,
            sock: 0xffff_0000,
            duration_ns: 1_500_000_000,
            pid: 42,
            netns: 0,
            sport: 8080,
            dport: 51234,
            port: 8080,
            family: AF_INET,
            oldstate: tcp::FIN_WAIT2,
            newstate: tcp::CLOSE,
            direction: DIR_INBOUND,
            event,
            flags: RECORD_HAS_DURATION | RECORD_HAS_TCP,
            saddr,
            daddr,
            comm,
            bytes_sent: 1200,
            bytes_received: 80,
            srtt_us: 41,
            retransmits: 0,
            ..Record::EMPTY
        }
    }

    const CLOCK: Clock = Clock {
        offset_ns: 1_764_000_000_000_000_000,
    };

    #[test]
    fn close_as_json() {
        let e = Event::from_record(&record(EVENT_CLOSE), &CLOCK).unwrap();
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["type"], "close");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["port"], 8080);
        assert_eq!(v["local"], "127.0.0.1:8080");
        assert_eq!(v["remote"], "127.0.0.2:51234");
        assert_eq!(v["duration_seconds"], 1.5);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["comm"], "nginx");
        assert_eq!(v["ts"], "2025-11-24T16:00:00.000001Z");
        assert_eq!(v["reason"], "normal");
        assert_eq!(v["closed_by"], "local");
        assert_eq!(
            (
                &v["bytes_sent"],
                &v["bytes_received"],
                &v["rtt_us"],
                &v["retransmits"]
            ),
            (&1200.into(), &80.into(), &41.into(), &0.into())
        );
    }

    #[test]
    fn a_failure_says_why_and_nothing_of_a_close() {
        let mut r = record(EVENT_FAILED);
        r.oldstate = tcp::SYN_SENT;
        r.err = observer_common::ending::errno::ECONNREFUSED;
        r.direction = DIR_OUTBOUND;
        let e = Event::from_record(&r, &CLOCK).unwrap();
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["reason"], "refused");
        for close_only in ["closed_by", "bytes_sent", "rtt_us", "duration_seconds"] {
            assert!(v.get(close_only).is_none(), "{close_only}");
        }
        assert!(e.text().contains(" reason=refused "), "{}", e.text());
        // An open has no reason.
        let v: serde_json::Value = serde_json::from_str(
            &Event::from_record(&record(EVENT_OPEN), &CLOCK)
                .unwrap()
                .json(),
        )
        .unwrap();
        assert!(v.get("reason").is_none());
    }

    #[test]
    fn a_close_the_kernel_did_not_deliver_has_null_figures() {
        let mut r = record(EVENT_CLOSE);
        r.flags = RECORD_ADDRESSES_GONE | RECORD_UNSEEN;
        r.oldstate = tcp::ESTABLISHED;
        let v: serde_json::Value =
            serde_json::from_str(&Event::from_record(&r, &CLOCK).unwrap().json()).unwrap();
        assert!(v["closed_by"].is_null() && v["bytes_sent"].is_null(), "{v}");
        assert_eq!(v["reason"], "other");
        // Found by the sweep in FIN_WAIT2: this host closed first, the state says so.
        r.oldstate = tcp::FIN_WAIT2;
        let v: serde_json::Value =
            serde_json::from_str(&Event::from_record(&r, &CLOCK).unwrap().json()).unwrap();
        assert_eq!(v["closed_by"], "local");
    }

    #[test]
    fn open_has_no_duration_and_unknown_owner_is_null() {
        let mut r = record(EVENT_OPEN);
        r.pid = 0;
        r.direction = DIR_OUTBOUND;
        let v: serde_json::Value =
            serde_json::from_str(&Event::from_record(&r, &CLOCK).unwrap().json()).unwrap();
        assert_eq!(v["type"], "open");
        assert_eq!(v["direction"], "outbound");
        assert!(v.get("duration_seconds").is_none());
        assert!(v["pid"].is_null());
        assert!(v["comm"].is_null());
    }

    #[test]
    fn close_of_a_connection_opened_before_observer_has_null_duration() {
        let mut r = record(EVENT_CLOSE);
        r.flags = 0;
        let e = Event::from_record(&r, &CLOCK).unwrap();
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert!(v["duration_seconds"].is_null());
        assert!(e.text().contains("duration=unknown"));
    }

    #[test]
    fn ipv6_in_brackets() {
        let mut r = record(EVENT_FAILED);
        r.family = AF_INET6;
        r.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        r.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let e = Event::from_record(&r, &CLOCK).unwrap();
        assert_eq!(e.local, "[::1]:8080");
        assert_eq!(e.kind, Kind::Failed);
    }

    #[test]
    fn transitions_inside_a_life_are_not_events() {
        assert!(Event::from_record(&record(0), &CLOCK).is_none());
    }

    #[test]
    fn text_line() {
        let e = Event::from_record(&record(EVENT_CLOSE), &CLOCK).unwrap();
        assert_eq!(
            e.text(),
            "2025-11-24T16:00:00.000001Z close  inbound  port=8080 127.0.0.1:8080 <- 127.0.0.2:51234 duration=1.500000s reason=normal by=local sent=1200B received=80B rtt=41us retrans=0 pid=42 comm=nginx"
        );
    }

    #[test]
    fn idle_as_json_and_text() {
        let key = StatsKey::new(DIR_INBOUND, 8080);
        let local = "127.0.0.1:8080".parse().unwrap();
        let remote = "127.0.0.1:40000".parse().unwrap();
        let ts = 1_764_000_000_000_001_000;
        let e = Event::idle(
            ts,
            key,
            local,
            remote,
            Duration::from_millis(2345),
            &Owner::UNKNOWN,
        );
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["type"], "idle");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["port"], 8080);
        assert_eq!(v["local"], "127.0.0.1:8080");
        assert_eq!(v["remote"], "127.0.0.1:40000");
        assert_eq!(v["idle_seconds"], 2.345);
        assert!(v.get("duration_seconds").is_none());
        assert!(v["pid"].is_null());
        assert_eq!(
            e.text(),
            "2025-11-24T16:00:00.000001Z idle   inbound  port=8080 127.0.0.1:8080 <- 127.0.0.1:40000 idle=2.345s pid=- comm=-"
        );
        let nginx = crate::targets::owner(42, "nginx");
        let e = Event::idle(ts, key, local, remote, Duration::from_secs(3), &nginx);
        assert!(
            e.text().ends_with("idle=3.000s pid=42 comm=nginx"),
            "{}",
            e.text()
        );
        // Connection events keep their fields as they were: no idle_seconds.
        let close = Event::from_record(&record(EVENT_CLOSE), &CLOCK).unwrap();
        assert!(!close.json().contains("idle_seconds"));
    }

    #[test]
    fn limit_as_json_and_text() {
        let key = StatsKey::new(DIR_OUTBOUND, 5432);
        let e = LimitEvent::new(1_764_000_000_000_001_000, key, 10, 10, true);
        let v: serde_json::Value = serde_json::from_str(&e.format(Format::Json)).unwrap();
        assert_eq!(v["type"], "limit");
        assert_eq!(v["direction"], "outbound");
        assert_eq!(v["port"], 5432);
        assert_eq!(v["connections"], 10);
        assert_eq!(v["limit"], 10);
        assert_eq!(v["over"], true);
        assert_eq!(
            LimitEvent::new(1_764_000_000_000_001_000, key, 8, 10, false).text(),
            "2025-11-24T16:00:00.000001Z limit  outbound port=5432 connections=8 limit=10 under"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(4_102_444_799_999_999_000),
            "2099-12-31T23:59:59.999999Z"
        );
    }
}
