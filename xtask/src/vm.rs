//! `cargo xtask vm-test [KERNEL...]`: boots Debian's own kernel packages under qemu (software
//! emulation: KVM guests hang on this machine kind) with an initramfs holding the static observer,
//! tcp-helper and vm-guest binaries, busybox and the kernel's sock_diag modules, and reports the
//! guest's tests (`tests/src/bin/vm-guest.rs`) per kernel.
//!
//! KERNEL is an alias (`5.10`, `6.1`, `6.12`, `6.12-trixie`, `7`: the newest package of that
//! series in Debian's archive), an exact Debian package name, or a path to a `.deb` (several,
//! comma-separated, are unpacked together). No KERNEL: every alias.
//!
//! Packages come from a private apt configuration (the host's mirror, the suites of every
//! kernel) kept with the downloaded debs in a cache that outlives the work tree:
//! `/var/cache/observer-vm-test`, or `$OBSERVER_VM_CACHE`. The system's apt configuration is not
//! touched. Other environment: `OBSERVER_VM_BIN` (test this observer binary, which must be
//! static), `OBSERVER_VM_TIMEOUT` (seconds per kernel, default 600), `OBSERVER_VM_TESTS` (only
//! these guest tests, comma-separated; one named n times runs n times), `OBSERVER_VM_VERBOSE=1` (echo the guest's VMT lines).
use std::{
    cmp::Ordering,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{dist, setup};

/// The guest's `/init`.
const INIT: &str = include_str!("vm-init.sh");
const DEFAULT_CACHE: &str = "/var/cache/observer-vm-test";
const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// How old the private package lists may get before `apt-get update`.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const BUSYBOX: &str = "/bin/busybox";
/// The suites of the private apt configuration, and the security suites beside them.
const SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "sid",
];
const SECURITY_SUITES: &[&str] = &["bullseye-security", "bookworm-security", "trixie-security"];
/// The modules observer's snapshot needs (sock_diag for TCP).
const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];

/// A kernel series: the newest package whose name matches `pattern` (`#`: one or more digits)
/// in one of `suites`.
#[derive(Debug)]
pub struct Alias {
    pub name: &'static str,
    pub pattern: &'static str,
    pub suites: &'static [&'static str],
}

pub const ALIASES: &[Alias] = &[
    Alias {
        name: "5.10",
        pattern: "linux-image-5.10.0-#-amd64-unsigned",
        suites: &["bullseye", "bullseye-security"],
    },
    Alias {
        name: "6.1",
        pattern: "linux-image-6.1.0-#-amd64-unsigned",
        suites: &["bookworm", "bookworm-security"],
    },
    Alias {
        name: "6.12",
        pattern: "linux-image-6.12.#+deb12-amd64-unsigned",
        suites: &["bookworm-backports"],
    },
    Alias {
        name: "6.12-trixie",
        pattern: "linux-image-6.12.#+deb13-amd64-unsigned",
        suites: &["trixie", "trixie-security"],
    },
    // Debian's 7.x splits the image: linux-binary-V (the kernel) + linux-modules-V.
    Alias {
        name: "7",
        pattern: "linux-binary-7.#.#+deb#-amd64",
        suites: &["sid", "forky"],
    },
];

pub fn alias(name: &str) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.name == name)
}

/// Whether `name` matches `pattern`, where `#` stands for one or more ASCII digits and every
/// other character for itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'#', rest)) => {
                let digits = n.iter().take_while(|b| b.is_ascii_digit()).count();
                (1..=digits).any(|k| go(rest, &n[k..]))
            }
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// Debian 7.x: the modules package that goes with a `linux-binary-*` package.
pub fn companion(package: &str) -> Option<String> {
    package
        .strip_prefix("linux-binary-")
        .map(|rest| format!("linux-modules-{rest}"))
}

/// One version of a package that apt knows, and the suite it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub version: String,
    pub suite: String,
}

/// `apt-cache madison` lines: ` NAME | VERSION | URI SUITE/COMPONENT ARCH Packages`.
pub fn parse_madison(text: &str) -> Vec<Candidate> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('|').map(str::trim);
            let (name, version, source) = (f.next()?, f.next()?, f.next()?);
            let suite = source.split_whitespace().nth(1)?.split('/').next()?;
            (!name.is_empty() && !version.is_empty()).then(|| Candidate {
                name: name.to_string(),
                version: version.to_string(),
                suite: suite.to_string(),
            })
        })
        .collect()
}

/// The candidate with the highest Debian version, among those in `suites` (all when empty).
pub fn newest<'a>(candidates: &'a [Candidate], suites: &[&str]) -> Option<&'a Candidate> {
    candidates
        .iter()
        .filter(|c| suites.is_empty() || suites.contains(&c.suite.as_str()))
        .max_by(|a, b| compare_versions(&a.version, &b.version))
}

/// Debian's version ordering (as `dpkg --compare-versions`): epoch, then upstream version, then
/// revision, each compared by dpkg's algorithm (`~` sorts before everything, even the end).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.bytes().all(|b| b.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(b'~') => -1,
            Some(c) => c as i32 + 256,
        }
    }
    fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
        let (mut i, mut j) = (0, 0);
        let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
        while i < a.len() || j < b.len() {
            while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
                let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
                if ac != bc {
                    return ac.cmp(&bc);
                }
                i += 1;
                j += 1;
            }
            while a.get(i) == Some(&b'0') {
                i += 1;
            }
            while b.get(j) == Some(&b'0') {
                j += 1;
            }
            let mut first_diff = Ordering::Equal;
            while digit(a, i) && digit(b, j) {
                if first_diff == Ordering::Equal {
                    first_diff = a[i].cmp(&b[j]);
                }
                i += 1;
                j += 1;
            }
            if digit(a, i) {
                return Ordering::Greater;
            }
            if digit(b, j) {
                return Ordering::Less;
            }
            if first_diff != Ordering::Equal {
                return first_diff;
            }
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| verrevcmp(ra.as_bytes(), rb.as_bytes()))
}

