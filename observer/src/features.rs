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
    /// Tracing programs (`BPF_PROG_TYPE_TRACING`), which BTF-typed tracepoints are.
    pub tracing_programs: bool,
    /// The kernel's BTF declares the tracepoint `sock/inet_sock_set_state`.
    pub tracepoint: bool,
    /// BPF ring buffer maps.
    pub ring_buffer: bool,
}

/// A feature this kernel lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    pub feature: &'static str,
    /// The oldest Linux release that has it.
    pub since: &'static str,
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
                self.tracing_programs,
                "BTF-typed tracepoint programs (BPF_PROG_TYPE_TRACING)",
                "5.5",
            ),
            (
                self.tracepoint,
                "the tracepoint sock/inet_sock_set_state in the kernel's BTF",
                "4.16 with BTF",
            ),
            (self.ring_buffer, "BPF ring buffers", "5.8"),
        ];
        needs
            .into_iter()
            .find(|(present, _, _)| !present)
            .map(|(_, feature, since)| Missing { feature, since })
    }
}

impl Missing {
    /// The line a user reads.
    pub fn message(&self, release: &str) -> String {
        format!(
            "this kernel ({release}) lacks {}, which observer needs: it came in Linux {}; \
             observer is proven on Linux 5.10 and later (see the README)",
            self.feature, self.since
        )
    }
}

/// Probes the running kernel, whose BTF was read already (`None`: it could not be). A probe
/// that fails for another reason (no privileges) is reported as such, not as a missing feature.
pub fn probe(vmlinux: Option<&btf::Btf>) -> anyhow::Result<Probed> {
    use anyhow::Context as _;
    use aya::{maps::MapType, programs::ProgramType, sys};
    let tracepoint = vmlinux.is_some_and(|b| b.has_tracepoint(tracepoint::NAME).unwrap_or(false));
    Ok(Probed {
        btf: vmlinux.is_some(),
        tracing_programs: sys::is_program_supported(ProgramType::Tracing)
            .context("probing the kernel for tracing programs")?,
        tracepoint,
        ring_buffer: sys::is_map_supported(MapType::RingBuf)
            .context("probing the kernel for ring buffers")?,
    })
}

/// The running kernel's release, as `uname -r` prints it.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown release".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Probed = Probed {
        btf: true,
        tracing_programs: true,
        tracepoint: true,
        ring_buffer: true,
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
                    tracing_programs: false,
                    ..ALL
                },
                "BPF_PROG_TYPE_TRACING",
                "5.5",
            ),
            (
                Probed {
                    tracepoint: false,
                    ..ALL
                },
                "sock/inet_sock_set_state",
                "4.16",
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
}
