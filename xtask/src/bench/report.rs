//! The report: BENCHMARKS.md, from the measurements.
use std::{fmt::Write as _, fs, time::Duration};

use super::{
    AB_CLIENTS, AB_CONCURRENCY, FEW_HELD, HOLD_WORKER_CONNECTIONS, HOLD_WORKERS, MIB,
    NGINX_WORKERS, Plan,
    bpftrace::{Script, bpftrace_script},
    census::CensusLevel,
    figures::{
        Figures, both_per_hit, expected_ratio, extra, kernel, kernel_us_per_conn, missing, ratio,
    },
    machine::Machine,
    measure::{CheckKind, OwnCost, Results, Round},
    perf::{PROFILED, Profile, Tally, share_of},
    readings::{IDLE_AFTER, IDLE_SCANS, Level, MILLION, readings_max_connections},
    stats::Spread,
    tool::{Prog, Tool},
    usage::Memory,
};

pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn show_spread(s: Option<Spread>, f: impl Fn(f64) -> String) -> String {
    s.map_or_else(|| "–".to_string(), |s| s.show(f))
}

pub(super) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

pub(super) fn render(
    command: &str,
    plan: &Plan,
    m: &Machine,
    r: &Results,
    took: Duration,
) -> String {
    let f = Figures::of(r);
    let mut out = String::new();
    header(&mut out, command, plan, m, r, took);
    summary(&mut out, &f, r);
    overhead_section(&mut out, m, &f, r);
    kernel_section(&mut out, &f, r);
    completeness_section(&mut out, r);
    profile_section(&mut out, plan, r);
    own_cost_section(&mut out, r);
    reading_section(&mut out, plan, m, r);
    memory_section(&mut out, r);
    anomalies(&mut out, r);
    out
}

pub(super) fn header(
    out: &mut String,
    command: &str,
    plan: &Plan,
    m: &Machine,
    r: &Results,
    took: Duration,
) {
    let secs = took.as_secs();
    let _ = writeln!(
        out,
        "# Benchmarks\n\n\
         Measured on {} by `{command}` ({} min {} s), as root, written by the bench itself.\n\n\
         | | |\n|---|---|\n\
         | machine | {}, {} cores, {:.1} GiB, Debian {} (shared with other work) |\n\
         | kernel | {} (`uname -r`) |\n\
         | observer | release build of {} |\n\
         | server | nginx {} (Debian's nginx-light), {NGINX_WORKERS} workers, `return 200 \"ok\\n\"`, `access_log off` |\n\
         | load | {AB_CLIENTS} × `ab -q -r -n {} -c {AB_CONCURRENCY}` at once ({}): a new connection per request, about {} s per run |\n\
         | peers | {}; libbpf-tools {} (Debian's); `ss` ({}) |\n\n\
         The tools, as run (PORT is nginx's port):\n\n\
         ```sh\n\
         observer --port PORT --metrics-addr 127.0.0.1:0                       # metrics only\n\
         observer --port PORT --metrics-addr 127.0.0.1:0 --events json > /dev/null\n\
         bpftrace -e '{}'\n\
         bpftrace -e '{}'\n\
         bpftrace -e '{}' > /dev/null\n\
         tcplife -L PORT > FILE\n\
         tcpstates -L PORT > FILE\n\
         ss -Htan state established '( sport = :PORT )'\n\
         ```\n",
        m.date,
        secs / 60,
        secs % 60,
        m.cpu,
        m.cores,
        m.memory_gib,
        m.debian,
        m.kernel,
        m.observer,
        m.nginx,
        r.per_client,
        m.ab,
        plan.load_secs,
        m.bpftrace,
        m.libbpf_tools,
        m.ss,
        bpftrace_script(Script::Empty, "PORT"),
        bpftrace_script(Script::Count, "PORT"),
        bpftrace_script(Script::Print, "PORT"),
    );
    let _ = writeln!(
        out,
        "All traffic is on loopback. Every comparison alternates a run with nothing attached and a \
         run with the tool attached (A B A B ..., {} pairs per tool, the tools taking turns), and \
         gives the median of the pairs with the min and max. \
         `kernel.bpf_stats_enabled` is 1 throughout (the kernel counts programs' run time only \
         then) and goes back to its previous value after.\n",
        plan.pairs
    );
}

