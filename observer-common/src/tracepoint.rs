//! The tracepoint observer attaches to, `sock:inet_sock_set_state`, and the constants of its
//! arguments. The programs attach by its BTF type (`btf_trace_inet_sock_set_state`): they get
//! the `struct sock *` itself and read what the tracepoint's record would hold from it.

pub const CATEGORY: &str = "sock";
pub const NAME: &str = "inet_sock_set_state";

/// IPPROTO_TCP: the tracepoint also fires for SCTP and MPTCP sockets.
pub const IPPROTO_TCP: u16 = 6;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
