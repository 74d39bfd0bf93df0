//! Reading observer's JSON event stream.
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