pub(super) fn summary(out: &mut String, f: &Figures, r: &Results) {
    let ratio = |tool| ratio(r, tool).map_or(f64::NAN, |s| s.median);
    let floor = ratio(Tool::BpftraceEmpty);
    let btf_floor = ratio(Tool::Floor);
    let top = r.readings.levels.last();
    let few = r.readings.levels.first();
    let scrape = |l: Option<&Level>| {
        l.and_then(|l| Spread::of(l.scrape_ms.clone()))
            .map_or(f64::NAN, |s| s.median)
    };
    let (scrape_top, scrape_few) = (scrape(top), scrape(few));
    let held = top.map_or(0, |l| l.held);
    let main = f.main_ns.map_or(f64::NAN, |s| s.median);
    let count = f.count_ns.map_or(f64::NAN, |s| s.median);
    let both = f.both_ns.map_or(f64::NAN, |s| s.median);
    let empty = f.empty_ns.map_or(f64::NAN, |s| s.median);
    let floor_ns = f.floor_ns.map_or(f64::NAN, |s| s.median);
    let median_share = |tool| {
        r.profiles
            .as_deref()
            .and_then(|p| share_of(p, tool))
            .map_or(f64::NAN, |s| s.median)
    };
    let share = |tool| {
        let v = median_share(tool);
        if v.is_nan() {
            "–".to_string()
        } else {
            format!("{v:.2}%")
        }
    };
    let (obs_share, events_share, count_share) = (
        median_share(Tool::Observer),
        median_share(Tool::ObserverEvents),
        median_share(Tool::BpftraceCount),
    );
    let _ = writeln!(
        out,
        "## Goals\n\n| goal | measured | |\n|---|---|---|\n\
         | throughput with observer, metrics only ≥ 0.99 × without | {:.3} (empty programs: {btf_floor:.3} attached as observer's, {floor:.3} on the classic tracepoint) | {} |\n\
         | throughput with observer `--events json` ≥ 0.97 × without | {:.3} | {} |\n\
         | kernel cost per hit ≤ bpftrace's counting program | both programs {both:.0} ns (main {main:.0} ns) vs {count:.0} ns (empty programs: {floor_ns:.0} ns attached as observer's, {empty:.0} ns on the classic tracepoint) | {} |\n\
         | CPU on the tracepoint's path, metrics only ≤ bpftrace's counting program (share of the samples, Where the CPU goes) | {obs_share:.2}% vs {count_share:.2}% (the floor: {}) | {} |\n\
         | the same with `--events json` ≤ bpftrace's counting program + 0.5 points | {events_share:.2}% vs {:.2}% | {} |\n\
         | zero lost counts (`opened_total` vs nginx's accepts) | {} missing of {} | {} |\n\
         | scrape < 5 ms at 100,000 connections, flat (within 1 ms of the scrape at {FEW_HELD}) | {scrape_top:.2} ms at {}, {scrape_few:.2} ms at {FEW_HELD} | {} |\n\
         | observer's peak RSS < 32 MiB | {:.1} MiB | {} |\n\
         | observer's kernel memory for BPF maps ≤ 16 MiB (metrics only, section 6) | {:.1} MiB | {} |\n",
        ratio(Tool::Observer),
        verdict(ratio(Tool::Observer) >= 0.99),
        ratio(Tool::ObserverEvents),
        verdict(ratio(Tool::ObserverEvents) >= 0.97),
        verdict(both <= count),
        share(Tool::Floor),
        verdict(obs_share <= count_share),
        count_share + 0.5,
        verdict(events_share <= count_share + 0.5),
        thousands(f.missing_counts),
        thousands(f.counted_total),
        verdict(f.missing_counts == 0),
        thousands(held as u64),
        // Flat: within 1 ms of the reading at FEW_HELD connections.
        verdict(held >= 100_000 && scrape_top < 5.0 && (scrape_top - scrape_few).abs() < 1.0),
        f.peak_rss_mib,
        verdict(f.peak_rss_mib < 32.0),
        f.maps_mib,
        verdict(f.maps_mib <= 16.0),
    );
    let _ = writeln!(
        out,
        "The floor: an empty program attached the way observer's are (by the tracepoint's BTF \
         type, `tp_btf`) is the least a program there costs: {floor_ns:.0} ns per hit as \
         measured here, {} of the CPU samples under load (Where the CPU goes), and a throughput \
         ratio of {btf_floor:.3}. observer (metrics only) runs two programs per hit: \
         {both:.0} ns, {:.0} ns above two runs of the floor; {} of the samples.\n",
        share(Tool::Floor),
        both - 2.0 * floor_ns,
        share(Tool::Observer),
    );
    let noise = f
        .baseline
        .map_or(f64::NAN, |b| (b.max - b.min) / b.median * 100.0);
    let _ = writeln!(
        out,
        "What the misses say. Throughput: the runs with nothing attached alone spread over \
         {noise:.0}% of their median, and an empty program, which does nothing, keeps \
         {btf_floor:.3} of it attached as observer's ({floor:.3} on the classic tracepoint); a 1% goal is below what a shared 2-core machine serving loopback \
         traffic to itself can resolve, where each connection's both ends hit the tracepoint \
         (section 1). Kernel cost: bpftrace's counting program does one map update per kept \
         hit; observer's main program keeps each connection's state (a per-socket map entry, \
         three clock reads for lifetimes, atomic adds to two gauges), and a second program runs \
         on every hit to catch the transitions the kernel skips for the first; with \
         `bpf_stats_enabled` each run also pays the {floor_ns:.0} ns an empty program attached \
         as observer's costs here (section 2).\n"
    );
}

pub(super) fn overhead_section(out: &mut String, m: &Machine, f: &Figures, r: &Results) {
    let _ = writeln!(
        out,
        "## 1. Overhead on the server\n\n\
         Connections per second nginx served with the tool attached, divided by the rate of the \
         run just before it with nothing attached. \"Expected\" is what the tool's kernel time \
         alone would take from a saturated machine: 1 − (its programs' run time per connection) \
         ÷ ({} cores ÷ the rate without it).\n\n\
         | attached | conn/s without (median) | conn/s with (median) | ratio: median (min–max) | kernel µs per connection | expected ratio |\n\
         |---|---|---|---|---|---|",
        m.cores
    );
    for tool in Tool::ALL {
        let rounds: Vec<&Round> = r.rounds.iter().filter(|x| x.tool == tool).collect();
        let median = |pick: &dyn Fn(&Round) -> Option<f64>| {
            Spread::of(rounds.iter().filter_map(|x| pick(x))).map_or(f64::NAN, |s| s.median)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {:.3} |",
            tool.label(),
            thousands(median(&|x| Some(x.without.rate())) as u64),
            thousands(median(&|x| Some(x.with.rate())) as u64),
            show_spread(ratio(r, tool), |v| format!("{v:.3}")),
            median(&|x| kernel_us_per_conn(x)),
            median(&|x| expected_ratio(x, m.cores)),
        );
    }
    let failed: u64 = r
        .rounds
        .iter()
        .map(|x| x.without.failed + x.with.failed)
        .sum();
    let noise = f
        .baseline
        .map_or(0.0, |b| (b.max - b.min) / b.median * 100.0);
    let floor = ratio(r, Tool::BpftraceEmpty).map_or(f64::NAN, |s| s.median);
    let btf_floor = ratio(r, Tool::Floor).map_or(f64::NAN, |s| s.median);
    let _ = writeln!(
        out,
        "\nNotes: the runs with nothing attached alone spread over {noise:.0}% of their median \
         ({}): ab, nginx and the kernel's loopback work share the {} cores with whatever else \
         runs on this shared machine, so a ratio's spread, not just its median, says how much is \
         overhead. ab reported {failed} failed requests in all.\n\n\
         \"Expected\" counts only the programs' own run time, and a program costs its server \
         more. bpftrace's programs sit on the classic tracepoint interface: on every hit the \
         kernel fills the tracepoint's record and calls them through perf's tracepoint hook, \
         outside their run time. The empty bpftrace program, which does nothing, measures that: \
         {floor:.3}. observer's programs attach by the tracepoint's BTF type instead: the kernel \
         calls them directly with the socket, and fills no record; an empty program attached \
         that way (the floor) keeps {btf_floor:.3}. Userspace work comes on top, \
         on the same cores: observer's event writer, bpftrace's printer (a perf-buffer record \
         per transition, formatted by bpftrace). With `bpf_stats_enabled` the kernel also reads \
         the clock twice around every program run (observer runs two programs per hit); every \
         tool pays that here, and none would in production.\n\n\
         This is a worst case for every tool: on loopback both ends of each connection run on \
         this machine (the client's transitions hit the tracepoint too), and nginx's `return \
         200` does next to nothing per connection. A server doing real work per connection, with \
         its clients elsewhere, loses a fraction of these figures.\n",
        show_spread(f.baseline, |v| thousands(v as u64)),
        m.cores,
    );
}

