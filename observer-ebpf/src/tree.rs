//! `--pid` covers a process tree: a child a target forks (a new process, not a thread) becomes
//! a target, and leaves the filter when it exits, so that a later process given its PID is not
//! one.
use crate::maps::{PIDS, TASK_TGID_OFFSET, count};
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_ebpf::programs::BtfTracePointContext;
use observer_common::counters;
use observer_common::filter::PID_DESCENDANT;

/// `sched_process_fork(parent, child)`, run by the parent.
#[inline(always)]
pub(crate) fn forked(ctx: &BtfTracePointContext) -> Option<()> {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a plain read of a map value.
    unsafe { PIDS.get(parent) }?;
    let child = ctx.arg::<*const u8>(1);
    // SAFETY: a load through the tracepoint's typed `struct task_struct *`, at the offset of
    // its `tgid` from the kernel's BTF (read-only data: a constant to the verifier).
    let tgid = unsafe {
        core::ptr::read_volatile(child.add(TASK_TGID_OFFSET.load() as usize) as *const i32)
    } as u32;
    if tgid == parent {
        return None; // a thread of the same process
    }
    if let Err(e) = PIDS.insert(tgid, PID_DESCENDANT, 0) {
        count(counters::update_failure(e.into(), counters::PIDS_FULL));
    }
    None
}

/// `sched_process_exit`, run by the exiting task: a descendant's PID leaves the filter with its
/// main thread (a `--pid` target's own exit is the daemon's to tell, through its pidfd).
#[inline(always)]
pub(crate) fn exited() -> Option<()> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid != id as u32 {
        return None;
    }
    // SAFETY: a plain read of a map value.
    if unsafe { PIDS.get(tgid) } == Some(&PID_DESCENDANT) {
        let _ = PIDS.remove(tgid);
    }
    None
}
