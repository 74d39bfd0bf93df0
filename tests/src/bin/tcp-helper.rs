//! A separate process for the integration tests: a TCP server or client whose PID, cgroup and
//! network namespace the tests control. Commands come on stdin, one per line, so a test decides
//! when each socket appears; every reply is one line on stdout.
//!
//!   listen ADDR          listen on ADDR (port 0: any), reply `listening PORT`; connections are
//!                        held until the client closes
//!   connect ADDR N       open and close N connections one after the other, reply `connected OK FAILED`
//!   hold ADDR N          open N connections and keep them, reply `holding N`
//!   release              close the held connections, reply `released N`
//!   exit                 exit 0 (as does the end of stdin)
use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut held: Vec<TcpStream> = Vec::new();
    for line in stdin.lock().lines().map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["listen", addr] => {
                let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                let port = l.local_addr().unwrap().port();
                std::thread::spawn(move || serve(l));
                writeln!(out, "listening {port}").unwrap();
            }
            ["connect", addr, n] => {
                let addr: SocketAddr = addr.parse().expect("address");
                let (mut ok, mut failed) = (0, 0);
                for _ in 0..n.parse::<usize>().expect("count") {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                        Ok(s) => {
                            ok += 1;
                            drop(s);
                        }
                        Err(_) => failed += 1,
                    }
                }
                writeln!(out, "connected {ok} {failed}").unwrap();
            }
            ["hold", addr, n] => {
                for _ in 0..n.parse::<usize>().expect("count") {
                    held.push(
                        TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}")),
                    );
                }
                writeln!(out, "holding {}", held.len()).unwrap();
            }
            ["release"] => {
                writeln!(out, "released {}", held.len()).unwrap();
                held.clear();
            }
            ["exit"] => return,
            _ => writeln!(out, "error unknown command: {line}").unwrap(),
        }
        out.flush().unwrap();
    }
}

fn serve(l: TcpListener) {
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = s;
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
}