pub(super) fn kernel_section(out: &mut String, f: &Figures, r: &Results) {
    let _ = writeln!(
        out,
        "## 2. Kernel cost per tracepoint hit\n\n\
         `run_time_ns / run_cnt` (from `bpftool prog show --json`) over the run with the tool \
         attached. observer's programs are found by the `prog_id:` lines of its fdinfo.\n\n\
         | program | ns per hit: median (min–max) | hits per accepted connection |\n\
         |---|---|---|"
    );
    let rows: [(&str, Tool, Option<Prog>); 12] = [
        (
            "observer main, metrics only",
            Tool::Observer,
            Some(Prog::Main),
        ),
        (
            "observer backup, metrics only",
            Tool::Observer,
            Some(Prog::Backup),
        ),
        (
            "observer, both programs, metrics only",
            Tool::Observer,
            None,
        ),
        (
            "observer, both programs, metrics only, started with 100 connections open",
            Tool::ObserverOpen,
            None,
        ),
        (
            "observer main, `--events json`",
            Tool::ObserverEvents,
            Some(Prog::Main),
        ),
        (
            "observer backup, `--events json`",
            Tool::ObserverEvents,
            Some(Prog::Backup),
        ),
        (
            "empty program, BTF-typed tracepoint (the floor)",
            Tool::Floor,
            Some(Prog::Floor),
        ),
        (
            "bpftrace, empty program, classic tracepoint",
            Tool::BpftraceEmpty,
            Some(Prog::Bpftrace),
        ),
        (
            "bpftrace, counting",
            Tool::BpftraceCount,
            Some(Prog::Bpftrace),
        ),
        (
            "bpftrace, printf",
            Tool::BpftracePrint,
            Some(Prog::Bpftrace),
        ),
        (
            "libbpf-tools tcplife, its programs",
            Tool::Tcplife,
            Some(Prog::Libbpf),
        ),
        (
            "libbpf-tools tcpstates, its programs",
            Tool::Tcpstates,
            Some(Prog::Libbpf),
        ),
    ];
    for (label, tool, prog) in rows {
        let rounds: Vec<&Round> = r.rounds.iter().filter(|x| x.tool == tool).collect();
        let ns = Spread::of(rounds.iter().filter_map(|x| match prog {
            Some(p) => kernel(x, p)?.ns_per_run(),
            None => both_per_hit(x),
        }));
        let hits = Spread::of(rounds.iter().filter_map(|x| {
            let runs = kernel(x, prog.unwrap_or(Prog::Main))?.runs;
            Some(runs as f64 / x.accepted as f64)
        }));
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            show_spread(ns, |v| format!("{v:.0}")),
            hits.map_or("–".into(), |h| format!("{:.1}", h.median)),
        );
    }
    let _ = writeln!(
        out,
        "\nNotes: every TCP transition on the machine runs every program attached to the \
         tracepoint, the client's side of each connection and other ports included (the filter \
         rejects those), hence about {} hits per connection. The floor's {} ns is what a run of \
         a program attached as observer's costs as measured here, doing nothing (the call and \
         the clock reads of `bpf_stats_enabled`): such a program's own work is its figure minus \
         that. bpftrace's empty program ({} ns) is called through the classic interface, whose \
         record the kernel fills outside the program's run time (section 1). Both of observer's \
         programs run on every hit; the backup only checks whether the main program noted the \
         transition, which makes it about as cheap as the empty program, but it is a second run \
         all the same. With `--events json` the main program also reserves and submits a \
         ring-buffer record per open and close. bpftrace's counting program does one per-CPU \
         map update per kept hit. observer's main program keeps each connection's state: a \
         per-socket map entry (inserted at the handshake, looked up at every transition, \
         deleted at CLOSE), the clock read at the open, at the start of the close and at CLOSE \
         (for lifetimes), and atomic adds to the gauges of the state left and the state \
         entered; that is what gauges per state, lifetimes and exact counts under nesting cost \
         on top of counting transitions.\n",
        f.hits_per_conn
            .map_or("?".into(), |h| format!("{:.0}", h.median)),
        f.floor_ns
            .map_or("?".into(), |e| format!("{:.0}", e.median)),
        f.empty_ns
            .map_or("?".into(), |e| format!("{:.0}", e.median)),
    );
}

/// One run's count against nginx's.
pub(super) struct Counted {
    pub(super) accepted: u64,
    pub(super) completed: u64,
    pub(super) counted: Option<u64>,
}

/// A table row summing `runs`.
pub(super) fn tally_row(label: &str, runs: &[Counted]) -> String {
    let sum = |f: &dyn Fn(&Counted) -> u64| thousands(runs.iter().map(f).sum());
    format!(
        "| {label} | {} | {} | {} | {} | {} | {} |",
        runs.len(),
        sum(&|c| c.accepted),
        sum(&|c| c.completed),
        sum(&|c| c.counted.unwrap_or(0)),
        sum(&|c| missing(c.accepted, c.counted)),
        sum(&|c| extra(c.accepted, c.counted)),
    )
}

