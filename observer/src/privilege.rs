//! Capabilities, not root: what observer needs for the targets it was given, checked before
//! anything is loaded (each missing one named with what needs it), and dropped once start-up is
//! done, but for CAP_BPF: on kernels before 6.5 with unprivileged BPF disabled (Debian's
//! default) every bpf() call needs it, and observer reads its maps at every scrape.
use std::collections::BTreeMap;

use anyhow::{Result, bail};
use caps::{CapSet, Capability};

/// A capability and what needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub cap: Capability,
    pub why: &'static str,
}

/// What start-up must be able to do: `owners`, find the process that holds each socket (`--pid`,
/// `--cgroup`, no target); `namespaces`, list connections in other network namespaces than
/// observer's own (`others`: some exist; `hidden`: some process's could not be read, so some
/// may); `low_port`, bind a metrics port under 1024; `lift_memlock`, lift a hard
/// RLIMIT_MEMLOCK that the kernel charges BPF maps to (`memlock`).
pub fn needs(
    owners: bool,
    every_namespace: bool,
    others: bool,
    hidden: bool,
    low_port: bool,
    lift_memlock: bool,
) -> Vec<Need> {
    let mut n = vec![
        Need {
            cap: Capability::CAP_BPF,
            why: "to load its eBPF programs and read their maps",
        },
        Need {
            cap: Capability::CAP_PERFMON,
            why: "to attach its programs to the tracepoint and let them read sockets",
        },
    ];
    if owners {
        n.push(Need {
            cap: Capability::CAP_SYS_PTRACE,
            why: "to find which process holds each socket (/proc/PID/fd), for --pid, --cgroup or no target",
        });
        n.push(Need {
            cap: Capability::CAP_DAC_READ_SEARCH,
            why: "to list other users' processes' open files (/proc/PID/fd), for --pid, --cgroup or no target",
        });
    }
    if every_namespace && hidden && !owners {
        n.push(Need {
            cap: Capability::CAP_SYS_PTRACE,
            why: "to find the network namespaces of other users' processes, whose connections open at start are counted",
        });
    }
    if others {
        n.push(Need {
            cap: Capability::CAP_SYS_ADMIN,
            why: "to enter the other network namespaces and list the connections open there at start",
        });
    }
    if low_port {
        n.push(Need {
            cap: Capability::CAP_NET_BIND_SERVICE,
            why: "to serve metrics on a port under 1024",
        });
    }
    if lift_memlock {
        n.push(Need {
            cap: Capability::CAP_SYS_RESOURCE,
            why: "to lift RLIMIT_MEMLOCK, which this kernel (before Linux 5.11) charges BPF maps to; \
                  or start observer with no memlock limit, as systemd's LimitMEMLOCK=infinity does",
        });
    }
    n
}

/// The needs not met by `held`, one per capability.
pub fn missing(needs: &[Need], held: impl Fn(Capability) -> bool) -> Vec<Need> {
    let mut out: BTreeMap<String, Need> = BTreeMap::new();
    for n in needs.iter().filter(|n| !held(n.cap)) {
        out.entry(n.cap.to_string()).or_insert(*n);
    }
    out.into_values().collect()
}

/// One line for the missing capabilities.
pub fn message(missing: &[Need]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|n| format!("{} ({})", n.cap, n.why))
        .collect();
    format!(
        "missing capabilities: {}; run observer as root, or grant them (see the README's \"Privileges\")",
        list.join("; ")
    )
}

/// Fails, naming each missing capability, unless this thread holds every one `needs` lists.
pub fn check(needs: &[Need]) -> Result<()> {
    let effective = caps::read(None, CapSet::Effective)?;
    let missing = missing(needs, |c| effective.contains(&c));
    if !missing.is_empty() {
        bail!("{}", message(&missing));
    }
    Ok(())
}

/// What observer keeps once started: CAP_BPF, if it has it.
pub const KEPT: Capability = Capability::CAP_BPF;

/// Drops every capability but `KEPT`, for good (permitted too), and leaves none to children.
/// Called on the only thread, before any other starts: later threads inherit the result.
pub fn drop_after_start() -> Result<()> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: caps::CapsHashSet = permitted.into_iter().filter(|c| *c == KEPT).collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_of(n: &[Need]) -> Vec<Capability> {
        n.iter().map(|n| n.cap).collect()
    }

    #[test]
    fn a_port_needs_bpf_and_perfmon_alone_in_a_single_namespace() {
        let n = needs(false, true, false, false, false, false);
        assert_eq!(caps_of(&n), [Capability::CAP_BPF, Capability::CAP_PERFMON]);
    }

    #[test]
    fn other_namespaces_need_entering_and_finding() {
        let n = needs(false, true, true, true, false, false);
        assert!(caps_of(&n).contains(&Capability::CAP_SYS_ADMIN));
        assert!(caps_of(&n).contains(&Capability::CAP_SYS_PTRACE));
        // Namespaces of others' processes that cannot be read may hide some.
        let n = needs(false, true, false, true, false, false);
        assert!(caps_of(&n).contains(&Capability::CAP_SYS_PTRACE));
        assert!(!caps_of(&n).contains(&Capability::CAP_SYS_ADMIN));
    }

    #[test]
    fn process_targets_need_ptrace_and_a_low_port_its_capability() {
        let n = needs(true, false, false, false, true, false);
        assert_eq!(
            caps_of(&n),
            [
                Capability::CAP_BPF,
                Capability::CAP_PERFMON,
                Capability::CAP_SYS_PTRACE,
                Capability::CAP_DAC_READ_SEARCH,
                Capability::CAP_NET_BIND_SERVICE
            ]
        );
    }

    #[test]
    fn the_message_names_each_missing_capability_once_with_its_reason() {
        let n = needs(true, true, false, true, false, false);
        let m = missing(&n, |c| c == Capability::CAP_BPF);
        assert_eq!(
            caps_of(&m),
            [
                Capability::CAP_DAC_READ_SEARCH,
                Capability::CAP_PERFMON,
                Capability::CAP_SYS_PTRACE
            ]
        );
        let text = message(&m);
        assert!(text.contains("CAP_PERFMON (to attach"), "{text}");
        assert!(
            text.contains("CAP_SYS_PTRACE (to find which process"),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn a_charged_memlock_limit_needs_sys_resource_and_says_how_to_do_without() {
        let n = needs(false, true, false, false, false, true);
        let m = missing(&n, |c| c != Capability::CAP_SYS_RESOURCE);
        assert_eq!(caps_of(&m), [Capability::CAP_SYS_RESOURCE]);
        let text = message(&m);
        assert!(
            text.contains(
                "CAP_SYS_RESOURCE (to lift RLIMIT_MEMLOCK, which this kernel (before Linux 5.11)"
            ),
            "{text}"
        );
        assert!(text.contains("LimitMEMLOCK=infinity"), "{text}");
        assert!(
            !caps_of(&needs(false, true, false, false, false, false))
                .contains(&Capability::CAP_SYS_RESOURCE)
        );
    }
}
