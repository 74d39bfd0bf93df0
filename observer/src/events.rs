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

use crate::output::{Clock, Event, Format};

/// Lines in flight between the ring reader and the stdout writer, in batches.
const BATCHES_IN_FLIGHT: usize = 64;

/// How often the reader collects records that came without a wakeup: the kernel program wakes
/// it only when the ring fills up (a wakeup per record costs the server microseconds), so this is
/// the longest an event waits before it is printed.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Streams events until stdout is closed (then returns Ok) or the ring fails.
pub async fn stream(ring: RingBuf<MapData>, format: Format, clock: Clock) -> Result<()> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(BATCHES_IN_FLIGHT);
    let writer = std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || write_stdout(rx))
        .context("starting the stdout writer")?;
    // SAFETY: the ring owns its fd, which stays open and the same until the AsyncFd drops.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the event ring buffer")?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => guard?.clear_ready(),
            _ = tick.tick() => {}
        }
        let mut batch = Vec::new();
        {
            let ring = ring.get_mut();
            while let Some(item) = ring.next() {
                if item.len() < Record::SIZE {
                    continue;
                }
                // SAFETY: the program writes whole `Record`s; read_unaligned copies one out.
                let record = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Record) };
                if let Some(event) = Event::from_record(&record, &clock) {
                    batch.extend_from_slice(event.format(format).as_bytes());
                    batch.push(b'\n');
                }
            }
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            // The writer is gone: stdout was closed.
            let _ = writer.join();
            return Ok(());
        }
    }
}

fn write_stdout(mut rx: mpsc::Receiver<Vec<u8>>) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while let Some(batch) = rx.blocking_recv() {
        if out.write_all(&batch).and_then(|_| out.flush()).is_err() {
            return; // EPIPE: nobody reads any more
        }
    }
}
