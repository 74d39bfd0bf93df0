//! Offsets of kernel struct fields, read from the running kernel's BTF at start. Rust eBPF
//! programs built with aya have no CO-RE relocations, so the daemon computes the offsets and
//! hands them to the program as globals; they differ between kernels.
//!
//! The reader walks the raw type section in place and keeps only an index of where each type
//! starts: a general BTF library builds every one of the kernel's ~150,000 types as objects,
//! which took observer's peak memory from a few MiB to over 50 for a handful of offsets.
use observer_common::filter::{
    CGROUP_POINTER, CGROUP_TAGGED, CgroupOffsets, REQUEST_PROGRAMS, SockOffsets,
};
use observer_common::request::RequestOffsets;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;

// Kinds (bits 24-28 of a type's `info`), from the kernel's `include/uapi/linux/btf.h`.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF, or not in this machine's byte order")]
    BadMagic,
    #[error("truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("type kind {kind} of type {id} is unknown to observer")]
    UnknownKind { id: u32, kind: u32 },
    #[error("struct {0} is not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in the kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("{0} is a bit field")]
    BitField(String),
    #[error("the kernel's BTF has no function {0}")]
    NoFunction(String),
    #[error("struct {strukt} member {member} is not a {bytes}-byte integer in the kernel's BTF")]
    NotInt {
        strukt: String,
        member: String,
        bytes: u32,
    },
}

/// A BTF blob and where each of its types starts.
pub struct Btf {
    data: Vec<u8>,
    /// Byte offset of type `id` in `data` at index `id - 1` (type 0 is `void`).
    types: Vec<u32>,
    strings: std::ops::Range<usize>,
}

/// One member of a struct or union.
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

/// What the program needs to read a socket's network namespace inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsOffsets {
    /// `struct sock` -> `__sk_common.skc_net` (a `possible_net_t`, whose first member is the
    /// `struct net *`).
    pub sk_net: u32,
    /// `struct net` -> `ns.inum`.
    pub net_inum: u32,
}

/// The running kernel's BTF.
pub fn vmlinux() -> Result<Btf, BtfError> {
    let data = std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
        path: VMLINUX.into(),
        source,
    })?;
    Btf::parse(data)
}

/// Where the fields the programs read live in a socket.
/// Where the programs find what they read in the kernel's structs, from its BTF.
pub struct Layout {
    pub sock: SockOffsets,
    /// None where a namespace's inode cannot be found: namespaces are then not told apart.
    pub netns: Option<NetnsOffsets>,
    /// Needed under `--cgroup` only (default otherwise).
    pub cgroup: CgroupOffsets,
    /// Offset of `tgid` in `struct task_struct` (a `--pid` target's forks).
    pub task_tgid: u32,
    /// Where a request socket's fields are, when the kernel lets observer count the inbound
    /// handshakes that fail as request sockets (see `observer_common::request`).
    pub request: Option<RequestOffsets>,
}

impl Layout {
    /// Probes what the kernel must offer (naming what it lacks before anything is loaded), then
    /// reads the offsets. The BTF is large: it is let go before anything else loads.
    pub fn read(cgroups: bool) -> anyhow::Result<Layout> {
        use anyhow::Context as _;
        let vmlinux = vmlinux();
        let probed = crate::features::probe(vmlinux.as_ref().ok())?;
        if let Some(missing) = probed.missing() {
            anyhow::bail!("{}", missing.message(&crate::features::release()));
        }
        let vmlinux = vmlinux.map_err(|e| {
            anyhow::anyhow!(
                "observer needs the kernel's BTF type information (CONFIG_DEBUG_INFO_BTF): {e}"
            )
        })?;
        let sock = sock_offsets(&vmlinux).context("finding struct sock's fields")?;
        let netns = netns_offsets(&vmlinux)
            .map_err(|e| {
                eprintln!("observer: warning: network namespaces will not be told apart ({e})")
            })
            .ok();
        let cgroup = if cgroups {
            cgroup_offsets(&vmlinux)
                .context("finding where the kernel keeps a socket's cgroup, for --cgroup")?
        } else {
            CgroupOffsets::default()
        };
        let task_tgid = vmlinux
            .offset("task_struct", &["tgid"])
            .context("finding struct task_struct's tgid")?;
        let request = request_offsets(&vmlinux)
            .map_err(|e| crate::kernel::warn_no_request_programs(&e.into()))
            .ok();
        Ok(Layout {
            sock,
            netns,
            cgroup,
            task_tgid,
            request,
        })
    }
}