pub(super) fn completeness_section(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## 3. Completeness at the highest rate\n\n\
         The truth is nginx's own count of the connections it accepted (`stub_status` \
         `accepts`, read on a port of its own before and after each run). Summed over the runs \
         with the tool attached:\n\n\
         | counted by | runs | accepted by nginx | completed by ab | counted | missing | extra |\n\
         |---|---|---|---|---|---|---|"
    );
    let rounds = |tool: Tool| -> Vec<Counted> {
        r.rounds
            .iter()
            .filter(|x| x.tool == tool)
            .map(|x| Counted {
                accepted: x.accepted,
                completed: x.with.completed,
                counted: x.counted,
            })
            .collect()
    };
    let checks = |kind: CheckKind, printed: bool| -> Vec<Counted> {
        r.checks
            .iter()
            .filter(|c| c.what == kind)
            .map(|c| Counted {
                accepted: c.accepted,
                completed: c.completed,
                counted: if printed { Some(c.printed) } else { c.opened },
            })
            .collect()
    };
    let mut with_events = rounds(Tool::ObserverEvents);
    with_events.extend(checks(CheckKind::ObserverEvents, false));
    let rows = [
        (
            "observer `opened_total`, metrics only",
            rounds(Tool::Observer),
        ),
        (
            "observer `opened_total`, started with 100 connections open",
            rounds(Tool::ObserverOpen),
        ),
        ("observer `opened_total`, with events", with_events),
        (
            "observer `open` events, JSON lines in a file",
            checks(CheckKind::ObserverEvents, true),
        ),
        (
            "bpftrace counting, `@[ESTABLISHED]`",
            rounds(Tool::BpftraceCount),
        ),
        (
            "bpftrace printf, ESTABLISHED lines in a file",
            checks(CheckKind::BpftracePrint, true),
        ),
        (
            "libbpf-tools tcplife, lines in a file",
            rounds(Tool::Tcplife),
        ),
        (
            "libbpf-tools tcpstates, ESTABLISHED lines in a file",
            rounds(Tool::Tcpstates),
        ),
    ];
    for (label, runs) in rows {
        let _ = writeln!(out, "{}", tally_row(label, &runs));
    }
    let own = |pick: fn(&OwnCost) -> f64| -> f64 {
        r.rounds
            .iter()
            .filter_map(|x| x.own.as_ref())
            .map(pick)
            .sum()
    };
    let dropped: u64 = r
        .checks
        .iter()
        .filter(|c| c.what == CheckKind::ObserverEvents)
        .map(|c| c.dropped)
        .sum::<u64>()
        + own(|o| o.dropped) as u64;
    let bt_lost: u64 = r
        .checks
        .iter()
        .filter(|c| c.what == CheckKind::BpftracePrint)
        .map(|c| c.dropped)
        .sum();
    let _ = writeln!(
        out,
        "\nNotes: ab's \"Complete requests\" is a little lower than nginx's count: near the end of \
         a run ab opens a few connections it never sends a request on (up to its concurrency \
         minus one); they are real connections, and a counter should count them. \
         Over observer's runs: {} events dropped (`observer_events_dropped_total`, ring buffer \
         full), {} `lost_transition`, {} `stale_socket_retired`, and {} transitions the main \
         program was skipped for and the backup counted. bpftrace reported {bt_lost} lost \
         events (perf buffer full). A figure in \"extra\" means a tool counted more connections \
         than nginx accepted.\n",
        thousands(dropped),
        own(|o| o.lost),
        own(|o| o.retired),
        own(|o| o.backup_counted),
    );
}

pub(super) fn own_cost_section(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## 4. observer's own cost\n\n\
         CPU time over a run, per million transitions (the run_cnt of observer's main program: \
         every hit of the tracepoint), and the resident set of each observer process at the end \
         of its run: the peak (VmHWM) and the current (VmRSS), from /proc/PID/status; next to \
         it, the kernel memory its BPF maps take (section 6).\n\n\
         | observer | CPU s per million transitions: median (min–max) | transitions per run (median) | `process_cpu_seconds_total` increase, all runs | peak RSS, largest | RSS, median | kernel memory for BPF maps, median |\n\
         |---|---|---|---|---|---|---|"
    );
    for tool in [Tool::Observer, Tool::ObserverEvents] {
        let rounds: Vec<(&Round, &OwnCost)> = r
            .rounds
            .iter()
            .filter(|x| x.tool == tool)
            .filter_map(|x| Some((x, x.own.as_ref()?)))
            .collect();
        let transitions = |x: &Round| kernel(x, Prog::Main).map_or(0, |k| k.runs);
        let per_million = Spread::of(rounds.iter().filter_map(|(x, o)| {
            let t = transitions(x);
            (t > 0).then(|| o.cpu_secs / t as f64 * 1e6)
        }));
        let runs = Spread::of(rounds.iter().map(|(x, _)| transitions(x) as f64));
        let metric: f64 = rounds.iter().map(|(_, o)| o.cpu_metric).sum();
        let memory: Vec<Memory> = rounds.iter().map(|(x, _)| x.memory).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {metric:.2} s | {} |",
            tool.label(),
            show_spread(per_million, |v| format!("{v:.3}")),
            runs.map_or("–".into(), |s| thousands(s.median as u64)),
            memory_cells(&memory, false),
        );
    }
    let _ = writeln!(
        out,
        "\nNotes: the CPU figure is utime + stime from /proc/PID/stat (10 ms ticks), read with \
         each scrape. With metrics only, observer's userspace does nothing per connection (the \
         kernel counts; a scrape sums per-CPU counters); with events, its reader thread formats \
         and writes a JSON line per open and close. The peak comes from the start: aya parses \
         the kernel's whole BTF (/sys/kernel/btf/vmlinux, {:.1} MiB here) while it loads the \
         programs, and observer hands that memory back once they are loaded; observer's own \
         offsets come from a reader that walks the BTF in place.",
        fs::metadata("/sys/kernel/btf/vmlinux").map_or(0.0, |m| m.len() as f64 / MIB),
    );
    let _ = writeln!(out);
}

