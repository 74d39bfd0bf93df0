//! A BPF iterator over one map's elements (`iter/bpf_map_elem`, Linux 5.9): each run walks the
//! map once in the kernel and returns what the program wrote out.
//!
//! aya 0.14 loads such a program but can attach an iterator only to a target without
//! parameters; a map-element iterator needs the map's fd at link creation. So the link and each
//! run are made here with the two `bpf()` commands that aya does not expose with that argument.
use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};

/// `enum bpf_cmd`.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `enum bpf_attach_type`.
const BPF_TRACE_ITER: u32 = 28;

/// The `link_create` member of `union bpf_attr`, up to the iterator's info.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    /// Pointer to a `union bpf_iter_link_info`.
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// The `iter_create` member of `union bpf_attr`.
#[repr(C)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

/// An iterator program linked to a map: dropping it detaches it.
pub struct MapIterator {
    link: OwnedFd,
}

impl MapIterator {
    /// Links the loaded iterator program `program` to the map `map`.
    pub fn attach(program: BorrowedFd<'_>, map: BorrowedFd<'_>) -> Result<MapIterator> {
        // `union bpf_iter_link_info`: its `map.map_fd`, the only member a map iterator reads.
        let map_fd = map.as_raw_fd() as u32;
        let attr = LinkCreate {
            prog_fd: program.as_raw_fd() as u32,
            attach_type: BPF_TRACE_ITER,
            iter_info: &map_fd as *const u32 as u64,
            iter_info_len: size_of::<u32>() as u32,
            ..Default::default()
        };
        let link = bpf(BPF_LINK_CREATE, &attr).context("linking an iterator to its map")?;
        Ok(MapIterator { link })
    }

    /// Runs the iterator once over the whole map and returns what it wrote.
    pub fn run(&self) -> Result<Vec<u8>> {
        let attr = IterCreate {
            link_fd: self.link.as_raw_fd() as u32,
            flags: 0,
        };
        let fd = bpf(BPF_ITER_CREATE, &attr).context("starting an iterator run")?;
        let mut out = Vec::new();
        File::from(fd)
            .read_to_end(&mut out)
            .context("reading an iterator run")?;
        Ok(out)
    }
}

/// The `bpf()` system call for a command that returns a new fd.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a live `bpf_attr` prefix of its own size, which the kernel reads only;
    // the pointers inside it point to values that outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