/// A request socket's fields, where both protocols' request socket destructors can be attached
/// to (see `observer_common::request`).
pub fn request_offsets(btf: &Btf) -> Result<RequestOffsets, BtfError> {
    for (_, function) in REQUEST_PROGRAMS {
        if !btf.has_function(function)? {
            return Err(BtfError::NoFunction(function.into()));
        }
    }
    Ok(RequestOffsets {
        listener: btf.offset("request_sock", &["__req_common", "skc_listener"])?,
        child: btf.offset("request_sock", &["sk"])?,
        // `struct tcp_request_sock` begins with its `struct request_sock` (through
        // `inet_request_sock`), so this offset is from the request socket's address too.
        synack: btf.int_offset("tcp_request_sock", &["snt_synack"], 8)?,
    })
}

pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    let common = |f: &str| btf.offset("sock", &["__sk_common", f]);
    Ok(SockOffsets {
        protocol: btf.offset("sock", &["sk_protocol"])?,
        family: common("skc_family")?,
        num: common("skc_num")?,
        sport: btf.offset("inet_sock", &["inet_sport"])?,
        dport: common("skc_dport")?,
        saddr: common("skc_rcv_saddr")?,
        daddr: common("skc_daddr")?,
        saddr_v6: common("skc_v6_rcv_saddr")?,
        daddr_v6: common("skc_v6_daddr")?,
        state: common("skc_state")?,
        max_ack_backlog: btf.offset("sock", &["sk_max_ack_backlog"])?,
        err: btf.offset("sock", &["sk_err"])?,
        shutdown: btf.offset("sock", &["sk_shutdown"])?,
        bytes_sent: btf.offset("tcp_sock", &["bytes_sent"])?,
        bytes_retrans: btf.offset("tcp_sock", &["bytes_retrans"])?,
        bytes_received: btf.offset("tcp_sock", &["bytes_received"])?,
        srtt_us: btf.offset("tcp_sock", &["srtt_us"])?,
        total_retrans: btf.offset("tcp_sock", &["total_retrans"])?,
    })
}

pub fn netns_offsets(btf: &Btf) -> Result<NetnsOffsets, BtfError> {
    Ok(NetnsOffsets {
        sk_net: btf.offset("sock", &["__sk_common", "skc_net"])?,
        net_inum: btf.offset("net", &["ns", "inum"])?,
    })
}

/// Where a socket's cgroup and that cgroup's ancestors are, in either layout the kernels since
/// 5.10 have used: `sock_cgroup_data` held a tagged word (`val`) before 5.15 and a plain
/// `cgroup` pointer since; a cgroup kept its ancestors' ids (`ancestor_ids`) before 6.2 and
/// pointers to them (`ancestors`) since.
pub fn cgroup_offsets(btf: &Btf) -> Result<CgroupOffsets, BtfError> {
    let sk_cgrp_data = btf.offset("sock", &["sk_cgrp_data"])?;
    let (cgroup_kind, word) = match btf.offset("sock_cgroup_data", &["cgroup"]) {
        Ok(at) => (CGROUP_POINTER, at),
        Err(BtfError::NoMember { .. }) => {
            (CGROUP_TAGGED, btf.offset("sock_cgroup_data", &["val"])?)
        }
        Err(e) => return Err(e),
    };
    let (ancestors, ancestors_are_pointers) = match btf.offset("cgroup", &["ancestors"]) {
        Ok(at) => (at, 1),
        Err(BtfError::NoMember { .. }) => (btf.offset("cgroup", &["ancestor_ids"])?, 0),
        Err(e) => return Err(e),
    };
    Ok(CgroupOffsets {
        cgroup_kind,
        sk_cgroup: sk_cgrp_data + word,
        level: btf.offset("cgroup", &["level"])?,
        ancestors,
        ancestors_are_pointers,
        kn: btf.offset("cgroup", &["kn"])?,
        kn_id: btf.offset("kernfs_node", &["id"])?,
    })
}