pub(super) fn profile_section(out: &mut String, plan: &Plan, r: &Results) {
    let Some(profiles) = &r.profiles else {
        return;
    };
    let _ = writeln!(
        out,
        "## Where the CPU goes\n\n\
         Not one of the issue's figures, and steadier than the throughput ratios: `perf record -a \
         -e cpu-clock -F 2000` over the middle of a run of the same load with the tool attached, \
         {} runs per tool, the tools taking turns. The share is of all samples on every CPU \
         (nginx, ab, the kernel's TCP work, the tool) that fall in the functions a hit of the \
         tracepoint runs: the tracepoint's iterator, perf's tracepoint hook (the classic \
         interface, bpftrace's), the call into a BTF-typed program (observer's), the programs \
         and the helpers and maps they call. `bpf_stats_enabled` is 0 for these runs, as in \
         production. For observer, what it counted over those runs: connections opened against \
         nginx's accepts, and `lost_transition`.\n\n\
         | attached | share of CPU samples: median (min–max) | largest functions (one run) | observer's count: opened of accepted, `lost_transition` |\n\
         |---|---|---|---|",
        plan.profiles
    );
    for tool in PROFILED {
        let runs: Vec<&Profile> = profiles.iter().filter(|p| p.tool == tool).collect();
        let share = share_of(profiles, tool);
        let top = runs.first().map_or(String::new(), |p| {
            p.top
                .iter()
                .map(|(s, v)| format!("`{s}` {v:.2}%"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let _ = writeln!(
            out,
            "| {} | {} | {top} | {} |",
            tool.label(),
            show_spread(share, |v| format!("{v:.2}%")),
            show_counted(&runs),
        );
    }
    let _ = writeln!(out);
    for text in [
        backup_price(profiles),
        two_programs(profiles),
        elsewhere(profiles),
    ]
    .into_iter()
    .flatten()
    {
        let _ = writeln!(out, "{text}\n");
    }
}

/// What a second program on the tracepoint costs with nothing in it, from the floor's runs with
/// one empty program and with two; and what that leaves observer's code under the CPU goal.
fn two_programs(profiles: &[Profile]) -> Option<String> {
    let (one, two) = (
        share_of(profiles, Tool::Floor)?.median,
        share_of(profiles, Tool::FloorPair)?.median,
    );
    let budget = share_of(profiles, Tool::BpftraceCount).map_or(String::new(), |c| {
        let alone = share_of(profiles, Tool::ObserverAlone).map_or(String::new(), |a| {
            format!(
                "; observer's main program, attached alone, takes {:.2} points above the floor",
                a.median - one
            )
        });
        format!(
            " So with two programs, what their code may take for the goal of taking no more \
             than bpftrace's counting program is {:.2}% less {two:.2}%: {:.2} points{alone}.",
            c.median,
            c.median - two,
        )
    });
    Some(format!(
        "The floor of two programs: two empty programs attached as observer's two are take \
         {two:.2}% of the samples, one {one:.2}%. A second program on the tracepoint costs \
         {:.2} points before it does anything: the call through the tracepoint's iterator and \
         the kernel's run of a program (`bpf_trace_run3`, its recursion guard, the return \
         thunk), once more.{budget}",
        two - one,
    ))
}

/// What the transitions a tool does not watch cost it, from the runs watching an idle port.
fn elsewhere(profiles: &[Profile]) -> Option<String> {
    let (obs, count) = (
        share_of(profiles, Tool::ObserverElsewhere)?,
        share_of(profiles, Tool::BpftraceCountElsewhere)?,
    );
    let floor = share_of(profiles, Tool::Floor)
        .map_or(String::new(), |f| format!(" (the floor: {:.2}%)", f.median));
    Some(format!(
        "The transitions a tool does not watch: on a busy host most are other ports'. With the \
         tools watching an idle port instead, so that every transition of the load fails their \
         filter, observer (metrics only) takes {:.2}% of the samples and bpftrace's counting \
         program {:.2}%{floor}: what the rest of the host's connections pay. observer runs both \
         of its programs for each (the backup tells the main program's skipped runs from the \
         ones it took by the main program's notes, which it makes for every transition).",
        obs.median, count.median,
    ))
}

/// The counts of observer's profiled runs, summed: `opened of accepted, lost N`; `–` for
/// another tool.
fn show_counted(runs: &[&Profile]) -> String {
    let counted: Vec<Tally> = runs.iter().filter_map(|p| p.counted).collect();
    if counted.is_empty() {
        return "–".into();
    }
    let sum = |f: fn(&Tally) -> u64| counted.iter().map(f).sum::<u64>();
    format!(
        "{} of {}, lost {}",
        thousands(sum(|c| c.opened)),
        thousands(sum(|c| c.accepted)),
        thousands(sum(|c| c.lost))
    )
}

/// What the backup program costs, from the runs of observer with and without it.
fn backup_price(profiles: &[Profile]) -> Option<String> {
    let (both, alone) = (
        share_of(profiles, Tool::Observer)?,
        share_of(profiles, Tool::ObserverAlone)?,
    );
    let count = share_of(profiles, Tool::BpftraceCount).map_or(String::new(), |c| {
        format!(" (bpftrace's counting program: {:.2}%)", c.median)
    });
    let lost: u64 = profiles
        .iter()
        .filter(|p| p.tool == Tool::ObserverAlone)
        .filter_map(|p| p.counted.map(|c| c.lost))
        .sum();
    Some(format!(
        "What exactness under skipped runs costs: observer built without its backup program \
         (for this measurement only) takes {:.2}% of the samples{count}, against {:.2}% with \
         both programs, a difference of {:.2} points: the backup's own runs, and the call of a \
         second program (with two programs on it the tracepoint calls each through its \
         iterator, `__traceiter_inet_sock_set_state`; with one, directly). Without the backup, \
         the transitions the kernel skips the main program for are lost ({} over those runs): \
         each heals later (at the connection's next transition, by the sweep, or as a late \
         open, see README \"How it works\"), or, for a connection whose open was lost on a \
         kernel whose runs are not preemptible, is not counted at all. observer keeps the \
         backup.",
        alone.median,
        both.median,
        both.median - alone.median,
        thousands(lost),
    ))
}

pub(super) fn reading_section(out: &mut String, plan: &Plan, m: &Machine, r: &Results) {
    let rd = &r.readings;
    let _ = writeln!(
        out,
        "## 5. Cost of a reading\n\n\
         A `/metrics` scrape (a new connection, `GET /metrics` over HTTP/1.0, timed to the last \
         byte) next to `ss -Htan state established '( sport = :PORT )'` counting the same \
         connections (timed from spawn to the end of its output, as a collector running it \
         pays), taking turns, {0} of each, with connections held open on the watched port of an \
         idle nginx; and {0} scrapes back to back. That observer starts before the connections \
         come, so it cannot size itself for them (README, \"Kernel memory\"): it is started with \
         `--max-connections {1}`, twice the most held, as a user expecting that load would; \
         with the default (65,536) the connections past it would not be counted, and \
         `observer_kernel_errors_total` would say so (`sockets_map_full`).\n\n\
         | connections held | scrape ms, taking turns with ss: median (min–max) | scrape ms, back to back | `ss` ms: median (min–max) | observer's gauge | ss's count | `observer_kernel_errors_total` |\n\
         |---|---|---|---|---|---|---|",
        plan.reading_pairs,
        readings_max_connections(plan.held),
    );
    for l in &rd.levels {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            thousands(l.held as u64),
            show_spread(Spread::of(l.scrape_ms.clone()), |v| format!("{v:.2}")),
            show_spread(Spread::of(l.back_to_back_ms.clone()), |v| format!("{v:.2}")),
            show_spread(Spread::of(l.ss_ms.clone()), |v| format!("{v:.1}")),
            thousands(l.gauge as u64),
            thousands(l.ss_count as u64),
            l.kernel_errors,
        );
    }
    let top = rd.levels.last();
    let short = top.is_some_and(|l| l.held < l.target);
    let _ = writeln!(
        out,
        "\nNotes: observer's gauge is a sum of per-CPU counters, whatever the number of \
         connections; ss walks every socket through sock_diag (its filter runs in the kernel) and \
         prints a line per match. A scrape right after ss pays for the caches ss's walk over \
         every socket left cold; back to back, scrapes show what observer itself does. This machine's hard `RLIMIT_NOFILE` is {} and root here lacks \
         CAP_SYS_RESOURCE, so {} holder processes (the test harness's `tcp-helper`, `hold DST N \
         SRC`, each from a source address of its own, 127.0.0.2 and up) keep the connections, and nginx runs \
         {HOLD_WORKERS} workers with `reuseport`, {} connections each. nginx listens below the \
         ephemeral port range, so that no holder is handed the watched port number as its own: \
         `ss`'s port filter would count such an outbound socket as a connection to that port \
         (observer does not, for the connections it sees being made: it tells a connect() \
         from an accepted connection).{}",
        m.nofile,
        rd.holders,
        thousands(HOLD_WORKER_CONNECTIONS as u64),
        if short {
            " The holders could not open every connection asked for: the table shows how many were held."
        } else {
            ""
        },
    );
    if let Some(s) = &rd.startup {
        let _ = writeln!(
            out,
            "A second observer started while they were held was ready in {:.0} ms (`{}`) and its \
             gauge said {}. After the holders closed them, the first observer's gauge said {}.",
            s.ready_ms,
            s.ready_line
                .trim_start_matches("observer: ready: ")
                .split("; metrics at")
                .next()
                .unwrap_or_default(),
            thousands(s.gauge as u64),
            rd.gauge_after_release,
        );
    }
    let _ = writeln!(
        out,
        "\nnode_exporter with only its `tcpstat` collector (`--collector.disable-defaults \
         --collector.tcpstat`, Debian's {}), scraped {} times back to back at each level: it \
         reads /proc/net/tcp and /proc/net/tcp6 at each scrape and counts the sockets of the \
         whole host per state, with no port of their own (so both ends of each held loopback \
         connection, and every other socket).\n\n\
         | connections held | node_exporter scrape ms: median (min–max) | its established sockets, whole host |\n\
         |---|---|---|",
        m.node_exporter, plan.reading_pairs
    );
    for l in &rd.levels {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            thousands(l.held as u64),
            show_spread(Spread::of(l.node_ms.clone()), |v| format!("{v:.2}")),
            thousands(l.node_established as u64),
        );
    }
    if let Some(i) = &rd.idle {
        let _ = writeln!(
            out,
            "\nThe idle scan (`--idle-after`): an observer started with `--port PORT \
             --idle-after {IDLE_AFTER}` (the shortest threshold, so the most frequent scans: one \
             every 250 ms, or 20 times the last scan's CPU time when that is longer) while the {} \
             connections were held, all silent. Its \
             `observer_tcp_connections_idle` said {}. One scan lists every established TCP \
             socket with its `tcp_info` through sock_diag (here {} sockets: both ends of each \
             loopback connection) and keeps the watched ones; its own gauges of the last scan, \
             for {IDLE_SCANS} scans in a row:\n\n\
             | one scan | median (min–max) |\n|---|---|\n\
             | wall time, ms | {} |\n| CPU time, ms | {} |\n\n\
             Over {:.0} s with no scrape, that observer used {:.1}% of one core, and the first \
             observer, without `--idle-after`, {:.1}%. With a threshold of 40 s or more, a scan \
             comes every 10 s (or 20 times its CPU time, when that is longer).",
            thousands(i.held as u64),
            thousands(i.gauge as u64),
            thousands(2 * i.held as u64),
            show_spread(Spread::of(i.wall_ms.clone()), |v| format!("{v:.1}")),
            show_spread(Spread::of(i.cpu_ms.clone()), |v| format!("{v:.1}")),
            i.window_secs,
            i.share * 100.0,
            i.plain_share * 100.0,
        );
    }
    census_rows(out, plan, &r.census);
    let _ = writeln!(out);
}

/// The socket census's cost, at each level of TIME_WAIT sockets.
pub(super) fn census_rows(out: &mut String, plan: &Plan, levels: &[CensusLevel]) {
    if levels.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nThe socket census (TIME_WAIT, request and listening sockets, one sock_diag dump at \
         a scrape, at most once a second and no sooner than 20 times the last one's CPU time \
         after it): an observer watching an idle nginx's port, with TIME_WAIT sockets on that \
         port (connections from 127.0.0.2, each from a source port of its own, that nginx \
         closed first), measured before any other phase. {} scrapes that each ran a census, \
         each followed by one served its result and by `ss -Htan state time-wait '( sport = \
         :PORT )'` listing the same sockets. The census's wall and CPU time are observer's own \
         gauges (`observer_census_duration_seconds`, `observer_census_cpu_seconds`).\n\n\
         | TIME_WAIT on the port: ss (observer's gauge) | TIME_WAIT on the host | scrape ms with a census: median (min–max) | census wall ms | census CPU ms | scrape ms, last result | `ss` ms |\n\
         |---|---|---|---|---|---|---|",
        plan.reading_pairs
    );
    for l in levels {
        let median = |v: &[f64]| Spread::of(v.iter().copied()).map_or(f64::NAN, |s| s.median);
        let range = |v: &[f64], digits: usize| {
            show_spread(Spread::of(v.iter().copied()), |x| format!("{x:.digits$}"))
        };
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {} | {} | {} | {} | {} |",
            thousands(median(&l.ss_count) as u64),
            thousands(median(&l.gauge) as u64),
            thousands(l.host as u64),
            range(&l.scrape_ms, 2),
            range(&l.wall_ms, 2),
            range(&l.cpu_ms, 2),
            range(&l.cached_ms, 2),
            range(&l.ss_ms, 1),
        );
    }
    let short: Vec<String> = levels
        .iter()
        .filter(|l| l.ss_count.iter().any(|c| *c < 0.95 * l.target as f64))
        .map(|l| thousands(l.target as u64))
        .collect();
    let _ = writeln!(
        out,
        "\nNotes: the kernel walks every TCP socket of the namespace for the dump and writes out \
         each one in the states asked for, whatever its port: the TIME_WAIT sockets on the \
         host's other ports (the second column counts every port) cost a census too. A scrape \
         that comes sooner than the next census is due gets the last result, at the cost of a \
         scrape without one.{}",
        if short.is_empty() {
            String::new()
        } else {
            format!(
                " At {} asked for, fewer TIME_WAIT sockets were on the port at some scrape: the \
                 table shows how many.",
                short.join(" and ")
            )
        }
    );
}

/// "peak | RSS | kernel memory" cells over some readings: the largest peak, the median RSS,
/// and the median kernel memory, with its spread when asked.
pub(super) fn memory_cells(readings: &[Memory], spread: bool) -> String {
    // The maps of a small tool take a few KiB, which 0.0 MiB would hide.
    let mib = |v: f64| match v < 1.0 {
        true => format!("{:.0} KiB", v * 1024.0),
        false => format!("{v:.1} MiB"),
    };
    let peak = readings.iter().map(Memory::peak_rss_mib).reduce(f64::max);
    let rss = Spread::of(readings.iter().map(Memory::rss_mib));
    let maps = Spread::of(readings.iter().map(Memory::maps_mib));
    format!(
        "{} | {} | {}",
        peak.map_or("–".into(), mib),
        rss.map_or("–".into(), |s| mib(s.median)),
        match (maps, spread) {
            (Some(s), true) => s.show(mib),
            (Some(s), false) => mib(s.median),
            (None, _) => "–".into(),
        }
    )
}

pub(super) fn memory_section(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "## 6. Memory\n\n\
         What each tool's process holds at the end of a run with it attached (and observer's, \
         at each level of held connections of section 5): its resident set, the peak (VmHWM) \
         and the current (VmRSS) from /proc/PID/status; and the kernel memory its BPF maps \
         take, which no RSS shows: the `memlock:` line of /proc/PID/fdinfo for each map it \
         holds an fd of (the fds that read `anon_inode:bpf-map`), plus `bytes_memlock` from \
         `bpftool map show` for each map its programs use that it holds no fd of, each map \
         counted once. Since Linux 5.11 that memory is charged to the process's memory cgroup.\n\n\
         | process | peak RSS, largest | RSS, median | kernel memory for BPF maps: median (min–max) |\n\
         |---|---|---|---|"
    );
    for tool in Tool::ALL {
        let memory: Vec<Memory> = r
            .rounds
            .iter()
            .filter(|x| x.tool == tool)
            .map(|x| x.memory)
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} |",
            tool.label(),
            memory_cells(&memory, true)
        );
    }
    for l in &r.readings.levels {
        let _ = writeln!(
            out,
            "| observer (metrics only), {} connections held | {} |",
            thousands(l.held as u64),
            memory_cells(&[l.memory], true),
        );
    }
    let _ = writeln!(
        out,
        "| observer (metrics only), sized for {} tracked connections (`--max-connections {}`) | {} |",
        thousands(u64::from(MILLION)),
        MILLION,
        memory_cells(&[r.readings.million], true),
    );
    for l in &r.readings.levels {
        let _ = writeln!(
            out,
            "| node_exporter (tcpstat), {} connections held | {} |",
            thousands(l.held as u64),
            memory_cells(&[l.node_memory], true),
        );
    }
    let _ = writeln!(
        out,
        "\nNotes: bpftrace's figures are of the bpftrace process, which holds its compiler \
         (LLVM) in memory while it runs. A map's `memlock` is what the kernel charges for it: \
         a preallocated hash map is charged for every entry it can hold, from its creation, \
         whatever it holds. So observer's row sized for a million connections is what tracking \
         a million takes (it sizes itself so when it starts with 500,000 open, or is told \
         `--max-connections`), measured without holding them: that would take two million \
         sockets here, a hundred processes at this machine's hard limit of 20,000 open files. \
         The peers' maps do not grow with the load: libbpf-tools' `tcplife` keeps each \
         connection's start in maps of a fixed 10,240 entries (`birth`, `idents`, as their fds \
         read), and reports no end for a connection it could not keep; `tcpstates` keeps each \
         socket's last transition time in one of the same size (`timestamps`).\n"
    );
}

