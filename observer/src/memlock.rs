//! RLIMIT_MEMLOCK. Before Linux 5.11 the kernel charges every BPF map and program to the locked
//! memory of the user that creates it, held to that user's RLIMIT_MEMLOCK (64 KiB by default
//! before 5.16), far below observer's maps (about 100 MiB); from 5.11 it charges them to the
//! memory cgroup, and the limit does not matter. observer probes which one this kernel does (a
//! map created under a limit of 0), and where the limit counts it lifts it for start-up and puts
//! it back once everything is loaded: nothing is created after that. Lifting a hard limit needs
//! CAP_SYS_RESOURCE; a hard limit that is already unlimited (systemd's `LimitMEMLOCK=infinity`)
//! needs nothing. The probe is the shell (`probe`, `lift`); what its results mean is plain data,
//! unit-tested.
use anyhow::{Context as _, Result};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What the kernel charges BPF maps and programs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// RLIMIT_MEMLOCK of the user (before 5.11).
    Memlock,
    /// The memory cgroup (5.11 and later).
    Cgroup,
}

/// What start-up must do about the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: not charged, or no limit.
    Keep,
    /// Raise the soft limit to the hard one, which is unlimited: no capability needed.
    RaiseSoft,
    /// Lift both limits: needs CAP_SYS_RESOURCE.
    LiftHard,
}

/// What to do under `charge` with the limit `now` (None: unlimited, as rustix says).
pub fn plan(charge: Charge, now: &Rlimit) -> Plan {
    match (charge, now.current, now.maximum) {
        (Charge::Cgroup, _, _) | (Charge::Memlock, None, _) => Plan::Keep,
        (Charge::Memlock, Some(_), None) => Plan::RaiseSoft,
        (Charge::Memlock, Some(_), Some(_)) => Plan::LiftHard,
    }
}

/// What the probe's two map creations mean: `at_zero` under a soft limit of 0, `as_is` under
/// the limit observer was given. Refused at 0 but created as is: the limit is charged. Created
/// at 0: it is not. Refused both times: the probe tells nothing (no CAP_BPF, or the user's
/// charge is over its limit already), and the release decides.
pub fn charge_of(at_zero: bool, as_is: bool, release: &str) -> Charge {
    match (at_zero, as_is) {
        (true, _) => Charge::Cgroup,
        (false, true) => Charge::Memlock,
        (false, false) if before_5_11(release) => Charge::Memlock,
        (false, false) => Charge::Cgroup,
    }
}

/// Whether a release (`5.10.0-46-amd64`) is older than 5.11, which moved the charge to the
/// memory cgroup. Unreadable: no.
fn before_5_11(release: &str) -> bool {
    let mut v = release
        .split(['.', '-', '+'])
        .map(|n| n.parse::<u32>().ok());
    match (v.next().flatten(), v.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < (5, 11),
        _ => false,
    }
}

/// Probes this kernel: a one-page array map under a soft limit of 0, then under the limit as it
/// was (which is put back). Raw bpf(2): aya's map creation lifts the limit itself on EPERM
/// before 5.11, which would blur the answer.
pub fn probe() -> Result<Charge> {
    let before = getrlimit(Resource::Memlock);
    setrlimit(
        Resource::Memlock,
        Rlimit {
            current: Some(0),
            maximum: before.maximum,
        },
    )
    .context(
        "lowering RLIMIT_MEMLOCK for a moment, to probe what the kernel charges BPF maps to",
    )?;
    let at_zero = map_created();
    setrlimit(Resource::Memlock, before).context("restoring RLIMIT_MEMLOCK")?;
    let as_is = at_zero || map_created();
    Ok(charge_of(at_zero, as_is, &crate::features::release()))
}

/// What this process must do about its limit on this kernel.
pub fn plan_here() -> Result<Plan> {
    Ok(plan(probe()?, &getrlimit(Resource::Memlock)))
}

/// Whether the kernel creates a small array map (closed at once) for this process.
fn map_created() -> bool {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // The head of union bpf_attr for BPF_MAP_CREATE: type, key size, value size, entries.
    let attr: [u32; 4] = [BPF_MAP_TYPE_ARRAY, 4, 8, 1];
    // SAFETY: attr is valid for reads of the size passed; the kernel does not write to it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

/// The limit as it was before `lift`, to put back with `restore`.
#[must_use = "the limit is put back with `restore` once everything is loaded"]
pub struct Lifted(Option<Rlimit>);

/// Carries out `plan`: the limit unlimited (as far as it needs to be) until `restore`.
pub fn lift(plan: Plan) -> Result<Lifted> {
    let before = getrlimit(Resource::Memlock);
    let new = match plan {
        Plan::Keep => return Ok(Lifted(None)),
        Plan::RaiseSoft => Rlimit {
            current: None,
            maximum: before.maximum,
        },
        Plan::LiftHard => Rlimit {
            current: None,
            maximum: None,
        },
    };
    setrlimit(Resource::Memlock, new)
        .context("lifting RLIMIT_MEMLOCK, which this kernel charges BPF maps to")?;
    Ok(Lifted(Some(before)))
}

impl Lifted {
    /// Puts the limit back (lowering needs no capability).
    pub fn restore(self) -> Result<()> {
        if let Some(before) = self.0 {
            setrlimit(Resource::Memlock, before).context("putting RLIMIT_MEMLOCK back")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(current: Option<u64>, maximum: Option<u64>) -> Rlimit {
        Rlimit { current, maximum }
    }

    #[test]
    fn only_a_charged_limit_is_lifted_and_only_a_finite_hard_one_needs_a_capability() {
        let host = limit(Some(65536), Some(65536));
        assert_eq!(plan(Charge::Cgroup, &host), Plan::Keep);
        assert_eq!(plan(Charge::Memlock, &host), Plan::LiftHard);
        assert_eq!(
            plan(Charge::Memlock, &limit(Some(65536), None)),
            Plan::RaiseSoft
        );
        assert_eq!(plan(Charge::Memlock, &limit(None, None)), Plan::Keep);
    }

    #[test]
    fn the_probe_decides_and_the_release_only_when_it_cannot() {
        assert_eq!(charge_of(true, true, "5.10.0-46-amd64"), Charge::Cgroup);
        assert_eq!(charge_of(false, true, "6.18.0"), Charge::Memlock);
        assert_eq!(charge_of(false, false, "5.10.0-46-amd64"), Charge::Memlock);
        assert_eq!(charge_of(false, false, "5.11.0"), Charge::Cgroup);
        assert_eq!(
            charge_of(false, false, "6.12.95+deb12-amd64"),
            Charge::Cgroup
        );
        assert_eq!(charge_of(false, false, "unknown release"), Charge::Cgroup);
        assert!(before_5_11("4.19.0-27-amd64"));
    }
}