/// The mirrors of the host's apt sources, as (URI, suite) pairs, from a one-line-style
/// `sources.list` (`deb [opts] URI SUITE COMPONENTS`) or a deb822 `.sources` file.
pub fn parse_sources(text: &str, deb822: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if deb822 {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
                    })
                    .unwrap_or("")
            };
            if !field("Types").split_whitespace().any(|t| t == "deb")
                || field("Enabled").eq_ignore_ascii_case("no")
            {
                continue;
            }
            for uri in field("URIs").split_whitespace() {
                for suite in field("Suites").split_whitespace() {
                    out.push((uri.to_string(), suite.to_string()));
                }
            }
        }
    } else {
        for line in text.lines() {
            let mut w = line.split_whitespace().peekable();
            if w.next() != Some("deb") {
                continue;
            }
            if w.peek().is_some_and(|o| o.starts_with('[')) {
                for o in w.by_ref() {
                    if o.ends_with(']') {
                        break;
                    }
                }
            }
            if let (Some(uri), Some(suite)) = (w.next(), w.next()) {
                out.push((uri.to_string(), suite.to_string()));
            }
        }
    }
    out
}

/// The Debian mirror and the Debian security mirror among the host's sources: the first URIs
/// that serve a Debian suite (`bookworm`, `bookworm-updates`, `bookworm-security`, ...).
pub fn debian_mirrors(sources: &[(String, String)]) -> Option<(String, String)> {
    const CODENAMES: &[&str] = &[
        "buster",
        "bullseye",
        "bookworm",
        "trixie",
        "forky",
        "sid",
        "stable",
        "testing",
        "unstable",
        "oldstable",
    ];
    let debian = |(_, suite): &&(String, String)| {
        CODENAMES.contains(&suite.split(['-', '/']).next().unwrap_or(""))
    };
    let security = |(uri, suite): &&(String, String)| {
        suite.contains("-security") || suite.contains("/updates") || uri.contains("-security")
    };
    let main = sources
        .iter()
        .filter(debian)
        .find(|s| !security(s))?
        .0
        .clone();
    let sec = sources
        .iter()
        .filter(debian)
        .find(security)
        .map(|s| s.0.clone())
        .unwrap_or_else(|| format!("{}-security", main.trim_end_matches('/')));
    Some((main, sec))
}

/// What the guest reported on the console.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// `/init` ran (`VMT: BEGIN`).
    pub booted: bool,
    pub passed: Vec<String>,
    /// The whole `VMT: FAIL ...` lines.
    pub failed: Vec<String>,
    /// `VMT: RESULT P passed, F failed`.
    pub result: Option<(u32, u32)>,
    pub info: Vec<String>,
    /// The kernel panicked (its own words).
    pub panic: Option<String>,
    /// The test that had started (`VMT: info running NAME`) and not reported.
    pub unfinished: Option<String>,
}

pub fn parse_guest(console: &str) -> GuestReport {
    let mut r = GuestReport::default();
    for line in console.lines() {
        // Kernel messages can end up in front of a line on the shared console.
        let line = match line.find("VMT: ") {
            Some(i) => &line[i..],
            None => {
                if r.panic.is_none()
                    && let Some(i) = line.find("Kernel panic")
                {
                    r.panic = Some(line[i..].trim().to_string());
                }
                continue;
            }
        };
        let rest = &line["VMT: ".len()..];
        if rest.starts_with("BEGIN") {
            r.booted = true;
        } else if let Some(t) = rest.strip_prefix("ok ") {
            r.passed
                .push(t.split_whitespace().next().unwrap_or("").to_string());
            r.unfinished = None;
        } else if rest.starts_with("FAIL ") {
            r.failed.push(line.to_string());
            r.unfinished = None;
        } else if let Some(t) = rest.strip_prefix("RESULT ") {
            let n = |w: &str| {
                t.split(',')
                    .find_map(|p| p.trim().strip_suffix(w))
                    .and_then(|n| n.trim().parse().ok())
            };
            if let (Some(p), Some(f)) = (n(" passed"), n(" failed")) {
                r.result = Some((p, f));
            }
        } else if let Some(t) = rest.strip_prefix("info running ") {
            r.unfinished = Some(t.trim().to_string());
        } else if let Some(t) = rest.strip_prefix("info ") {
            r.info.push(t.to_string());
        }
    }
    r
}

/// One kernel's outcome: passed and failed counts, and why it failed when that is not (only)
/// its tests.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub passed: u32,
    pub failed: u32,
    pub reason: Option<String>,
}

