//! Offsets of kernel struct fields, read from the running kernel's BTF at start. Rust eBPF
//! programs built with aya have no CO-RE relocations, so the daemon computes the offsets and
//! hands them to the program as globals; they differ between kernels.
use anyhow::{Context as _, Result, anyhow};
use btf_rs::{Btf, Type};
use observer_common::filter::SockOffsets;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// What the program needs to read a socket's network namespace inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsOffsets {
    /// `struct sock` -> `__sk_common.skc_net` (a `possible_net_t`, whose first member is the
    /// `struct net *`).
    pub sk_net: u32,
    /// `struct net` -> `ns.inum`.
    pub net_inum: u32,
}

/// The kernel's BTF, parsed once.
pub fn vmlinux() -> Result<Btf> {
    Btf::from_file(VMLINUX).with_context(|| format!("reading {VMLINUX}"))
}

/// Where the fields that the tracepoint copies into its record live in `struct sock`.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets> {
    let common = |f: &str| offset(btf, "sock", &["__sk_common", f]).map(|o| o as u32);
    let inet = |f: &str| offset(btf, "inet_sock", &[f]).map(|o| o as u32);
    Ok(SockOffsets {
        protocol: offset(btf, "sock", &["sk_protocol"])? as u32,
        family: common("skc_family")?,
        sport: inet("inet_sport")?,
        dport: common("skc_dport")?,
        saddr: inet("inet_saddr")?,
        daddr: common("skc_daddr")?,
        saddr_v6: common("skc_v6_rcv_saddr")?,
        daddr_v6: common("skc_v6_daddr")?,
    })
}

pub fn netns_offsets(btf: &Btf) -> Result<NetnsOffsets> {
    let sk_net = offset(btf, "sock", &["__sk_common", "skc_net"])?;
    let net_inum = offset(btf, "net", &["ns", "inum"])?;
    Ok(NetnsOffsets {
        sk_net: sk_net as u32,
        net_inum: net_inum as u32,
    })
}

/// Byte offset of a member path inside a struct, looking through anonymous unions and structs.
fn offset(btf: &Btf, strukt: &str, path: &[&str]) -> Result<usize> {
    let mut ty = btf
        .resolve_types_by_name(strukt)?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| anyhow!("struct {strukt} is not in the kernel's BTF"))?;
    let mut total = 0;
    for name in path {
        let (off, member_ty) = find_member(btf, &ty, name)?
            .ok_or_else(|| anyhow!("struct {strukt} has no member {name} in the kernel's BTF"))?;
        total += off;
        ty = member_ty;
    }
    Ok(total)
}

fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(usize, Type)>> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for m in members {
        let m_name = btf.resolve_name(m).unwrap_or_default();
        let m_ty = strip(btf, btf.resolve_chained_type(m)?)?;
        let off = (m.bit_offset() / 8) as usize;
        if m_name == name {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                return Err(anyhow!("{name} is a bit field"));
            }
            return Ok(Some((off, m_ty)));
        }
        if m_name.is_empty()
            && let Some((inner, t)) = find_member(btf, &m_ty, name)?
        {
            return Ok(Some((off + inner, t)));
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip(btf: &Btf, mut ty: Type) -> Result<Type> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_every_field_observer_reads() {
        let btf = vmlinux().unwrap();
        let o = sock_offsets(&btf).unwrap();
        // struct sock starts with sock_common, whose family and ports come early.
        assert!(o.family < 64 && o.dport < 64, "{o:?}");
        assert!(o.protocol > 64 && o.sport > o.protocol, "{o:?}");
        let n = netns_offsets(&btf).unwrap();
        assert!(n.sk_net > 0 && n.net_inum > 0, "{n:?}");
    }
}
