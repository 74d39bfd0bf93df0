//! TCP sockets as the kernel lists them through netlink sock_diag (what `ss` uses), in the
//! calling thread's network namespace or in another one.
use std::{net::IpAddr, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// One TCP socket of a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: u8,
    pub sport: u16,
    pub dport: u16,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    /// The socket's inode (as in /proc/PID/fd); 0 for a socket no process holds yet.
    pub inode: u32,
}

/// What the kernel's ENOENT for a dump means: it has no TCP handler for sock_diag, and could not
/// load one itself (it asks modprobe for the module on the first dump).
#[derive(Debug, thiserror::Error)]
#[error(
    "the kernel cannot list TCP sockets through sock_diag (what `ss` uses): its modules \
     inet_diag and tcp_diag are not loaded and it could not load them; `modprobe tcp_diag` \
     loads them (observer needs them to count the connections open at start)"
)]
pub struct NoTcpDiag;

/// Whether the kernel lists TCP sockets through sock_diag: a dump for no state at all, which
/// answers at once and, like any dump, loads the modules when the kernel can.
pub fn tcp_available() -> Result<bool> {
    match dump_family(AF_INET, 0) {
        Ok(_) => Ok(true),
        Err(e) if e.is::<NoTcpDiag>() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Bit mask of TCP states (bit n: state n), as sock_diag takes it.
pub fn state_mask(states: &[u8]) -> u32 {
    states.iter().fold(0, |m, s| m | (1 << s))
}

/// Dumps the TCP sockets (IPv4 and IPv6) in the given states, in the current network namespace.
pub fn dump(states: u32) -> Result<Vec<DiagSocket>> {
    let mut out = dump_family(AF_INET, states)?;
    out.extend(dump_family(AF_INET6, states)?);
    Ok(out)
}

/// The same in the network namespace at `ns` (a /proc/PID/ns/net path), from a helper thread
/// that enters it, so that the rest of observer stays where it is.
pub fn dump_in(ns: &Path, states: u32) -> Result<Vec<DiagSocket>> {
    let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a valid namespace fd; only this short-lived thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                bail!("entering network namespace {}: {e}", ns.display());
            }
            dump(states)
        })
        .join()
        .map_err(|_| anyhow!("the sock_diag thread panicked"))?
    })
}

fn dump_family(family: u8, states: u32) -> Result<Vec<DiagSocket>> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_truncate(states),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("sending the sock_diag request")?;

    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket
            .recv(&mut &mut rx[..], 0)
            .context("reading the sock_diag dump")?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..n])
                .map_err(|e| anyhow!("malformed sock_diag message: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    out.push(DiagSocket {
                        state: h.state,
                        sport: h.socket_id.source_port,
                        dport: h.socket_id.destination_port,
                        saddr: h.socket_id.source_address,
                        daddr: h.socket_id.destination_address,
                        inode: h.inode,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => {
                    return Err(NoTcpDiag.into());
                }
                NetlinkPayload::Error(e) => bail!("sock_diag dump failed: {}", e.to_io()),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}