/// Counts a guest report. A kernel that did not boot, did not finish (timeout, crash) or whose
/// observer did not load counts as failed, whatever its tests said.
pub fn verdict(r: &GuestReport, timed_out: Option<u64>) -> Verdict {
    let passed = r.passed.len() as u32;
    let mut failed = r.failed.len() as u32;
    let mut reason = None;
    if !r.booted {
        failed = failed.max(1);
        reason = Some(match (&r.panic, timed_out) {
            (Some(p), _) => format!("did not boot: {p}"),
            (None, Some(s)) => format!("did not boot (timed out after {s} s)"),
            (None, None) => "did not boot".to_string(),
        });
    } else if r.result.is_none() {
        // The guest stopped in the middle of a test: that test counts as failed.
        failed += 1;
        let during = r
            .unfinished
            .as_ref()
            .map(|t| format!(" during {t}"))
            .unwrap_or_default();
        reason = Some(match (timed_out, &r.panic) {
            (Some(s), _) => format!("timed out after {s} s{during}"),
            (None, Some(p)) => format!("guest crashed{during}: {p}"),
            (None, None) => format!("the guest stopped before its result line{during}"),
        });
    } else if let Some(f) = r.failed.iter().find(|f| f.contains("did not load")) {
        // The guest ends each line with the test's duration, ` (6.3 s)`.
        let f = match f.rsplit_once(" (") {
            Some((head, tail)) if tail.ends_with(" s)") => head,
            _ => f,
        };
        let why = f
            .split_once("verifier: ")
            .map(|(_, v)| v.split(" / ").next().unwrap_or(v).trim())
            .unwrap_or("see the console log");
        reason = Some(format!("observer did not load ({why})"));
    } else if r.result != Some((passed, failed)) {
        reason = Some(format!(
            "the guest's RESULT line {:?} disagrees with its test lines",
            r.result
        ));
        failed = failed.max(1);
    }
    Verdict {
        passed,
        failed,
        reason,
    }
}

/// The program interpreter an ELF64 file asks for (PT_INTERP): None for a static executable.
pub fn elf_interpreter(bytes: &[u8]) -> Result<Option<String>> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| -> Result<usize> {
        let b = bytes
            .get(o..o + 8)
            .ok_or_else(|| anyhow!("truncated ELF"))?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = bytes
            .get(ph..ph + 4)
            .ok_or_else(|| anyhow!("truncated ELF program headers"))?;
        if u32::from_le_bytes(p_type.try_into().expect("4 bytes")) == 3 {
            let (off, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
            let s = bytes
                .get(off..off + size)
                .ok_or_else(|| anyhow!("truncated PT_INTERP"))?;
            let s = s.split(|&b| b == 0).next().unwrap_or(s);
            return Ok(Some(String::from_utf8_lossy(s).into_owned()));
        }
    }
    Ok(None)
}

/// An initramfs, as a cpio archive in the "newc" format the kernel unpacks.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, 2, 0, &[]);
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, 1, 0, data);
    }

    /// A character device node (`/dev/console` must exist before devtmpfs is mounted).
    pub fn char_dev(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | mode, 1, (major << 8) | minor, &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            write!(self.buf, "{f:08x}").expect("writing to a Vec");
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, 0, &[]);
        self.buf
    }
}