pub(super) fn anomalies(out: &mut String, r: &Results) {
    if r.foreign.is_empty() && r.warnings.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Anomalies\n");
    if !r.foreign.is_empty() {
        let list: Vec<&str> = r.foreign.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "- Programs of someone else were attached to the same tracepoint during some runs: \
             {}. Every run, with or without the tool, paid for them.",
            list.join(", ")
        );
    }
    for w in &r.warnings {
        let _ = writeln!(out, "- {w}");
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::sample::{memory, results};

    fn profile(tool: Tool, share: f64, counted: Option<Tally>) -> Profile {
        Profile {
            tool,
            share,
            top: Vec::new(),
            counted,
        }
    }

    #[test]
    fn the_price_of_the_backup_is_the_difference_of_the_medians() {
        let c = |lost| {
            Some(Tally {
                accepted: 100,
                opened: 100 - lost,
                lost,
            })
        };
        let profiles = [
            profile(Tool::Observer, 3.3, c(0)),
            profile(Tool::Observer, 3.1, c(0)),
            profile(Tool::Observer, 3.5, c(0)),
            profile(Tool::ObserverAlone, 2.2, c(3)),
            profile(Tool::ObserverAlone, 2.4, c(4)),
            profile(Tool::BpftraceCount, 2.25, None),
        ];
        let text = backup_price(&profiles).unwrap();
        assert!(text.contains("takes 2.30% of the samples (bpftrace's counting program: 2.25%), against 3.30% with both programs, a difference of 1.00 points"), "{text}");
        assert!(text.contains("are lost (7 over"), "{text}");
        let alone: Vec<&Profile> = profiles[3..5].iter().collect();
        assert_eq!(show_counted(&alone), "193 of 200, lost 7");
        assert_eq!(show_counted(&[&profiles[5]]), "–");
        // Without the runs of observer alone, there is nothing to say.
        assert_eq!(backup_price(&profiles[..3]), None);
    }

    #[test]
    fn a_second_program_costs_the_floor_of_two_less_the_floor_of_one() {
        let profiles = [
            profile(Tool::Floor, 0.5, None),
            profile(Tool::Floor, 0.6, None),
            profile(Tool::Floor, 0.7, None),
            profile(Tool::FloorPair, 1.2, None),
            profile(Tool::FloorPair, 1.3, None),
            profile(Tool::FloorPair, 1.4, None),
            profile(Tool::BpftraceCount, 2.1, None),
            profile(Tool::ObserverAlone, 2.2, None),
        ];
        let text = two_programs(&profiles).unwrap();
        assert!(
            text.contains("take 1.30% of the samples, one 0.60%. A second program on the tracepoint costs 0.70 points"),
            "{text}"
        );
        assert!(
            text.contains("is 2.10% less 1.30%: 0.80 points; observer's main program, attached alone, takes 1.60 points above the floor."),
            "{text}"
        );
        // Without bpftrace's runs, the price alone; without the pair, nothing.
        assert!(!two_programs(&profiles[..6]).unwrap().contains("So with"));
        assert_eq!(two_programs(&profiles[..3]), None);
    }

    #[test]
    fn the_cost_of_other_ports_transitions_is_the_medians_watching_an_idle_port() {
        let profiles = [
            profile(Tool::ObserverElsewhere, 1.9, None),
            profile(Tool::ObserverElsewhere, 2.1, None),
            profile(Tool::ObserverElsewhere, 2.0, None),
            profile(Tool::BpftraceCountElsewhere, 1.3, None),
            profile(Tool::Floor, 0.6, None),
        ];
        let text = elsewhere(&profiles).unwrap();
        assert!(
            text.contains("observer (metrics only) takes 2.00% of the samples and bpftrace's counting program 1.30% (the floor: 0.60%)"),
            "{text}"
        );
        assert_eq!(elsewhere(&profiles[..3]), None);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn memory_cells_give_the_largest_peak_and_the_medians() {
        let m = [memory(28, 5, 102), memory(30, 7, 100), memory(29, 6, 101)];
        assert_eq!(
            memory_cells(&m, true),
            "30.0 MiB | 6.0 MiB | 101.0 MiB (100.0 MiB–102.0 MiB)"
        );
        assert_eq!(memory_cells(&m, false), "30.0 MiB | 6.0 MiB | 101.0 MiB");
        assert_eq!(memory_cells(&[], true), "– | – | –");
        let small = Memory {
            peak_rss_kib: 1024,
            rss_kib: 1024,
            maps_bytes: 394_440,
        };
        assert_eq!(memory_cells(&[small], false), "1.0 MiB | 1.0 MiB | 385 KiB");
    }

    #[test]
    fn the_report_shows_kernel_memory_next_to_rss() {
        let machine = Machine {
            date: "2026-11-27 22:00 UTC".into(),
            kernel: "6.18".into(),
            cpu: "a CPU".into(),
            cores: 2,
            memory_gib: 4.0,
            debian: "12".into(),
            nofile: "20000".into(),
            nginx: "1.22.1".into(),
            ab: "ApacheBench 2.3".into(),
            bpftrace: "bpftrace v0.17.0".into(),
            libbpf_tools: "0.26.0+ds-1".into(),
            node_exporter: "1.5.0-1+b6".into(),
            ss: "ss utility, iproute2-6.1.0".into(),
            observer: "commit abc".into(),
        };
        let plan = Plan::new(true);
        let report = render(
            "cargo xtask bench --quick",
            &plan,
            &machine,
            &results(),
            Duration::from_secs(65),
        );
        assert!(report.contains(
            "| observer's kernel memory for BPF maps ≤ 16 MiB (metrics only, section 6) | 102.0 MiB | **missed** |"
        ));
        assert!(report.contains("## 6. Memory"));
        assert!(report.contains(
            "| observer (metrics only) | 30.0 MiB | 5.5 MiB | 101.0 MiB (100.0 MiB–102.0 MiB) |"
        ));
        assert!(report.contains(
            "| bpftrace, counting in the kernel | 100.0 MiB | 100.0 MiB | 1.0 MiB (1.0 MiB–1.0 MiB) |"
        ));
        assert!(report.contains(
            "| observer (metrics only), 5,000 connections held | 12.0 MiB | 8.0 MiB | 103.0 MiB (103.0 MiB–103.0 MiB) |"
        ));
        assert!(
            report.contains("| libbpf-tools tcplife, lines in a file | 0 | 0 | 0 | 0 | 0 | 0 |")
        );
        assert!(report.contains(
            "| node_exporter (tcpstat), 5,000 connections held | 20.0 MiB | 18.0 MiB | 0 KiB (0 KiB–0 KiB) |"
        ));
        assert!(report.contains("| 5,000 | 30.00 (20.00–40.00) | 10,004 |"));
        // A tool without rounds (none in this sample) gets dashes, not zeros.
        assert!(report.contains("| bpftrace, empty program (classic tracepoint) | – | – | – |"));
        // The floor: its kernel cost per hit, and in the goals.
        assert!(
            report
                .contains("| empty program, BTF-typed tracepoint (the floor) | 40 (40–40) | 2.0 |")
        );
        assert!(report.contains(
            "both programs 225 ns (main 175 ns) vs 100 ns (empty programs: 40 ns attached as \
             observer's, NaN ns on the classic tracepoint)"
        ));
        assert!(report.contains("225 ns, 145 ns above two runs of the floor"));
        // Section 5: the census's cost at each level of TIME_WAIT sockets.
        assert!(report.contains(
            "| 25,000 (25,000) | 25,040 | 83.00 (82.00–84.00) | 96.00 (96.00–96.00) | 80.00 (80.00–80.00) | 1.50 (1.50–1.50) | 40.0 (40.0–40.0) |"
        ));
        assert!(report.contains("| 100 (100) | 140 | 4.00 (3.00–5.00) |"));
        assert!(!report.contains("fewer TIME_WAIT sockets were on the port"));
        // Section 4: observer's own cost, with the kernel memory in its last column.
        assert!(report.contains("| 30.0 MiB | 5.5 MiB | 101.0 MiB |"));
    }
}
