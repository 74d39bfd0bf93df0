//! When to sweep the watched sockets, and which of the sockets a sweep finds are dead (see
//! `observer_common::sweep` for why a sweep is needed and what it reads).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use observer_common::sweep::Doomed;

use crate::kernel::Kernel;

/// How often the kernel's count of lost transitions is looked at.
const CHECK: Duration = Duration::from_secs(1);
/// Sweeps when the kernel reports a lost transition, again a second later to confirm what the
/// first found, and at least every `period` (`--sweep-interval`), so that a kernel that does not
/// count its skipped runs (before 5.12) still gets its stale entries retired; retires the
/// confirmed dead. Runs until aborted.
pub async fn run(kernel: Arc<Mutex<Kernel>>, period: Duration) {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suspects: HashMap<u64, Doomed> = HashMap::new();
    let mut last_lost = None;
    let mut last_sweep: Option<Instant> = None;
    let mut warned = false;
    loop {
        tick.tick().await;
        let lost = kernel.lock().expect("kernel lock").health().lost;
        let due = lost != last_lost
            || !suspects.is_empty()
            || last_sweep.is_none_or(|t| t.elapsed() >= period);
        if !due {
            continue;
        }
        last_lost = lost;
        last_sweep = Some(Instant::now());
        let k = kernel.clone();
        let previous = std::mem::take(&mut suspects);
        // A sweep walks every watched socket: off the runtime's thread, so scrapes go on.
        let swept = tokio::task::spawn_blocking(move || {
            let mut k = k.lock().expect("kernel lock");
            let (dead, next) = confirm(&previous, k.sweep()?);
            if !dead.is_empty() {
                k.reap(&dead)?;
            }
            anyhow::Ok(next)
        })
        .await;
        match swept {
            Ok(Ok(next)) => suspects = next,
            Ok(Err(e)) if !warned => {
                warned = true;
                eprintln!(
                    "observer: warning: sweeping for connections whose close was not seen failed \
                     ({e:#}); their count waits for their address to be reused"
                );
            }
            _ => {}
        }
    }
}

/// Splits what a sweep found into the sockets found dead already by the previous sweep, with an
/// unchanged entry (dead: retire them), and the rest (suspects, for the next sweep to confirm).
/// A socket caught between its tracepoint and the store of its new state is not found twice.
pub fn confirm(
    previous: &HashMap<u64, Doomed>,
    found: Vec<Doomed>,
) -> (Vec<Doomed>, HashMap<u64, Doomed>) {
    let mut dead = Vec::new();
    let mut suspects = HashMap::new();
    for d in found {
        if previous.get(&d.sk) == Some(&d) {
            dead.push(d);
        } else {
            suspects.insert(d.sk, d);
        }
    }
    (dead, suspects)
}

#[cfg(test)]
mod tests {
    use observer_common::{DIR_OUTBOUND, conn::Conn, record::Ends, tcp};

    use super::*;

    fn doomed(sk: u64, state: u8) -> Doomed {
        Doomed {
            sk,
            conn: Conn::new(DIR_OUTBOUND, 443, state, true),
            ends: Ends {
                netns: 1,
                family: 2,
                sport: 40_000,
                dport: 443,
                _pad: [0; 6],
                saddr: [0; 16],
                daddr: [0; 16],
            },
        }
    }

    #[test]
    fn a_socket_is_dead_when_two_sweeps_find_it_unchanged() {
        let (dead, suspects) = confirm(&HashMap::new(), vec![doomed(1, tcp::ESTABLISHED)]);
        assert!(dead.is_empty());
        assert_eq!(suspects.len(), 1);
        let (dead, suspects) = confirm(&suspects, vec![doomed(1, tcp::ESTABLISHED)]);
        assert_eq!(dead, vec![doomed(1, tcp::ESTABLISHED)]);
        assert!(suspects.is_empty());
    }

    #[test]
    fn an_entry_that_changed_between_sweeps_starts_over() {
        let (_, suspects) = confirm(&HashMap::new(), vec![doomed(1, tcp::SYN_SENT)]);
        let (dead, suspects) = confirm(&suspects, vec![doomed(1, tcp::ESTABLISHED)]);
        assert!(dead.is_empty());
        assert_eq!(suspects[&1], doomed(1, tcp::ESTABLISHED));
    }

    #[test]
    fn a_socket_found_once_is_forgotten_when_the_next_sweep_does_not_find_it() {
        let (_, suspects) = confirm(&HashMap::new(), vec![doomed(1, tcp::SYN_SENT)]);
        let (dead, suspects) = confirm(&suspects, vec![doomed(2, tcp::FIN_WAIT1)]);
        assert!(dead.is_empty());
        assert_eq!(suspects.keys().copied().collect::<Vec<_>>(), vec![2]);
    }
}