/// The kernel release of a vmlinuz found in a package: `boot/vmlinuz-REL` or
/// `.../modules/REL/vmlinuz`.
pub fn release_of(vmlinuz: &Path) -> Option<String> {
    let name = vmlinuz.file_name()?.to_str()?;
    match name.strip_prefix("vmlinuz-") {
        Some(r) => Some(r.to_string()),
        None if name == "vmlinuz" => Some(vmlinuz.parent()?.file_name()?.to_str()?.to_string()),
        None => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The command.

struct Settings {
    cache: PathBuf,
    out: PathBuf,
    timeout: u64,
    tests: Option<String>,
    verbose: bool,
}

/// What a KERNEL argument became.
struct Target {
    arg: String,
    /// The packages (or deb files) it names, for the table.
    package: String,
    debs: Result<Vec<PathBuf>>,
}

/// One row of the final table.
struct Row {
    arg: String,
    package: String,
    release: String,
    verdict: Verdict,
    secs: u64,
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let t0 = Instant::now();
    let target_dir = dist::target_dir();
    let settings = Settings {
        cache: std::env::var_os("OBSERVER_VM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_CACHE.into()),
        out: target_dir.join("vm-test"),
        timeout: match std::env::var("OBSERVER_VM_TIMEOUT") {
            Ok(s) => s
                .parse()
                .with_context(|| format!("OBSERVER_VM_TIMEOUT={s} is not a number of seconds"))?,
            Err(_) => DEFAULT_TIMEOUT_SECS,
        },
        tests: std::env::var("OBSERVER_VM_TESTS")
            .ok()
            .filter(|s| !s.is_empty()),
        verbose: std::env::var_os("OBSERVER_VM_VERBOSE").is_some_and(|v| v != "0"),
    };
    let args: Vec<String> = if args.is_empty() {
        ALIASES.iter().map(|a| a.name.to_string()).collect()
    } else {
        args.to_vec()
    };
    if let Some(a) = args.iter().find(|a| a.starts_with('-')) {
        bail!(
            "vm-test takes kernels (aliases {}, package names or .deb paths), not `{a}`",
            ALIASES
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let bins = build()?;
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    if let Some(i) = elf_interpreter(&busybox)? {
        bail!("{BUSYBOX} is dynamically linked ({i}): install busybox-static");
    }

    let targets = resolve(&settings, &args)?;

    let mut rows = Vec::new();
    for t in targets {
        // A kernel that could not be fetched or booted is one failure, with the reason.
        let failed = |e: &anyhow::Error| Row {
            arg: t.arg.clone(),
            package: t.package.clone(),
            release: "-".into(),
            verdict: Verdict {
                passed: 0,
                failed: 1,
                reason: Some(format!("{e:#}")),
            },
            secs: 0,
        };
        let row = match &t.debs {
            Err(e) => failed(e),
            Ok(debs) => match boot(&settings, &bins, &busybox, debs) {
                Ok((release, verdict, secs)) => Row {
                    arg: t.arg.clone(),
                    package: t.package.clone(),
                    release,
                    verdict,
                    secs,
                },
                Err(e) => failed(&e),
            },
        };
        if row.release == "-" {
            println!(
                "vm-test: {}  0 passed, 1 failed  (0 s)  {}",
                row.arg,
                row.verdict.reason.as_deref().unwrap_or("")
            );
        }
        rows.push(row);
    }

    println!();
    let width = |f: fn(&Row) -> &str, title: &str| {
        rows.iter()
            .map(|r| f(r).len())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (wk, wp, wr) = (
        width(|r| short(&r.arg), "kernel"),
        width(|r| &r.package, "package"),
        width(|r| &r.release, "release"),
    );
    println!(
        "{:<wk$}  {:<wp$}  {:<wr$}  {:>6} {:>6} {:>6}  note",
        "kernel", "package", "release", "passed", "failed", "secs"
    );
    let (mut passed, mut failed) = (0, 0);
    for r in &rows {
        passed += r.verdict.passed;
        failed += r.verdict.failed;
        println!(
            "{:<wk$}  {:<wp$}  {:<wr$}  {:>6} {:>6} {:>6}  {}",
            short(&r.arg),
            r.package,
            r.release,
            r.verdict.passed,
            r.verdict.failed,
            r.secs,
            r.verdict.reason.as_deref().unwrap_or("")
        );
    }
    println!("vm-test: whole run {} s", t0.elapsed().as_secs());
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A KERNEL argument for the table: a deb path by its file name.
fn short(arg: &str) -> &str {
    if arg.ends_with(".deb") {
        arg.rsplit('/').next().unwrap_or(arg)
    } else {
        arg
    }
}

/// The three static binaries that go into the guest.
struct Binaries {
    observer: PathBuf,
    tcp_helper: PathBuf,
    vm_guest: PathBuf,
}

/// Builds observer, tcp-helper and vm-guest statically (as users get them), and checks that
/// they are.
fn build() -> Result<Binaries> {
    let other = std::env::var_os("OBSERVER_VM_BIN").map(PathBuf::from);
    let mut args = vec![];
    if other.is_none() {
        args.extend(["-p", "observer", "--bin", "observer"]);
    }
    args.extend([
        "-p",
        "observer-tests",
        "--bin",
        "tcp-helper",
        "--bin",
        "vm-guest",
    ]);
    let t = Instant::now();
    let dir = dist::static_build(&args)?;
    let bins = Binaries {
        observer: other.unwrap_or_else(|| dir.join("observer")),
        tcp_helper: dir.join("tcp-helper"),
        vm_guest: dir.join("vm-guest"),
    };
    for b in [&bins.observer, &bins.tcp_helper, &bins.vm_guest] {
        // The guest has no libraries.
        dist::check_static(b)?;
    }
    println!(
        "vm-test: built static observer ({} MB), tcp-helper, vm-guest in {} s",
        fs::metadata(&bins.observer)?.len() / 1_000_000,
        t.elapsed().as_secs()
    );
    Ok(bins)
}

// ---------------------------------------------------------------------------------------------
// Packages.

/// The private apt configuration in `$cache/apt`.
struct Apt {
    conf: PathBuf,
}

impl Apt {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", &self.conf);
        c
    }

    /// Runs an apt command, returning its stdout; an error carries its stderr.
    fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("starting {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Makes (or refreshes) the private apt configuration: the host's mirror, every suite of the
/// kernels; `apt-get update` when its lists are missing, older than a day, or its sources changed.
fn apt(cache: &Path) -> Result<Apt> {
    let dir = cache.join("apt");
    for d in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        fs::create_dir_all(dir.join(d)).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut sources = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let name = f.to_string_lossy();
        let deb822 = name.ends_with(".sources");
        if !deb822 && !name.ends_with(".list") {
            continue;
        }
        if let Ok(text) = fs::read_to_string(&f) {
            sources.extend(parse_sources(&text, deb822));
        }
    }
    let (main, security) = debian_mirrors(&sources)
        .ok_or_else(|| anyhow!("no Debian mirror in this host's apt sources (/etc/apt)"))?;
    let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mut list = String::new();
    for s in SUITES {
        writeln!(list, "deb [signed-by={key}] {main} {s} main")?;
    }
    for s in SECURITY_SUITES {
        writeln!(list, "deb [signed-by={key}] {security} {s} main")?;
    }
    let d = dir.display();
    let conf = format!(
        "Dir::Etc::sourcelist \"{d}/sources.list\";\n\
         Dir::Etc::sourceparts \"{d}/sources.list.d\";\n\
         Dir::State::Lists \"{d}/lists\";\n\
         Dir::Cache \"{d}/cache\";\n\
         Dir::Cache::pkgcache \"{d}/cache/pkgcache.bin\";\n\
         Dir::Cache::srcpkgcache \"{d}/cache/srcpkgcache.bin\";\n\
         Acquire::Languages \"none\";\n\
         APT::Sandbox::User \"root\";\n"
    );
    let changed = write_if_changed(&dir.join("sources.list"), &list)?
        | write_if_changed(&dir.join("apt.conf"), &conf)?;
    let apt = Apt {
        conf: dir.join("apt.conf"),
    };
    let stamp = dir.join("updated");
    let age = fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    if changed || age.is_none_or(|a| a > LISTS_MAX_AGE) {
        let t = Instant::now();
        println!("vm-test: apt-get update ({main} and {security}; lists in {d}/lists)");
        let out = apt
            .command("apt-get")
            .args(["update", "-q"])
            .output()
            .context("starting apt-get update")?;
        let size: u64 = fs::read_dir(dir.join("lists"))?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        println!(
            "vm-test: apt-get update took {} s ({} MB of lists)",
            t.elapsed().as_secs(),
            size / 1_000_000
        );
        if out.status.success() {
            fs::write(&stamp, "")?;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            if size == 0 {
                bail!("apt-get update failed ({}): {}", out.status, err.trim());
            }
            println!(
                "vm-test: warning: apt-get update failed ({}), using the lists there are: {}",
                out.status,
                err.trim()
            );
        }
    }
    Ok(apt)
}

/// Writes `text` to `path` unless it is there already; true when it wrote.
fn write_if_changed(path: &Path, text: &str) -> Result<bool> {
    if fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Turns each KERNEL argument into the debs it stands for, downloading what is missing.
fn resolve(settings: &Settings, args: &[String]) -> Result<Vec<Target>> {
    let mut apt_conf = None;
    let mut targets = Vec::new();
    for arg in args {
        let files: Vec<&str> = arg.split(',').collect();
        if files
            .iter()
            .all(|f| f.ends_with(".deb") || Path::new(f).is_file())
        {
            let mut debs: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
            // A lone linux-binary deb: its modules package, when it lies beside it.
            if let [one] = debs.as_slice()
                && let Some(name) = one.file_name().and_then(|n| n.to_str())
                && let Some(m) = companion(name)
                && one.with_file_name(&m).is_file()
            {
                debs.push(one.with_file_name(m));
            }
            let missing: Vec<String> = debs
                .iter()
                .filter(|d| !d.is_file())
                .map(|d| d.display().to_string())
                .collect();
            targets.push(Target {
                arg: arg.clone(),
                package: debs
                    .iter()
                    .filter_map(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" + "),
                debs: if missing.is_empty() {
                    Ok(debs)
                } else {
                    Err(anyhow!("no such file: {}", missing.join(", ")))
                },
            });
            continue;
        }
        if apt_conf.is_none() {
            apt_conf = Some(apt(&settings.cache)?);
        }
        let apt = apt_conf.as_ref().expect("just made");
        let target = match resolve_package(apt, arg) {
            Ok(packages) => {
                let label = packages
                    .iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
                    .join(" + ");
                println!(
                    "vm-test: {arg} -> {}",
                    packages
                        .iter()
                        .map(|c| format!("{} {} ({})", c.name, c.version, c.suite))
                        .collect::<Vec<_>>()
                        .join(" + ")
                );
                let debs = packages
                    .iter()
                    .map(|c| download(apt, &settings.cache.join("debs"), c))
                    .collect();
                Target {
                    arg: arg.clone(),
                    package: label,
                    debs,
                }
            }
            Err(e) => {
                println!("vm-test: {arg}: {e:#}");
                Target {
                    arg: arg.clone(),
                    package: "-".into(),
                    debs: Err(e),
                }
            }
        };
        targets.push(target);
    }
    Ok(targets)
}

/// The newest package an alias or package name stands for (and its modules package, for 7.x).
fn resolve_package(apt: &Apt, arg: &str) -> Result<Vec<Candidate>> {
    let (names, suites): (Vec<String>, &[&str]) = match alias(arg) {
        Some(a) => {
            let prefix = &a.pattern[..a.pattern.find('#').unwrap_or(a.pattern.len())];
            let all = apt.output("apt-cache", &["pkgnames", prefix])?;
            let names: Vec<String> = all
                .lines()
                .filter(|n| glob_match(a.pattern, n))
                .map(str::to_string)
                .collect();
            if names.is_empty() {
                bail!("no package matches {} in the private apt lists", a.pattern);
            }
            (names, a.suites)
        }
        None => (vec![arg.to_string()], &[]),
    };
    let mut args = vec!["madison"];
    args.extend(names.iter().map(String::as_str));
    let candidates = parse_madison(&apt.output("apt-cache", &args)?);
    let best = newest(&candidates, suites)
        .ok_or_else(|| {
            if suites.is_empty() {
                anyhow!("no package {arg} in the private apt lists")
            } else {
                anyhow!(
                    "no version of {} in {}",
                    names.join(" "),
                    suites.join(" or ")
                )
            }
        })?
        .clone();
    let mut out = vec![best.clone()];
    if let Some(m) = companion(&best.name) {
        let c = parse_madison(&apt.output("apt-cache", &["madison", &m])?);
        let same = c
            .iter()
            .find(|c| c.version == best.version)
            .ok_or_else(|| anyhow!("{m} {} is not in the archive", best.version))?;
        out.push(same.clone());
    }
    Ok(out)
}

/// The deb of a package version, downloaded once into `dir` (a download lands in a private
/// directory first, so a file in `dir` is always whole).
fn download(apt: &Apt, dir: &Path, c: &Candidate) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let prefix = format!("{}_{}_", c.name, c.version.replace(':', "%3a"));
    let existing = |d: &Path| -> Option<PathBuf> {
        fs::read_dir(d).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
    };
    if let Some(p) = existing(dir) {
        println!(
            "vm-test: cached {} ({:.1} MB)",
            p.display(),
            fs::metadata(&p)?.len() as f64 / 1e6
        );
        return Ok(p);
    }
    let tmp = dir.join(format!("partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let t = Instant::now();
    let spec = format!("{}={}", c.name, c.version);
    let r = apt
        .command("apt-get")
        .args(["download", "-q", &spec])
        .current_dir(&tmp)
        .output()
        .context("starting apt-get download");
    let got = existing(&tmp);
    let result = match (r, got) {
        (Ok(o), Some(p)) if o.status.success() => {
            let dest = dir.join(p.file_name().expect("a file"));
            fs::rename(&p, &dest)?;
            println!(
                "vm-test: downloaded {} ({:.1} MB in {:.1} s)",
                dest.display(),
                fs::metadata(&dest)?.len() as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            Ok(dest)
        }
        (Ok(o), _) => Err(anyhow!(
            "apt-get download {spec} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        (Err(e), _) => Err(e),
    };
    let _ = fs::remove_dir_all(&tmp);
    result
}

// ---------------------------------------------------------------------------------------------
// Booting.

/// A kernel unpacked from its debs.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    /// The modules, decompressed, by name; a missing one is absent.
    modules: Vec<(&'static str, PathBuf)>,
}

/// Unpacks vmlinuz and the sock_diag modules from `debs` (once: the result stays beside them).
fn unpack(debs: &[PathBuf]) -> Result<Kernel> {
    let first = &debs[0];
    // One directory per set of debs (a linux-binary deb unpacked alone has no modules).
    let stem = debs
        .iter()
        .map(|d| {
            d.file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| anyhow!("odd deb name {}", d.display()))
        })
        .collect::<Result<Vec<_>>>()?
        .join("+");
    let base = first
        .parent()
        .unwrap_or(Path::new("."))
        .join("unpacked")
        .join(stem);
    let done = base.join(".done");
    if !done.exists() {
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base)?;
        for deb in debs {
            let mut dpkg = Command::new("dpkg-deb")
                .arg("--fsys-tarfile")
                .arg(deb)
                .stdout(Stdio::piped())
                .spawn()
                .context("starting dpkg-deb")?;
            // tar fails when a pattern matches nothing (a modules-only deb has no vmlinuz):
            // what was found is checked below instead.
            let _ = Command::new("tar")
                .args(["-x", "-C"])
                .arg(&base)
                .args([
                    "--wildcards",
                    "./boot/vmlinuz-*",
                    "*/modules/*/vmlinuz",
                    "*/inet_diag.ko*",
                    "*/tcp_diag.ko*",
                ])
                .stdin(dpkg.stdout.take().expect("piped"))
                .stderr(Stdio::null())
                .status()
                .context("starting tar")?;
            let s = dpkg.wait()?;
            if !s.success() {
                bail!("dpkg-deb --fsys-tarfile {} failed ({s})", deb.display());
            }
        }
        let files = walk(&base);
        for m in MODULES {
            let Some(src) = files.iter().find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == format!("{m}.ko") || n.starts_with(&format!("{m}.ko.")))
            }) else {
                continue;
            };
            let dest = base.join(format!("{m}.ko"));
            let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("");
            let tool = match ext {
                "xz" => Some("xz"),
                "zst" => Some("zstd"),
                "gz" => Some("gzip"),
                _ => None,
            };
            match tool {
                Some(tool) => {
                    let out = Command::new(tool)
                        .args(["-dc"])
                        .arg(src)
                        .output()
                        .with_context(|| format!("starting {tool}"))?;
                    if !out.status.success() {
                        bail!("{tool} -dc {} failed", src.display());
                    }
                    fs::write(&dest, out.stdout)?;
                }
                None => {
                    fs::copy(src, &dest)?;
                }
            }
        }
        fs::write(&done, "")?;
    }
    let files = walk(&base);
    let vmlinuz = files
        .iter()
        .find(|p| release_of(p).is_some())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "no vmlinuz in {}",
                debs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let release = release_of(&vmlinuz).expect("checked");
    let modules: Vec<_> = MODULES
        .iter()
        .map(|m| (*m, base.join(format!("{m}.ko"))))
        .filter(|(_, p)| p.is_file())
        .collect();
    if modules.len() < MODULES.len() {
        println!(
            "vm-test: warning: {release}: {} not all in the debs; observer's snapshot needs them",
            MODULES.join(".ko and ")
        );
    }
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The gzipped initramfs: busybox, the three binaries, the modules, `/init`.
fn initramfs(bins: &Binaries, busybox: &[u8], kernel: &Kernel, dest: &Path) -> Result<()> {
    let mut c = Cpio::default();
    for d in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "lib", "lib/vmt",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.file("init", 0o755, INIT.as_bytes());
    c.file("bin/busybox", 0o755, busybox);
    for (name, path) in [
        ("bin/observer", &bins.observer),
        ("bin/tcp-helper", &bins.tcp_helper),
        ("bin/vm-guest", &bins.vm_guest),
    ] {
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        c.file(name, 0o755, &data);
    }
    for (m, path) in &kernel.modules {
        c.file(&format!("lib/vmt/{m}.ko"), 0o644, &fs::read(path)?);
    }
    c.file("etc/passwd", 0o644, b"root:x:0:0:root:/:/bin/sh\n");
    let archive = c.finish();
    let out = fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut gzip = Command::new("gzip")
        .args(["-1", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("starting gzip")?;
    gzip.stdin
        .take()
        .expect("piped")
        .write_all(&archive)
        .context("writing the initramfs")?;
    let s = gzip.wait()?;
    if !s.success() {
        bail!("gzip failed ({s})");
    }
    Ok(())
}

/// Boots one kernel, prints its line, and returns (release, verdict, seconds).
fn boot(
    settings: &Settings,
    bins: &Binaries,
    busybox: &[u8],
    debs: &[PathBuf],
) -> Result<(String, Verdict, u64)> {
    let kernel = unpack(debs)?;
    let out = settings.out.join(&kernel.release);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let initrd = out.join("initrd.gz");
    initramfs(bins, busybox, &kernel, &initrd)?;
    let log_path = out.join("console.log");
    let mut append = "console=ttyS0 panic=-1 loglevel=4".to_string();
    if let Some(t) = &settings.tests {
        write!(append, " vmt.tests={t}")?;
    }
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2"])
        .args(["-m", "1536M", "-nographic", "-no-reboot", "-nodefaults"])
        .args(["-serial", "stdio", "-display", "none", "-kernel"])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(&append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let log = Arc::new(Mutex::new(
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?,
    ));
    let verbose = settings.verbose;
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ]
    .into_iter()
    .map(|r| {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                line.retain(|&b| b != b'\r');
                let _ = log.lock().expect("log").write_all(&line);
                if verbose && line.starts_with(b"VMT: ") {
                    print!("    {}", String::from_utf8_lossy(&line));
                }
                line.clear();
            }
        })
    })
    .collect();
    let deadline = Duration::from_secs(settings.timeout);
    let mut timed_out = None;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = Some(settings.timeout);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for r in readers {
        let _ = r.join();
    }
    let secs = start.elapsed().as_secs();
    let mut console = String::new();
    fs::File::open(&log_path)?.read_to_string(&mut console)?;
    let console = console.replace('\0', "");
    let report = parse_guest(&console);
    let v = verdict(&report, timed_out);
    let rel_log = log_path
        .strip_prefix(setup::workspace())
        .unwrap_or(&log_path)
        .display()
        .to_string();
    let mut line = format!(
        "vm-test: {}  {} passed, {} failed  ({secs} s)",
        kernel.release, v.passed, v.failed
    );
    if v.failed > 0 {
        write!(
            line,
            "  {}; console: {rel_log}",
            v.reason.as_deref().unwrap_or("test failures")
        )?;
    }
    println!("{line}");
    if v.failed > 0 {
        for f in &report.failed {
            println!("    {f}");
        }
    }
    Ok((kernel.release, v, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_match_their_packages_only() {
        let m = |a: &str, n: &str| glob_match(alias(a).unwrap().pattern, n);
        assert!(m("5.10", "linux-image-5.10.0-32-amd64-unsigned"));
        assert!(!m("5.10", "linux-image-5.10.0-32-cloud-amd64-unsigned"));
        assert!(!m("5.10", "linux-image-5.10.0-32-amd64"));
        assert!(!m("5.10", "linux-image-5.10.0--amd64-unsigned"));
        assert!(m("6.1", "linux-image-6.1.0-56-amd64-unsigned"));
        assert!(!m("6.1", "linux-image-6.1.0-56-rt-amd64-unsigned"));
        assert!(m("6.12", "linux-image-6.12.95+deb12-amd64-unsigned"));
        assert!(!m("6.12", "linux-image-6.12.95+deb13-amd64-unsigned"));
        assert!(m(
            "6.12-trixie",
            "linux-image-6.12.118+deb13-amd64-unsigned"
        ));
        assert!(!m(
            "6.12-trixie",
            "linux-image-6.12.118+deb13-cloud-amd64-unsigned"
        ));
        assert!(m("7", "linux-binary-7.2.13+deb14-amd64"));
        assert!(!m("7", "linux-binary-7.2.13+deb14-cloud-amd64"));
        assert!(!m("7", "linux-modules-7.2.13+deb14-amd64"));
        assert!(alias("4.19").is_none());
        assert_eq!(
            companion("linux-binary-7.2.13+deb14-amd64").as_deref(),
            Some("linux-modules-7.2.13+deb14-amd64")
        );
        assert_eq!(companion("linux-image-6.1.0-56-amd64-unsigned"), None);
    }

    #[test]
    fn debian_versions_order_like_dpkg() {
        use Ordering::*;
        for (a, b, want) in [
            ("5.10.223-1", "5.10.237-1", Less),
            ("6.12.9-1", "6.12.10-1", Less),
            ("6.12.10-1~bpo12+1", "6.12.10-1", Less),
            ("6.1.0~rc1-1", "6.1.0-1", Less),
            ("1:1.0", "9.9", Greater),
            ("1.0", "1.0", Equal),
            ("1.0-1", "1.0-01", Equal),
            ("1.0a", "1.0", Greater),
            ("1.0+b1", "1.0", Greater),
            ("1.0~", "1.0", Less),
            ("2.0", "10.0", Less),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// The same answers as dpkg itself, where dpkg is at hand.
    #[test]
    fn debian_versions_agree_with_dpkg() {
        let versions = [
            "5.10.223-1",
            "5.10.237-1",
            "6.12.9-1~bpo12+1",
            "6.12.10-1",
            "1:0.1",
            "1.0~rc1",
            "1.0",
            "1.0.0",
            "1.0a",
            "1.0-1+deb12u1",
            "1.0-1",
        ];
        if Command::new("dpkg").arg("--version").output().is_err() {
            return;
        }
        for a in versions {
            for b in versions {
                let lt = Command::new("dpkg")
                    .args(["--compare-versions", a, "lt", b])
                    .status()
                    .unwrap()
                    .success();
                assert_eq!(compare_versions(a, b) == Ordering::Less, lt, "{a} < {b}");
            }
        }
    }

    #[test]
    fn newest_is_by_version_and_suite() {
        let text = "\
linux-image-5.10.0-9-amd64-unsigned | 5.10.70-1 | http://deb.debian.org/debian bullseye/main amd64 Packages
linux-image-5.10.0-32-amd64-unsigned | 5.10.223-1 | http://deb.debian.org/debian bullseye/main amd64 Packages
linux-image-5.10.0-35-amd64-unsigned | 5.10.237-1 | http://deb.debian.org/debian-security bullseye-security/main amd64 Packages
linux-image-5.10.0-99-amd64-unsigned | 5.10.999-1 | http://deb.debian.org/debian sid/main amd64 Packages
";
        let c = parse_madison(text);
        assert_eq!(c.len(), 4);
        assert_eq!(c[2].suite, "bullseye-security");
        let best = newest(&c, alias("5.10").unwrap().suites).unwrap();
        assert_eq!(best.name, "linux-image-5.10.0-35-amd64-unsigned");
        assert_eq!(best.version, "5.10.237-1");
        assert_eq!(newest(&c, &[]).unwrap().version, "5.10.999-1");
        assert!(newest(&c, &["trixie"]).is_none());
    }

    #[test]
    fn mirrors_from_host_sources() {
        let deb822 = "\
Types: deb
# a comment
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
";
        let s = parse_sources(deb822, true);
        assert_eq!(s.len(), 3);
        assert_eq!(
            debian_mirrors(&s),
            Some((
                "http://deb.debian.org/debian".into(),
                "http://deb.debian.org/debian-security".into()
            ))
        );
        let list = "\
# deb http://example.org/commented bookworm main
deb https://packages.example.com/apt cloud-sdk main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main
deb-src http://mirror.example/debian bookworm main
";
        let s = parse_sources(list, false);
        assert_eq!(s.len(), 2);
        assert_eq!(
            debian_mirrors(&s),
            Some((
                "http://mirror.example/debian".into(),
                "http://mirror.example/debian-security".into()
            ))
        );
        assert_eq!(debian_mirrors(&s[..1]), None);
    }

    const GOOD: &str = "\
[    0.000000] Linux version 6.12.43+deb12-amd64
VMT: BEGIN 6.12.43+deb12-amd64
VMT: info kernel 6.12.43+deb12-amd64
VMT: ok churn_two_observers A: opened=600/600 (40.1 s)
[   50.1] random: crng init done
VMT: ok pid opened{inbound,9300}=10/10 (8.0 s)
VMT: info recursion_misses present
VMT: RESULT 2 passed, 0 failed
VMT: END vm-guest exit 0
";

    #[test]
    fn guest_reports_count() {
        let r = parse_guest(GOOD);
        assert!(r.booted);
        assert_eq!(r.passed, ["churn_two_observers", "pid"]);
        assert!(r.failed.is_empty());
        assert_eq!(r.result, Some((2, 0)));
        assert_eq!(r.info.len(), 2);
        assert_eq!(
            verdict(&r, None),
            Verdict {
                passed: 2,
                failed: 0,
                reason: None
            }
        );
    }

    #[test]
    fn a_kernel_that_refuses_the_program_fails_with_the_verifier_message() {
        let log = "\
VMT: BEGIN 5.10.0-35-amd64
VMT: FAIL churn_two_observers observer A [--port 9100] did not load: exited (exit status: 1) before ready after 6.2 s: observer A stderr: observer: loading / verifier: invalid read from stack R10 off=-312 size=8 (6.3 s)
[  12.0] some kernel line VMT: FAIL pid observer [--pid 7] did not load: exited (exit status: 1) (6.0 s)
VMT: ok sigterm_unloads fine (1.0 s)
VMT: RESULT 1 passed, 2 failed
";
        let r = parse_guest(log);
        assert_eq!(r.failed.len(), 2);
        assert!(r.failed[1].starts_with("VMT: FAIL pid"));
        let v = verdict(&r, None);
        assert_eq!((v.passed, v.failed), (1, 2));
        assert_eq!(
            v.reason.as_deref(),
            Some("observer did not load (invalid read from stack R10 off=-312 size=8)")
        );
    }

    #[test]
    fn boot_failures_and_timeouts_count_as_failed() {
        let v = verdict(&parse_guest(""), Some(600));
        assert_eq!((v.passed, v.failed), (0, 1));
        assert_eq!(
            v.reason.as_deref(),
            Some("did not boot (timed out after 600 s)")
        );

        let panic = "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        let v = verdict(&parse_guest(panic), None);
        assert_eq!(
            v.reason.as_deref(),
            Some("did not boot: Kernel panic - not syncing: VFS: Unable to mount root fs")
        );

        let stuck = "VMT: BEGIN x\nVMT: info running churn_two_observers\n\
                     VMT: ok churn_two_observers x\nVMT: info running pid\n";
        let v = verdict(&parse_guest(stuck), Some(600));
        assert_eq!((v.passed, v.failed), (1, 1));
        assert_eq!(
            v.reason.as_deref(),
            Some("timed out after 600 s during pid")
        );

        let liar = "VMT: BEGIN x\nVMT: ok a x\nVMT: RESULT 2 passed, 0 failed\n";
        assert_eq!(verdict(&parse_guest(liar), None).failed, 1);
    }

    #[test]
    fn elf_interpreter_is_read_from_program_headers() {
        // A minimal ELF64 header with one PT_INTERP program header pointing at "/lib/ld.so".
        let mut b = vec![0u8; 200];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&3u32.to_le_bytes());
        b[64 + 8..64 + 16].copy_from_slice(&150u64.to_le_bytes());
        b[64 + 32..64 + 40].copy_from_slice(&11u64.to_le_bytes());
        b[150..161].copy_from_slice(b"/lib/ld.so\0");
        assert_eq!(elf_interpreter(&b).unwrap().as_deref(), Some("/lib/ld.so"));
        b[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(elf_interpreter(&b).unwrap(), None);
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        // This host's own shell is dynamically linked.
        if let Ok(sh) = fs::read("/bin/sh") {
            assert!(elf_interpreter(&sh).unwrap().is_some());
        }
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        // ino 1, mode 0100755, filesize 10, namesize 5.
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000081ed");
        assert_eq!(&a[54..62], b"0000000a");
        assert_eq!(&a[94..102], b"00000005");
        // Header 110 bytes + "init\0" = 115, padded to 116; data 10 bytes padded to 12.
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..126], b"#!/bin/sh\n");
        assert_eq!(&a[128..134], b"070701");
        assert!(a.len().is_multiple_of(4));
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn releases_from_vmlinuz_paths() {
        assert_eq!(
            release_of(Path::new("x/boot/vmlinuz-6.1.0-56-amd64")).as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(
            release_of(Path::new("x/usr/lib/modules/7.2.13+deb14-amd64/vmlinuz")).as_deref(),
            Some("7.2.13+deb14-amd64")
        );
        assert_eq!(release_of(Path::new("x/boot/config-6.1.0-56-amd64")), None);
    }
}
