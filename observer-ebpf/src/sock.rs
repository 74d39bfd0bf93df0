//! One transition's socket: its fields, loaded through the typed pointer the tracepoint
//! passes, or read by address.
use crate::maps::{NET_INUM_OFFSET, SK_NET_OFFSET, sock_offset};
use aya_ebpf::helpers::bpf_probe_read_kernel;
use aya_ebpf::programs::BtfTracePointContext;
use observer_common::snapshot::TupleKey;
use observer_common::tcp;
use observer_common::tracepoint::AF_INET;

/// One transition: the socket, as the tracepoint passes it (a pointer the verifier knows the
/// type of, so its fields are plain loads), its address as a number, and the two states.
#[derive(Clone, Copy)]
pub(crate) struct Sock {
    pub(crate) ptr: *const u8,
    pub(crate) sk: u64,
    pub(crate) old: u8,
    pub(crate) new: u8,
    /// Local and remote port, read once by `with_ports` (0 until then): the local one can take
    /// a helper call.
    pub(crate) sport: u16,
    pub(crate) dport: u16,
}

impl Sock {
    /// The transition as the tracepoint passes it; its address (`sk`) is 0 until `at`.
    #[inline(always)]
    pub(crate) fn of(ctx: &BtfTracePointContext) -> Sock {
        // The tracepoint's arguments: (const struct sock *, int oldstate, int newstate).
        Sock {
            ptr: ctx.arg::<*const u8>(0),
            sk: 0,
            old: ctx.arg::<u64>(1) as u8,
            new: ctx.arg::<u64>(2) as u8,
            sport: 0,
            dport: 0,
        }
    }

    /// The same transition with the socket's address as a number, for the maps keyed by it.
    #[inline(always)]
    pub(crate) fn at(&self, cell: *mut u64) -> Sock {
        // The verifier allows no arithmetic on a typed kernel pointer: a round trip through a
        // word of this run's own (see `Scratch`) gives that address as a number.
        // SAFETY: this run's word of the map.
        let sk = unsafe {
            core::ptr::write_volatile(cell, self.ptr as u64);
            core::ptr::read_volatile(cell)
        };
        Sock { sk, ..*self }
    }

    /// A field of `struct sock` at an offset the daemon found in the kernel's BTF. The offset
    /// comes from read-only data, which the verifier reads as a constant and checks against the
    /// type.
    #[inline(always)]
    pub(crate) fn field<T>(&self, off: u32) -> T {
        // SAFETY: checked by the verifier (a load through a typed kernel pointer).
        unsafe { core::ptr::read_volatile(self.ptr.add(off as usize) as *const T) }
    }

    #[inline(always)]
    pub(crate) fn protocol(&self) -> u16 {
        self.field(sock_offset!(protocol))
    }

    /// The same transition with its ports read.
    #[inline(always)]
    pub(crate) fn with_ports(&self) -> Sock {
        Sock {
            sport: self.read_sport(),
            dport: u16::from_be(self.field(sock_offset!(dport))),
            ..*self
        }
    }

    #[inline(always)]
    pub(crate) fn read_sport(&self) -> u16 {
        let num: u16 = self.field(sock_offset!(num));
        if num != 0 || self.new != tcp::CLOSE {
            return num;
        }
        // At CLOSE the port is released already; inet_sport still holds it.
        let at = self.sk + sock_offset!(sport) as u64;
        // SAFETY: bpf_probe_read_kernel checks the address.
        let port = unsafe { bpf_probe_read_kernel(at as *const u16) };
        u16::from_be(port.unwrap_or(0))
    }

    /// (family, local address, remote address); IPv4 fills the first 4 bytes.
    #[inline(always)]
    pub(crate) fn addrs(&self) -> (u16, [u8; 16], [u8; 16]) {
        let family: u16 = self.field(sock_offset!(family));
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        if family == AF_INET {
            s[..4].copy_from_slice(&self.field::<u32>(sock_offset!(saddr)).to_ne_bytes());
            d[..4].copy_from_slice(&self.field::<u32>(sock_offset!(daddr)).to_ne_bytes());
        } else {
            s = self.field16(sock_offset!(saddr_v6));
            d = self.field16(sock_offset!(daddr_v6));
        }
        (family, s, d)
    }

    /// A 16-byte field (an IPv6 address) as two 8-byte loads.
    #[inline(always)]
    pub(crate) fn field16(&self, off: u32) -> [u8; 16] {
        let (a, b) = (self.field::<u64>(off), self.field::<u64>(off + 8));
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a.to_ne_bytes());
        out[8..].copy_from_slice(&b.to_ne_bytes());
        out
    }

    #[inline(always)]
    pub(crate) fn tuple(&self, netns: u32) -> TupleKey {
        let (family, saddr, daddr) = self.addrs();
        TupleKey {
            netns,
            family,
            sport: self.sport,
            dport: self.dport,
            _pad: 0,
            saddr,
            daddr,
        }
    }
}

/// (family, local address, remote address) of the socket (or request socket) at `sk`, read by
/// address, as `Sock::addrs` loads them through a typed pointer; IPv4 fills the first 4 bytes.
#[inline(always)]
pub(crate) fn addrs_at(sk: u64) -> (u16, [u8; 16], [u8; 16]) {
    let family: u16 = read_kernel(sk + sock_offset!(family) as u64);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        saddr[..4]
            .copy_from_slice(&read_kernel::<u32>(sk + sock_offset!(saddr) as u64).to_ne_bytes());
        daddr[..4]
            .copy_from_slice(&read_kernel::<u32>(sk + sock_offset!(daddr) as u64).to_ne_bytes());
    } else {
        saddr = read_kernel(sk + sock_offset!(saddr_v6) as u64);
        daddr = read_kernel(sk + sock_offset!(daddr_v6) as u64);
    }
    (family, saddr, daddr)
}

/// A kernel value at `addr`, or 0 when it cannot be read.
#[inline(always)]
pub(crate) fn read_kernel<T: Default>(addr: u64) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.unwrap_or_default()
}

/// The inode number of the socket's network namespace, or 0 when its offsets are unknown.
#[inline(always)]
pub(crate) fn netns_of(sk: u64) -> u32 {
    let off = SK_NET_OFFSET.load();
    if off == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the addresses.
    unsafe {
        let Ok(net) = bpf_probe_read_kernel((sk + off as u64) as *const u64) else {
            return 0;
        };
        bpf_probe_read_kernel((net + NET_INUM_OFFSET.load() as u64) as *const u32).unwrap_or(0)
    }
}
