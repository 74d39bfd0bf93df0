//! Requests made with `curl`, the client people use, for what the tests' own plain-HTTP GET
//! cannot do: TLS, basic auth, client certificates.
use std::{process::Command, time::Duration};

/// What one `curl` run got.
#[derive(Debug)]
pub struct Got {
    /// The HTTP status; 0 when no HTTP answer came.
    pub status: u16,
    /// The response's header lines, as sent.
    pub head: String,
    pub body: String,
    /// curl's exit code (0: the transfer worked, whatever the status).
    pub exit: i32,
    /// What curl said on stderr.
    pub error: String,
    /// curl's `time_total`.
    pub took: Duration,
}

impl Got {
    /// The value of header `name` (any case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Runs `curl -sS -i` with `args` (and a 10 s limit).
pub fn curl(args: &[&str]) -> Got {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{time_total}",
        ])
        .args(args)
        .output()
        .expect("curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (response, written) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut w = written.split_whitespace();
    let status = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let took = w
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs_f64);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    Got {
        status,
        head: head.to_string(),
        body: body.to_string(),
        exit: out.status.code().unwrap_or(-1),
        error: String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    }
}