impl Btf {
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        let u32_at = |at: usize| read_u32(&data, at);
        if data.len() < 24 || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::BadMagic);
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_at = hdr_len + type_off;
        let types_end = types_at + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types_end > data.len() || strings.end > data.len() {
            return Err(BtfError::Malformed(data.len()));
        }
        let mut types = Vec::new();
        let mut at = types_at;
        while at < types_end {
            let id = types.len() as u32 + 1;
            types.push(at as u32);
            let info = u32_at(at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::UnknownKind { id, kind }),
            };
            at += 12 + extra;
        }
        if at != types_end {
            return Err(BtfError::Malformed(at));
        }
        Ok(Btf {
            data,
            types,
            strings,
        })
    }

    /// Byte offset of a member path inside a struct, looking through anonymous unions and
    /// structs and through typedefs and qualifiers.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        Ok(self.locate(strukt, path)?.0)
    }

    /// Byte offset of a member path that must be an integer of `bytes` bytes: a field whose
    /// width a kernel could change is read only where it is the width the program reads.
    pub fn int_offset(&self, strukt: &str, path: &[&str], bytes: u32) -> Result<u32, BtfError> {
        let (offset, ty) = self.locate(strukt, path)?;
        let size = if self.kind(ty)?.0 == KIND_INT {
            Some(self.field(ty, 2)?)
        } else {
            None
        };
        if size != Some(bytes) {
            return Err(BtfError::NotInt {
                strukt: strukt.into(),
                member: path.join("."),
                bytes,
            });
        }
        Ok(offset)
    }

    /// (byte offset, type) of a member path.
    fn locate(&self, strukt: &str, path: &[&str]) -> Result<(u32, u32), BtfError> {
        let mut ty = self
            .struct_named(strukt)?
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let mut total = 0;
        for name in path {
            let (off, member_ty) =
                self.find_member(ty, name)?
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.into(),
                        member: (*name).into(),
                    })?;
            total += off;
            ty = member_ty;
        }
        Ok((total, ty))
    }

    fn struct_named(&self, name: &str) -> Result<Option<u32>, BtfError> {
        self.named(KIND_STRUCT, name)
    }

    /// Whether the kernel declares a BTF-typed tracepoint: its `btf_trace_<name>` typedef.
    pub fn has_tracepoint(&self, name: &str) -> Result<bool, BtfError> {
        Ok(self
            .named(KIND_TYPEDEF, &format!("btf_trace_{name}"))?
            .is_some())
    }

    /// Whether the kernel has a function of that name that programs can attach to (fentry).
    pub fn has_function(&self, name: &str) -> Result<bool, BtfError> {
        Ok(self.named(KIND_FUNC, name)?.is_some())
    }

    fn named(&self, want: u32, name: &str) -> Result<Option<u32>, BtfError> {
        for id in 1..=self.types.len() as u32 {
            let (kind, _) = self.kind(id)?;
            if kind == want && self.name(self.field(id, 0)?)? == name.as_bytes() {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// (byte offset, type) of the member `name` of struct or union `id`.
    fn find_member(&self, id: u32, name: &str) -> Result<Option<(u32, u32)>, BtfError> {
        let (kind, kind_flag) = self.kind(id)?;
        if kind != KIND_STRUCT && kind != KIND_UNION {
            return Ok(None);
        }
        for m in self.members(id)? {
            let m_ty = self.strip(m.ty)?;
            let m_name = self.name(m.name)?;
            let off = m.bit_offset / 8;
            if m_name == name.as_bytes() {
                if kind_flag && m.bitfield_size != 0 {
                    return Err(BtfError::BitField(name.into()));
                }
                return Ok(Some((off, m_ty)));
            }
            if m_name.is_empty()
                && let Some((inner, t)) = self.find_member(m_ty, name)?
            {
                return Ok(Some((off + inner, t)));
            }
        }
        Ok(None)
    }

    fn members(&self, id: u32) -> Result<Vec<Member>, BtfError> {
        let at = self.at(id)?;
        let (_, kind_flag) = self.kind(id)?;
        let vlen = self.field(id, 1)? & 0xffff;
        (0..vlen as usize)
            .map(|i| {
                let m = at + 12 + 12 * i;
                let raw = read_u32(&self.data, m + 8)?;
                Ok(Member {
                    name: read_u32(&self.data, m)?,
                    ty: read_u32(&self.data, m + 4)?,
                    bit_offset: if kind_flag { raw & 0xff_ffff } else { raw },
                    bitfield_size: if kind_flag { raw >> 24 } else { 0 },
                })
            })
            .collect()
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut id: u32) -> Result<u32, BtfError> {
        // Bounded: a chain longer than the type count would be a cycle.
        for _ in 0..=self.types.len() {
            if id == 0 {
                return Ok(0);
            }
            match self.kind(id)?.0 {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = self.field(id, 2)?;
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed(self.at(id)?))
    }

    /// (kind, kind_flag) of a type.
    fn kind(&self, id: u32) -> Result<(u32, bool), BtfError> {
        let info = self.field(id, 1)?;
        Ok(((info >> 24) & 0x1f, info >> 31 != 0))
    }

    /// Word `i` of a type's common header: name offset, info, size or type.
    fn field(&self, id: u32, i: usize) -> Result<u32, BtfError> {
        read_u32(&self.data, self.at(id)? + 4 * i)
    }

    fn at(&self, id: u32) -> Result<usize, BtfError> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .map(|a| *a as usize)
            .ok_or(BtfError::Malformed(0))
    }

    fn name(&self, offset: u32) -> Result<&[u8], BtfError> {
        let start = self.strings.start + offset as usize;
        let table = self
            .data
            .get(start..self.strings.end)
            .ok_or(BtfError::Malformed(start))?;
        let len = table
            .iter()
            .position(|b| *b == 0)
            .ok_or(BtfError::Malformed(start))?;
        Ok(&table[..len])
    }
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand: a header, types and strings, as the kernel lays them out.
    struct Blob {
        types: Vec<u32>,
        strings: Vec<u8>,
    }

    impl Blob {
        fn new() -> Blob {
            Blob {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        fn ty(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, size: u32) {
            let name = if name.is_empty() { 0 } else { self.str(name) };
            let info = (kind << 24) | (u32::from(kind_flag) << 31) | vlen;
            self.types.extend([name, info, size]);
        }

        fn member(&mut self, name: &str, ty: u32, offset: u32) {
            let name = if name.is_empty() { 0 } else { self.str(name) };
            self.types.extend([name, ty, offset]);
        }

        fn build(&self) -> Vec<u8> {
            let types: Vec<u8> = self.types.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let mut out = Vec::new();
            out.extend(MAGIC.to_ne_bytes());
            out.extend([1u8, 0]);
            for w in [24, 0, types.len() as u32, types.len() as u32] {
                out.extend(w.to_ne_bytes());
            }
            out.extend((self.strings.len() as u32).to_ne_bytes());
            out.extend(types);
            out.extend(&self.strings);
            out
        }
    }

    fn sample() -> Btf {
        let mut b = Blob::new();
        b.ty("int", KIND_INT, false, 0, 4); // 1
        b.types.push(32);
        b.ty("inner", KIND_STRUCT, false, 2, 8); // 2
        b.member("a", 1, 0);
        b.member("b", 1, 32);
        b.ty("inner_t", KIND_TYPEDEF, false, 0, 2); // 3
        b.ty("", KIND_UNION, false, 1, 4); // 4
        b.member("x", 1, 0);
        b.ty("", KIND_CONST, false, 0, 3); // 5: const inner_t
        b.ty("outer", KIND_STRUCT, true, 4, 24); // 6: with bit fields
        b.member("flags", 1, (3 << 24) | 5);
        b.member("", 4, 32);
        b.member("in", 5, 64);
        b.member("last", 1, 128);
        b.ty("fn", KIND_FUNC_PROTO, false, 2, 1); // 7: skipped by its length
        b.types.extend([0, 1, 0, 1]);
        b.ty("after", KIND_STRUCT, false, 1, 4); // 8
        b.member("z", 1, 0);
        Btf::parse(b.build()).unwrap()
    }

    #[test]
    fn finds_members_through_anonymous_unions_typedefs_and_qualifiers() {
        let btf = sample();
        assert_eq!(btf.offset("outer", &["x"]).unwrap(), 4);
        assert_eq!(btf.offset("outer", &["in", "b"]).unwrap(), 12);
        assert_eq!(btf.offset("outer", &["last"]).unwrap(), 16);
        assert_eq!(btf.offset("after", &["z"]).unwrap(), 0);
    }

    #[test]
    fn says_what_is_missing() {
        let btf = sample();
        assert!(matches!(
            btf.offset("outer", &["in", "c"]),
            Err(BtfError::NoMember { member, .. }) if member == "c"
        ));
        assert!(matches!(
            btf.offset("nope", &["a"]),
            Err(BtfError::NoStruct(_))
        ));
        assert!(matches!(
            btf.offset("outer", &["flags"]),
            Err(BtfError::BitField(_))
        ));
    }

    #[test]
    fn reads_an_integer_only_at_the_width_asked() {
        let btf = sample();
        // `in` is a const typedef of a struct; `last` a 4-byte int.
        assert_eq!(btf.int_offset("outer", &["last"], 4).unwrap(), 16);
        assert!(matches!(
            btf.int_offset("outer", &["last"], 8),
            Err(BtfError::NotInt { bytes: 8, .. })
        ));
        assert!(matches!(
            btf.int_offset("outer", &["in"], 8),
            Err(BtfError::NotInt { .. })
        ));
    }

    /// The types `cgroup_offsets` reads, in the layout of 5.10 (tagged word, ancestor ids) or
    /// of 6.2 and later (cgroup pointer, ancestor pointers).
    fn cgroup_layout(modern: bool) -> Btf {
        let mut b = Blob::new();
        b.ty("u64", KIND_INT, false, 0, 8); // 1
        b.types.push(64);
        b.ty("sock_cgroup_data", KIND_STRUCT, false, 1, 16); // 2
        b.member(if modern { "cgroup" } else { "val" }, 1, 0);
        b.ty("sock", KIND_STRUCT, false, 2, 64); // 3
        b.member("sk_flags", 1, 0);
        b.member("sk_cgrp_data", 2, 8 * 40);
        b.ty("cgroup", KIND_STRUCT, false, 3, 512); // 4
        b.member("level", 1, 8 * 16);
        b.member("kn", 1, 8 * 24);
        b.member(
            if modern { "ancestors" } else { "ancestor_ids" },
            1,
            8 * 400,
        );
        b.ty("kernfs_node", KIND_STRUCT, false, 1, 128); // 5
        b.member("id", 1, 8 * 96);
        Btf::parse(b.build()).unwrap()
    }

    #[test]
    fn finds_the_cgroup_of_a_socket_in_both_layouts() {
        let old = cgroup_offsets(&cgroup_layout(false)).unwrap();
        let new = cgroup_offsets(&cgroup_layout(true)).unwrap();
        assert_eq!(
            (old.cgroup_kind, old.ancestors_are_pointers),
            (CGROUP_TAGGED, 0)
        );
        assert_eq!(
            (new.cgroup_kind, new.ancestors_are_pointers),
            (CGROUP_POINTER, 1)
        );
        for o in [old, new] {
            assert_eq!(
                (o.sk_cgroup, o.level, o.kn, o.ancestors, o.kn_id),
                (40, 16, 24, 400, 96)
            );
        }
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(matches!(Btf::parse(vec![0; 64]), Err(BtfError::BadMagic)));
        let mut data = sample().data;
        data.truncate(40);
        assert!(Btf::parse(data).is_err());
    }

    #[test]
    fn this_kernel_has_every_field_observer_reads() {
        let btf = vmlinux().unwrap();
        let o = sock_offsets(&btf).unwrap();
        // struct sock starts with sock_common, whose addresses, ports and family come first;
        // inet_sock's own fields come after struct sock.
        assert!(
            o.family < 64 && o.dport < 64 && o.num < 64 && o.saddr < 64,
            "{o:?}"
        );
        assert!(o.protocol > 64 && o.sport > o.protocol, "{o:?}");
        // tcp_sock's own fields come after inet_sock's.
        assert!(o.bytes_received > o.sport && o.srtt_us > o.sport, "{o:?}");
        assert!(
            o.err > 64 && o.err < o.sport && o.shutdown > 64 && o.shutdown < o.sport,
            "{o:?}"
        );
        let n = netns_offsets(&btf).unwrap();
        assert!(n.sk_net > 0 && n.net_inum > 0, "{n:?}");
        assert!(btf.has_tracepoint("inet_sock_set_state").unwrap());
        assert!(!btf.has_tracepoint("no_such_tracepoint").unwrap());
        // This kernel (6.18) has the layout of 5.15 and 6.2 on.
        let c = cgroup_offsets(&btf).unwrap();
        assert_eq!(
            (c.cgroup_kind, c.ancestors_are_pointers),
            (CGROUP_POINTER, 1),
            "{c:?}"
        );
        assert!(c.sk_cgroup > o.protocol && c.kn > 0 && c.kn_id > 0, "{c:?}");
        // A request socket begins with its sock_common (where the listener pointer is);
        // tcp_request_sock's own fields come after request_sock's.
        let r = request_offsets(&btf).unwrap();
        assert!(r.listener < r.child && r.child < r.synack, "{r:?}");
    }
}
