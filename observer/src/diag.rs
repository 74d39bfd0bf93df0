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
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
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
    Lister::open()?.dump(states)
}

/// The same in the network namespace at `ns` (a /proc/PID/ns/net path), from a helper thread
/// that enters it, so that the rest of observer stays where it is.
pub fn dump_in(ns: &Path, states: u32) -> Result<Vec<DiagSocket>> {
    Lister::open_in(ns)?.dump(states)
}

fn dump_family(family: u8, states: u32) -> Result<Vec<DiagSocket>> {
    let mut socket = open_socket()?;
    let mut out = Vec::new();
    request(&mut socket, family, states, false, |r| {
        out.push(socket_of(r))
    })?;
    Ok(out)
}

fn open_socket() -> Result<Socket> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn socket_of(r: &InetResponse) -> DiagSocket {
    let h = &r.header;
    DiagSocket {
        state: h.state,
        sport: h.socket_id.source_port,
        dport: h.socket_id.destination_port,
        saddr: h.socket_id.source_address,
        daddr: h.socket_id.destination_address,
        inode: h.inode,
    }
}

/// A socket's two queue figures in a dump. For a listener: `recv` is the connections waiting
/// for accept(), `send` its backlog (what `ss -lnt` shows as Recv-Q and Send-Q).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queues {
    pub recv: u32,
    pub send: u32,
}

/// What the kernel keeps of a connection's traffic (its `struct tcp_info`, what `ss -i` shows
/// as lastsnd and lastrcv): milliseconds since it last sent data, and since it last received
/// data. The handshake counts as both, so a connection that never moved data is as old as it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub last_send_ms: u32,
    pub last_recv_ms: u32,
}

/// Offsets of `tcpi_last_data_sent` and `tcpi_last_data_recv` in `struct tcp_info`
/// (include/uapi/linux/tcp.h): the same on every kernel, where the struct only grows at its end.
const LAST_DATA_SENT: usize = 44;
const LAST_DATA_RECV: usize = 52;

impl Activity {
    /// From the raw `INET_DIAG_INFO` attribute; None when it is too short to hold them.
    pub fn parse(tcp_info: &[u8]) -> Option<Activity> {
        let u32_at = |at: usize| {
            let b = tcp_info.get(at..at + 4)?;
            Some(u32::from_ne_bytes(b.try_into().ok()?))
        };
        Some(Activity {
            last_send_ms: u32_at(LAST_DATA_SENT)?,
            last_recv_ms: u32_at(LAST_DATA_RECV)?,
        })
    }
}

/// One connection of a dump with its traffic: the socket, its cookie (the kernel's identity
/// for it, never reused while the system runs), and its `Activity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub socket: DiagSocket,
    pub cookie: u64,
    pub activity: Option<Activity>,
}

/// A sock_diag socket opened in one network namespace and kept: a netlink socket lists the
/// namespace it was made in, so observer can list a container's connections for its whole
/// life, long after it gave up the capability to enter namespaces (see `privilege`).
pub struct Lister {
    socket: Socket,
}

impl Lister {
    /// In the calling thread's network namespace.
    pub fn open() -> Result<Lister> {
        Ok(Lister {
            socket: open_socket()?,
        })
    }

    /// In the network namespace at `ns` (a /proc/PID/ns/net path), from a thread that enters it.
    pub fn open_in(ns: &Path) -> Result<Lister> {
        let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a valid namespace fd; only this short-lived thread moves.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    bail!("entering network namespace {}: {e}", ns.display());
                }
                Lister::open()
            })
            .join()
            .map_err(|_| anyhow!("the sock_diag thread panicked"))?
        })
    }

    /// The TCP sockets (IPv4 and IPv6) of the namespace in the given states.
    pub fn dump(&mut self, states: u32) -> Result<Vec<DiagSocket>> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            request(&mut self.socket, family, states, false, |r| {
                out.push(socket_of(r))
            })?;
        }
        Ok(out)
    }

    /// The TCP sockets (IPv4 and IPv6) of the namespace in the given states, each handed to
    /// `each` with its queues as the kernel reports them (`idiag_rqueue`, `idiag_wqueue`: for a
    /// listener, the connections waiting for accept() and the backlog), without collecting them.
    pub fn each(&mut self, states: u32, mut each: impl FnMut(&DiagSocket, Queues)) -> Result<()> {
        for family in [AF_INET, AF_INET6] {
            request(&mut self.socket, family, states, false, |r| {
                let queues = Queues {
                    recv: r.header.recv_queue,
                    send: r.header.send_queue,
                };
                each(&socket_of(r), queues)
            })?;
        }
        Ok(())
    }

    /// Every established TCP connection (IPv4 and IPv6) of the namespace, with its traffic.
    pub fn established(&mut self) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            request(
                &mut self.socket,
                family,
                state_mask(&[observer_common::tcp::ESTABLISHED]),
                true,
                |r| {
                    let activity = r.nlas.iter().find_map(|n| match n {
                        Nla::TcpInfo(raw) => Activity::parse(raw),
                        _ => None,
                    });
                    out.push(Listed {
                        socket: socket_of(r),
                        cookie: u64::from_ne_bytes(r.header.socket_id.cookie),
                        activity,
                    });
                },
            )?;
        }
        Ok(out)
    }
}

/// Sends one dump request on `socket` and hands each socket of the answer to `each`, until the
/// kernel says it is done.
fn request(
    socket: &mut Socket,
    family: u8,
    states: u32,
    info: bool,
    mut each: impl FnMut(&InetResponse),
) -> Result<()> {
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
            extensions: if info {
                ExtensionFlags::INFO
            } else {
                ExtensionFlags::empty()
            },
            // Retained as given: the crate names no NEW_SYN_RECV bit, which the kernel takes
            // (request sockets, see `census`).
            states: StateFlags::from_bits_retain(states),
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
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => each(&r),
                NetlinkPayload::Done(_) => return Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_is_read_at_the_uapi_offsets() {
        let mut info = vec![0u8; 104];
        info[LAST_DATA_SENT..LAST_DATA_SENT + 4].copy_from_slice(&1234u32.to_ne_bytes());
        info[48..52].copy_from_slice(&7u32.to_ne_bytes());
        info[LAST_DATA_RECV..LAST_DATA_RECV + 4].copy_from_slice(&5678u32.to_ne_bytes());
        assert_eq!(
            Activity::parse(&info),
            Some(Activity {
                last_send_ms: 1234,
                last_recv_ms: 5678
            })
        );
        assert_eq!(Activity::parse(&info[..55]), None);
    }
}
