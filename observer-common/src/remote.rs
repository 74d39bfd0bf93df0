//! Per-client counts (`--by-remote`): established connections per remote address or prefix.
//!
//! Nothing is counted per remote on the program's hot path. The per-socket map holds every
//! watched connection in the state the counters hold it in, and the start-up snapshot's seeds
//! stay in their map until their first transition: at a scrape, one iterator over each lists
//! the remote (`RemoteKey`, masked to the prefix) of every connection counted in ESTABLISHED,
//! and the daemon counts them. The counts sum to the `established` gauge by construction.

use crate::tracepoint::AF_INET6;

/// `RemoteKey::family` of an IPv4 remote (also an IPv4-mapped IPv6 one, `::ffff:a.b.c.d`).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A remote as counted: the connection's (direction, port) and its peer's address, masked to
/// the prefix. IPv4 fills the first 4 bytes of `addr`. What the iterators write, one after
/// another.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteKey {
    pub port: u16,
    pub direction: u8,
    pub family: u8,
    pub addr: [u8; 16],
}
crate::pod!(RemoteKey);

impl RemoteKey {
    pub const SIZE: usize = core::mem::size_of::<RemoteKey>();
}

/// The prefix masks, as the program applies them to the address's two 8-byte words (in memory
/// order): `[IPv4, IPv6 first half, IPv6 second half]` (global `REMOTE_MASKS`).
pub type Masks = [u64; 3];

/// No prefix: every address is its own remote.
pub const FULL_MASKS: Masks = [u32::MAX as u64, u64::MAX, u64::MAX];

/// The masks of a `/v4` IPv4 and `/v6` IPv6 prefix (global `REMOTE_MASKS`).
pub fn masks(v4: u8, v6: u8) -> Masks {
    let mut m = [0u8; 16];
    for (i, byte) in m.iter_mut().enumerate() {
        let bits = (v6 as usize).saturating_sub(i * 8).min(8);
        *byte = (0xffu16 << (8 - bits)) as u8;
    }
    let four = (u32::MAX.checked_shl(32 - v4 as u32).unwrap_or(0)).to_be_bytes();
    let (a, b) = m.split_at(8);
    [
        u32::from_ne_bytes(four) as u64,
        u64::from_ne_bytes(a.try_into().expect("8 bytes")),
        u64::from_ne_bytes(b.try_into().expect("8 bytes")),
    ]
}

/// The remote a connection counts under: `(a, b)` are its peer's address as two words in memory
/// order (IPv4 in the low 4 bytes of `a`), `family` the socket's (AF_INET, AF_INET6).
#[inline(always)]
pub fn key(direction: u8, port: u16, family: u16, a: u64, b: u64, masks: &Masks) -> RemoteKey {
    // An IPv4 peer of a dual-stack socket: ::ffff:a.b.c.d, the IPv4 address in the last 4 bytes.
    let mapped = family == AF_INET6 && a == 0 && b as u32 == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let (family, a, b) = if family != AF_INET6 {
        (FAMILY_V4, a & masks[0], 0)
    } else if mapped {
        (FAMILY_V4, (b >> 32) & masks[0], 0)
    } else {
        (FAMILY_V6, a & masks[1], b & masks[2])
    };
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&a.to_ne_bytes());
    addr[8..].copy_from_slice(&b.to_ne_bytes());
    RemoteKey {
        port,
        direction,
        family,
        addr,
    }
}

/// `key` from an address as 16 bytes (IPv4 in the first 4), as sock_diag and `TupleKey` hold it.
pub fn key_of_bytes(
    direction: u8,
    port: u16,
    family: u16,
    addr: &[u8; 16],
    masks: &Masks,
) -> RemoteKey {
    let (a, b) = addr.split_at(8);
    key(
        direction,
        port,
        family,
        u64::from_ne_bytes(a.try_into().expect("8 bytes")),
        u64::from_ne_bytes(b.try_into().expect("8 bytes")),
        masks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracepoint::AF_INET;

    fn v4(addr: [u8; 4]) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&addr);
        a
    }

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<core::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn full_masks_keep_every_address() {
        assert_eq!(masks(32, 128), FULL_MASKS);
        let k = key_of_bytes(0, 80, AF_INET, &v4([127, 0, 0, 2]), &FULL_MASKS);
        assert_eq!((k.family, k.addr), (FAMILY_V4, v4([127, 0, 0, 2])));
        assert_eq!((k.port, k.direction), (80, 0));
        let a = v6("2001:db8::1");
        let k = key_of_bytes(1, 443, AF_INET6, &a, &FULL_MASKS);
        assert_eq!((k.family, k.addr, k.direction), (FAMILY_V6, a, 1));
    }

    #[test]
    fn a_mapped_address_is_ipv4() {
        let k = key_of_bytes(0, 80, AF_INET6, &v6("::ffff:127.0.0.3"), &FULL_MASKS);
        assert_eq!((k.family, k.addr), (FAMILY_V4, v4([127, 0, 0, 3])));
        // Same key as the same client met by an IPv4 socket.
        assert_eq!(
            k,
            key_of_bytes(0, 80, AF_INET, &v4([127, 0, 0, 3]), &FULL_MASKS)
        );
        // Not mapped: ::1 and an address that only ends like one.
        assert_eq!(
            key_of_bytes(0, 80, AF_INET6, &v6("::1"), &FULL_MASKS).family,
            FAMILY_V6
        );
        assert_eq!(
            key_of_bytes(0, 80, AF_INET6, &v6("1::ffff:127.0.0.3"), &FULL_MASKS).family,
            FAMILY_V6
        );
    }

    #[test]
    fn prefixes_mask_the_address() {
        let m = masks(24, 64);
        let k = key_of_bytes(0, 80, AF_INET, &v4([10, 1, 2, 3]), &m);
        assert_eq!(k.addr, v4([10, 1, 2, 0]));
        let k = key_of_bytes(0, 80, AF_INET6, &v6("::ffff:10.1.2.200"), &m);
        assert_eq!(k.addr, v4([10, 1, 2, 0]));
        let k = key_of_bytes(0, 80, AF_INET6, &v6("2001:db8:1:2:3:4:5:6"), &m);
        assert_eq!(k.addr, v6("2001:db8:1:2::"));
        let m = masks(0, 0);
        assert_eq!(
            key_of_bytes(0, 80, AF_INET, &v4([10, 1, 2, 3]), &m).addr,
            [0; 16]
        );
        let m = masks(9, 21);
        assert_eq!(
            key_of_bytes(0, 80, AF_INET, &v4([10, 255, 2, 3]), &m).addr,
            v4([10, 128, 0, 0])
        );
        assert_eq!(
            key_of_bytes(0, 80, AF_INET6, &v6("2001:dfff::1"), &m).addr,
            v6("2001:d800::")
        );
    }
}
