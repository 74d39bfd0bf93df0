//! The tools measured, and which of their programs a kernel-cost figure is about.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tool {
    Observer,
    ObserverEvents,
    /// An empty program attached by BTF type, as observer's are: the floor.
    Floor,
    /// Two empty programs attached so, as many as observer's (main and backup): the floor of a
    /// design with two programs on the tracepoint.
    FloorPair,
    /// An empty program on the classic tracepoint interface.
    BpftraceEmpty,
    BpftraceCount,
    BpftracePrint,
    /// Metrics only, started while connections are open on the port: as in production, where
    /// the start-up snapshot hands the kernel its seeds.
    ObserverOpen,
    /// libbpf-tools' `tcplife -L PORT`, its lines in a file.
    Tcplife,
    /// libbpf-tools' `tcpstates -L PORT`, its lines in a file.
    Tcpstates,
    /// Metrics only, built without the backup program (the feature `without-backup`): not a
    /// mode of observer, a measurement of what its exactness under skipped runs costs.
    ObserverAlone,
    /// Metrics only, watching an idle port (the bench's poke listener): every transition of the
    /// load fails its filter, as most of a busy host's do.
    ObserverElsewhere,
    /// bpftrace's counting program, filtered on that idle port.
    BpftraceCountElsewhere,
}

impl Tool {
    pub(super) const ALL: [Tool; 9] = [
        Tool::Observer,
        Tool::ObserverOpen,
        Tool::ObserverEvents,
        Tool::Floor,
        Tool::BpftraceEmpty,
        Tool::BpftraceCount,
        Tool::BpftracePrint,
        Tool::Tcplife,
        Tool::Tcpstates,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Tool::Observer => "observer (metrics only)",
            Tool::ObserverOpen => "observer (metrics only), started with 100 connections open",
            Tool::ObserverEvents => "observer `--events json > /dev/null`",
            Tool::Floor => "empty program, BTF-typed tracepoint as observer's (the floor)",
            Tool::FloorPair => "two empty programs, attached so (the floor of two programs)",
            Tool::BpftraceEmpty => "bpftrace, empty program (classic tracepoint)",
            Tool::BpftraceCount => "bpftrace, counting in the kernel",
            Tool::BpftracePrint => "bpftrace, `printf` per event `> /dev/null`",
            Tool::Tcplife => "libbpf-tools `tcplife -L PORT > file`",
            Tool::Tcpstates => "libbpf-tools `tcpstates -L PORT > file`",
            Tool::ObserverElsewhere => "observer (metrics only) watching an idle port",
            Tool::BpftraceCountElsewhere => "bpftrace counting, filtered on an idle port",
            Tool::ObserverAlone => {
                "observer (metrics only), built without its backup program (for this \
                 measurement only)"
            }
        }
    }
}

/// Which program a kernel-cost figure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prog {
    Main,
    Backup,
    Bpftrace,
    /// The floor's empty program.
    Floor,
    /// A libbpf-tools tool's programs, together.
    Libbpf,
}
