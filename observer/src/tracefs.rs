//! tracefs: mounted when missing (TracePoint::attach needs it), and the tracepoint's format file
//! checked against the layout the eBPF program reads.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use observer_common::tracepoint::{CATEGORY, FIELDS, NAME};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted. It stays mounted after observer exits, as perf and bpftrace
/// leave it: it is a view of the kernel's tracing state, not state of observer's.
pub fn ensure_mounted() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dst, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted at {TRACEFS} and mounting it failed: {err}");
    }
    Ok(())
}

/// Checks that the running kernel's record of `sock:inet_sock_set_state` has every field the
/// program reads at the offset and size it reads it.
pub fn check_format() -> Result<()> {
    let path = format!("{TRACEFS}/events/{CATEGORY}/{NAME}/format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("this kernel has no tracepoint {CATEGORY}:{NAME} (reading {path})")
    })?;
    check_fields(&text).with_context(|| format!("unexpected layout in {path}"))
}

fn check_fields(format: &str) -> Result<()> {
    let fields = parse(format);
    for (name, offset, size) in FIELDS {
        match fields.iter().find(|f| f.0 == name) {
            None => bail!("field {name} is missing"),
            Some(&(_, o, s)) if (o, s) != (offset, size) => bail!(
                "field {name} is at offset {o} size {s}; observer reads offset {offset} size {size}"
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// (name, offset, size) of each `field:` line of a tracefs format file.
fn parse(format: &str) -> Vec<(&str, usize, usize)> {
    let mut out = Vec::new();
    for line in format.lines() {
        let mut name = None;
        let (mut offset, mut size) = (None, None);
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(decl) = part.strip_prefix("field:") {
                let last = decl.split_whitespace().last().unwrap_or("");
                name = Some(last.split('[').next().unwrap_or(last));
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(n), Some(o), Some(s)) = (name, offset, size) {
            out.push((n, o, s));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 1507
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s ...\"
";

    #[test]
    fn accepts_the_layout_of_this_kernel() {
        check_fields(FORMAT_6_18).unwrap();
    }

    #[test]
    fn rejects_a_moved_field() {
        let moved = FORMAT_6_18.replace("sport;\toffset:24", "sport;\toffset:28");
        let err = check_fields(&moved).unwrap_err().to_string();
        assert!(err.contains("sport is at offset 28"), "{err}");
        let missing = FORMAT_6_18.replace("protocol", "proto");
        assert!(
            check_fields(&missing)
                .unwrap_err()
                .to_string()
                .contains("protocol is missing")
        );
    }
}
