//! The event stream: records from the kernel's ring buffer, read on tokio when the ring's fd is
//! readable or on a 50 ms tick (the kernel wakes the reader only when the ring fills up), turned
//! into lines, and written to stdout by a thread of its own so
//! that a slow or stuck reader of stdout never stalls the metrics. When stdout falls behind, the
//! reader stops draining the ring; the kernel then drops records and counts them
//! (`observer_events_dropped_total`). Counts never depend on this path.
use std::io::Write as _;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use observer_common::record::Record;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    endpoints::Endpoints,
    output::{Clock, Event, Format},
};

/// Lines in flight between the ring reader and the stdout writer, in batches.
const BATCHES_IN_FLIGHT: usize = 64;

/// How often the reader collects records that came without a wakeup: the kernel program wakes
/// it only when the ring fills up (a wakeup per record costs the server microseconds), so this is
/// the longest an event waits before it is printed.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Lines of the events the daemon makes itself (`idle`, `limit`) waiting for the stream; past
/// that their makers try again at their next round (see `idle`, `limit`).
pub const DAEMON_LINES: usize = 4096;

/// Streams events until stdout is closed (then returns Ok), or writing to it or reading the
/// ring fails. `daemon` brings the lines of the events the daemon makes itself, already
/// formatted, into the same stream. `max_connections` bounds what is kept of the open
/// connections (see `Endpoints`).
pub async fn stream(
    ring: RingBuf<MapData>,
    format: Format,
    clock: Clock,
    mut daemon: mpsc::Receiver<String>,
    max_connections: u32,
) -> Result<()> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(BATCHES_IN_FLIGHT);
    // Either thread says when stdout is done with: the writer when a write failed (EPIPE or
    // worse), the watcher when the reader went away, which on a quiet port no write would show.
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<Ending>();
    let writer_ended = ended_tx.clone();
    let writer = std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || {
            let result = write_stdout(rx);
            let _ = writer_ended.send(Ending::Writer);
            result
        })
        .context("starting the stdout writer")?;
    std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || {
            if wait_for_hangup(libc::STDOUT_FILENO) {
                let _ = ended_tx.send(Ending::Hangup);
            }
        })
        .context("starting the stdout watcher")?;
    // SAFETY: the ring owns its fd, which stays open and the same until the AsyncFd drops.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the event ring buffer")?;
    let mut endpoints = Endpoints::new(max_connections);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            guard = ring.readable_mut() => guard?.clear_ready(),
            _ = tick.tick() => {}
            Some(line) = daemon.recv() => {
                batch.extend_from_slice(line.as_bytes());
                batch.push(b'\n');
            }
            Some(why) = ended.recv() => return match why {
                Ending::Hangup => Ok(()),
                Ending::Writer => finish(writer),
            },
        }
        while let Ok(line) = daemon.try_recv() {
            batch.extend_from_slice(line.as_bytes());
            batch.push(b'\n');
        }
        {
            let ring = ring.get_mut();
            while let Some(item) = ring.next() {
                if item.len() < Record::SIZE {
                    continue;
                }
                // SAFETY: the program writes whole `Record`s; read_unaligned copies one out.
                let mut record =
                    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Record) };
                endpoints.complete(&mut record);
                if let Some(event) = Event::from_record(&record, &clock) {
                    batch.extend_from_slice(event.format(format).as_bytes());
                    batch.push(b'\n');
                }
            }
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return finish(writer);
        }
    }
}

/// Why the stream ends.
enum Ending {
    /// The reader of stdout went away.
    Hangup,
    /// The writer stopped: stdout was closed, or could not be written.
    Writer,
}

/// The writer's verdict: a reader gone is a clean end, a failed write an error.
fn finish(writer: std::thread::JoinHandle<std::io::Result<()>>) -> Result<()> {
    match writer.join() {
        Ok(Err(e)) => Err(e).context("writing events to stdout"),
        _ => Ok(()),
    }
}

/// Writes the batches until the channel closes. EPIPE means the reader is gone, the normal end
/// of `observer --events json | head`; any other error (a full disk) is one to report.
fn write_stdout(mut rx: mpsc::Receiver<Vec<u8>>) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(batch) = rx.blocking_recv() {
        match out.write_all(&batch).and_then(|_| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Blocks until `fd` reports an error or a hangup (a pipe whose reader closed it), and returns
/// true then; false if it cannot be watched. poll() reports those two whatever it is asked for,
/// so asking for nothing waits for them alone: a file or a terminal never returns.
fn wait_for_hangup(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return true;
        }
        if n > 0 && p.revents & libc::POLLNVAL != 0 {
            return false;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}
