//! What observer needs from the kernel, probed at start-up before anything is loaded, so that a
//! kernel without one of them gets one line naming the feature and the oldest Linux that has it,
//! not a verifier or syscall error. The probes are the shell (`probe`); what they mean is plain
//! data (`Probed::missing`), unit-tested.
use crate::btf;
use observer_common::tracepoint;

/// What the kernel was found to offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probed {
    /// `/sys/kernel/btf/vmlinux` is there and reads as BTF.
    pub btf: bool,
    /// The kernel's BTF declares the tracepoint `sock/inet_sock_set_state` for BTF-typed
    /// programs (its `btf_trace_` typedef, which came with those programs in 5.5). aya's probe
    /// for tracing programs tries an fentry attach instead, which some kernels refuse (EPERM
    /// on this machine's) while they run BTF-typed tracepoints.
    pub tracepoint: bool,
    /// BPF ring buffer maps.
    pub ring_buffer: bool,
    /// sock_diag lists TCP sockets (the modules inet_diag and tcp_diag), for the start-up
    /// snapshot.
    pub tcp_diag: bool,
}

/// A feature this kernel lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    pub feature: &'static str,
    /// What brings it: the oldest Linux release that has it, or a module to load.
    pub remedy: Remedy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    Since(&'static str),
    Module(&'static str),
}

impl Probed {
    /// The first feature missing, in the order observer would trip over them.
    pub fn missing(&self) -> Option<Missing> {
        let needs = [
            (
                self.btf,
                "the kernel's BTF type information (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y)",
                "5.4",
            ),
            (
                self.tracepoint,
                "the BTF-typed tracepoint sock/inet_sock_set_state (btf_trace_inet_sock_set_state)",
                "5.5",
            ),
            (self.ring_buffer, "BPF ring buffers", "5.8"),
        ];
        let release =
            needs
                .into_iter()
                .find(|(present, _, _)| !present)
                .map(|(_, feature, since)| Missing {
                    feature,
                    remedy: Remedy::Since(since),
                });
        release.or((!self.tcp_diag).then_some(Missing {
            feature: "TCP socket listing through sock_diag (what `ss` uses; the modules \
                      inet_diag and tcp_diag), which the start-up count of open connections needs",
            remedy: Remedy::Module("tcp_diag"),
        }))
    }
}

impl Missing {
    /// The line a user reads.
    pub fn message(&self, release: &str) -> String {
        match self.remedy {
            Remedy::Since(since) => format!(
                "this kernel ({release}) lacks {}, which observer needs: it came in Linux \
                 {since}; observer is proven on Linux 5.10 and later (see the README)",
                self.feature
            ),
            Remedy::Module(module) => format!(
                "this kernel ({release}) lacks {}, and could not load it itself: \
                 `modprobe {module}` loads it",
                self.feature
            ),
        }
    }
}

/// Probes the running kernel, whose BTF was read already (`None`: it could not be). A probe
/// that fails for another reason (no privileges) is reported as such, not as a missing feature.
pub fn probe(vmlinux: Option<&btf::Btf>) -> anyhow::Result<Probed> {
    use anyhow::Context as _;
    use aya::{maps::MapType, sys};
    let tracepoint = vmlinux.is_some_and(|b| b.has_tracepoint(tracepoint::NAME).unwrap_or(false));
    Ok(Probed {
        btf: vmlinux.is_some(),
        tracepoint,
        ring_buffer: sys::is_map_supported(MapType::RingBuf)
            .context("probing the kernel for ring buffers")?,
        tcp_diag: crate::diag::tcp_available().context("probing the kernel for sock_diag")?,
    })
}

/// The running kernel's release, as `uname -r` prints it.
/// Whether this kernel runs tracepoint programs preemptibly: from Linux 7.0 (tracepoints under
/// SRCU-fast), or a PREEMPT_RT kernel; `OBSERVER_PREEMPTIBLE=1` or `0` says so instead.
pub fn preemptible_tracepoints() -> bool {
    // For tests on kernels that are not: what observer does only where runs are preemptible
    // (count lost opens late, guard the backup's CLOSEs) can be tried there too.
    if let Ok(v) = std::env::var("OBSERVER_PREEMPTIBLE") {
        return v == "1";
    }
    let realtime = std::fs::read_to_string("/sys/kernel/realtime").is_ok_and(|s| s.trim() == "1");
    realtime || major(&release()) >= 7
}

/// The major version of a kernel release string (`6.12.95+deb12-amd64` -> 6); 0 if unreadable.
fn major(release: &str) -> u32 {
    release
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown release".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_major_version_of_a_release() {
        assert_eq!(major("6.12.95+deb12-amd64"), 6);
        assert_eq!(major("7.2.13+deb14-amd64"), 7);
        assert_eq!(major("unknown release"), 0);
    }

    const ALL: Probed = Probed {
        btf: true,
        tracepoint: true,
        ring_buffer: true,
        tcp_diag: true,
    };

    #[test]
    fn a_kernel_with_everything_passes() {
        assert_eq!(ALL.missing(), None);
    }

    #[test]
    fn each_missing_feature_is_named_with_the_release_that_brought_it() {
        let cases = [
            (
                Probed {
                    btf: false,
                    tracepoint: false,
                    ..ALL
                },
                "BTF type information",
                "5.4",
            ),
            (
                Probed {
                    tracepoint: false,
                    ..ALL
                },
                "sock/inet_sock_set_state",
                "5.5",
            ),
            (
                Probed {
                    ring_buffer: false,
                    ..ALL
                },
                "ring buffers",
                "5.8",
            ),
        ];
        for (probed, feature, since) in cases {
            let m = probed.missing().expect("something is missing");
            let line = m.message("5.4.0-150-generic");
            assert!(line.contains(feature), "{line}");
            assert!(line.contains(&format!("Linux {since}")), "{line}");
            assert!(
                line.starts_with("this kernel (5.4.0-150-generic) lacks "),
                "{line}"
            );
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn a_missing_module_says_how_to_load_it() {
        let m = Probed {
            tcp_diag: false,
            ..ALL
        }
        .missing()
        .unwrap();
        let line = m.message("5.10.0-46-amd64");
        assert!(
            line.contains("tcp_diag") && line.contains("`modprobe tcp_diag`"),
            "{line}"
        );
        // A kernel too old comes first: loading a module would not help it.
        let m = Probed {
            ring_buffer: false,
            tcp_diag: false,
            ..ALL
        }
        .missing()
        .unwrap();
        assert_eq!(m.remedy, Remedy::Since("5.8"));
    }
}
