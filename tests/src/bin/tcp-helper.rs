//! A separate process for the integration tests: a TCP server or client whose PID, cgroup and
//! network namespace the tests control. Commands come on stdin, one per line, so a test decides
//! when each socket appears; every reply is one line on stdout.
//!
//!   listen ADDR [reuseport]
//!                        listen on ADDR (port 0: any), with SO_REUSEPORT if asked, reply
//!                        `listening PORT`; connections are held until the client closes
//!   unlisten             close the listening sockets, reply `unlistened N`
//!   accepted             the client ports of the connections accepted so far, reply
//!                        `accepted PORT...`
//!   connect ADDR N       open and close N connections one after the other, reply `connected OK FAILED`
//!   hold ADDR N [SRC]    open N connections (from address SRC if given) and keep them, reply
//!                        `holding N`, all it holds (fewer if a connect() failed: it says why
//!                        on stderr)
//!   release              close the held connections, reply `released N`
//!   spawn                start a child tcp-helper (a new process), reply `spawned INDEX PID`
//!   child INDEX CMD...   send CMD to child INDEX, reply with its reply
//!   reap INDEX           stop child INDEX and wait for it, reply `reaped PID`
//!   exit                 exit 0 (as does the end of stdin)
use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
};

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut held: Vec<TcpStream> = Vec::new();
    let accepted: Arc<Mutex<Vec<u16>>> = Arc::default();
    // Shut down by `unlisten`, which ends their accept threads.
    let mut listening: Vec<TcpListener> = Vec::new();
    let mut children: Vec<(
        std::process::Child,
        std::io::BufReader<std::process::ChildStdout>,
    )> = Vec::new();
    for line in stdin.lock().lines().map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["listen", addr, options @ ..] => {
                let addr: SocketAddr = addr.parse().expect("address");
                let l = if options == ["reuseport"] {
                    observer_tests::net::listen_reuseport(addr)
                } else {
                    TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
                };
                let port = l.local_addr().unwrap().port();
                let (l2, log) = (l.try_clone().unwrap(), accepted.clone());
                std::thread::spawn(move || serve(l2, log));
                listening.push(l);
                writeln!(out, "listening {port}").unwrap();
            }
            ["unlisten"] => {
                let n = listening.len();
                for l in listening.drain(..) {
                    // SAFETY: shutdown on a listening socket this process owns; it wakes the
                    // accept thread, whose accept() then fails and ends it.
                    unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
                }
                writeln!(out, "unlistened {n}").unwrap();
            }
            ["accepted"] => {
                let ports = accepted.lock().unwrap();
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                writeln!(out, "accepted {}", list.join(" ")).unwrap();
            }
            ["connect", addr, n] => {
                let addr: SocketAddr = addr.parse().expect("address");
                let (ok, failed) = observer_tests::net::connect_n(addr, n.parse().expect("count"));
                writeln!(out, "connected {ok} {failed}").unwrap();
            }
            ["hold", addr, n, from @ ..] => {
                let addr: SocketAddr = addr.parse().expect("address");
                let from: Option<std::net::IpAddr> = from.first().map(|a| a.parse().expect("SRC"));
                let n: usize = n.parse().expect("count");
                let start = held.len();
                while held.len() - start < n {
                    let connected = match from {
                        Some(src) => {
                            observer_tests::net::try_connect_from(SocketAddr::new(src, 0), addr)
                        }
                        None => {
                            TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
                        }
                    };
                    match connected {
                        Ok(s) => held.push(s),
                        Err(e) => {
                            eprintln!("tcp-helper: hold {addr}: stopped at {}: {e}", held.len());
                            break;
                        }
                    }
                }
                writeln!(out, "holding {}", held.len()).unwrap();
            }
            ["release"] => {
                writeln!(out, "released {}", held.len()).unwrap();
                held.clear();
            }
            ["spawn"] => {
                let mut c = std::process::Command::new(std::env::current_exe().unwrap())
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawning a child");
                let out_c = std::io::BufReader::new(c.stdout.take().unwrap());
                writeln!(out, "spawned {} {}", children.len(), c.id()).unwrap();
                children.push((c, out_c));
            }
            ["child", i, cmd @ ..] => {
                let (c, r) = &mut children[i.parse::<usize>().expect("index")];
                let stdin = c.stdin.as_mut().unwrap();
                writeln!(stdin, "{}", cmd.join(" ")).unwrap();
                stdin.flush().unwrap();
                let mut reply = String::new();
                r.read_line(&mut reply).unwrap();
                write!(out, "{reply}").unwrap();
            }
            ["reap", i] => {
                let (c, _) = &mut children[i.parse::<usize>().expect("index")];
                let _ = c.kill();
                let _ = c.wait();
                writeln!(out, "reaped {}", c.id()).unwrap();
            }
            ["exit"] => return,
            _ => writeln!(out, "error unknown command: {line}").unwrap(),
        }
        out.flush().unwrap();
    }
}

/// Accepts until the listener is shut down, logging each client's port.
fn serve(l: TcpListener, log: Arc<Mutex<Vec<u16>>>) {
    for s in l.incoming() {
        let Ok(s) = s else { return };
        if let Ok(peer) = s.peer_addr() {
            log.lock().unwrap().push(peer.port());
        }
        std::thread::spawn(move || {
            let mut s = s;
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
}
