//! Reading observer's event stream (`--events json` or `text`).
use std::{
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Collects JSON events until `done` says so or `timeout` passes, then `settle` more.
pub fn collect(
    rx: &Receiver<String>,
    timeout: Duration,
    settle: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end && !done(&out) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            out.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")),
            );
        }
    }
    let end = Instant::now() + settle;
    while Instant::now() < end {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            out.push(serde_json::from_str(&line).unwrap());
        }
    }
    out
}

/// The events of one type (`open`, `close`, `failed`).
pub fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

/// What an event line says first: its type (`open`, `close`, `failed`), direction and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub kind: String,
    pub direction: String,
    pub port: u16,
}

/// `{"ts":..,"type":"open","direction":"inbound","port":8080,...}`
pub fn json_head(line: &str) -> Option<Head> {
    let v: Value = serde_json::from_str(line).ok()?;
    Some(Head {
        kind: v["type"].as_str()?.to_string(),
        direction: v["direction"].as_str()?.to_string(),
        port: u16::try_from(v["port"].as_u64()?).ok()?,
    })
}

/// `2025-11-24T16:00:00.000001Z close  inbound  port=8080 127.0.0.1:8080 <- ...`
pub fn text_head(line: &str) -> Option<Head> {
    let mut w = line.split_whitespace();
    let _ts = w.next()?;
    Some(Head {
        kind: w.next()?.to_string(),
        direction: w.next()?.to_string(),
        port: w.next()?.strip_prefix("port=")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_head_of_an_event_in_both_formats() {
        let head = |kind: &str, direction: &str, port| Head {
            kind: kind.into(),
            direction: direction.into(),
            port,
        };
        assert_eq!(
            text_head(
                "2025-11-24T16:00:00.000001Z close  inbound  port=8080 127.0.0.1:8080 <- 127.0.0.2:51234 duration=1.500000s pid=42 comm=nginx"
            ),
            Some(head("close", "inbound", 8080))
        );
        assert_eq!(
            json_head(
                r#"{"ts":"2026-11-24T06:17:54.911116Z","type":"failed","direction":"outbound","port":9101,"local":"127.0.0.1:1","remote":"127.0.0.1:9101","pid":null,"comm":null}"#
            ),
            Some(head("failed", "outbound", 9101))
        );
        assert_eq!(text_head("observer: not an event"), None);
        assert_eq!(json_head(r#"{"type":"open"}"#), None);
    }
}
