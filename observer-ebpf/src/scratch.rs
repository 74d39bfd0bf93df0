//! Per-CPU scratch: the depth of each program's runs, a word per nesting level, and the
//! main program's notes for the backup (see the crate's doc).

pub(crate) const RECENT_LEN: usize = 8;
/// Address words per program: one per nesting level. 5.10 nests a program in itself: a
/// softirq's transition in a process's run, two levels; TCP changes state in no other context.
pub(crate) const LEVELS: usize = 4;
pub(crate) const MAIN: usize = 0;
pub(crate) const BACKUP: usize = 1;

/// Each field is written by one program (the notes: put by the main one, cleared by the backup
/// for the transition it runs for). The kernel never runs a program
/// twice at once on a CPU, except 5.10, which nests it in itself, and a nested run ends before
/// the run it interrupted goes on; from 7.0 a run can be preempted by another task, but the
/// other task's runs of that program are then skipped, not run. So a per-program depth, put
/// back by every run before it returns, tells each run a word of its own.
#[repr(C)]
pub(crate) struct Scratch {
    /// The transitions the main program took and the backup program has not yet come to, for
    /// the backup (see `put_note`); 0 marks a free slot.
    pub(crate) notes: [u64; RECENT_LEN],
    /// Where the search for a slot for the next note starts: the slot after the last note.
    pub(crate) next: u64,
    /// Runs of each program under way on the CPU.
    pub(crate) depth: [u64; 2],
    /// Per program and nesting level: a word to turn the socket pointer into its address.
    pub(crate) address: [[u64; LEVELS]; 2],
}

/// One transition of one socket: a kernel pointer's top 16 bits are all ones, so the states can
/// go there without two transitions sharing a key.
#[inline(always)]
pub(crate) fn transition_key(sk: u64, old: u8, new: u8) -> u64 {
    sk ^ ((old as u64) << 56) ^ ((new as u64) << 48)
}

/// One more run of a program on this CPU: returns how many were under way.
///
/// # Safety
/// `depth` is this CPU's depth of the calling program.
#[inline(always)]
pub(crate) unsafe fn enter(depth: *mut u64) -> u64 {
    // SAFETY: as the caller promises.
    unsafe {
        let d = core::ptr::read_volatile(depth);
        core::ptr::write_volatile(depth, d + 1);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        d
    }
}

/// The run that `enter` returned `d` for ends.
///
/// # Safety
/// As for `enter`.
#[inline(always)]
pub(crate) unsafe fn leave(depth: *mut u64, d: u64) {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: as the caller promises.
    unsafe { core::ptr::write_volatile(depth, d) };
}

/// Notes the transition `key` for the backup program.
///
/// An outermost run (`outermost`: no run of either program under way on this CPU) empties the
/// ring: every note left in it is one whose backup run was skipped (a softirq's transition that
/// came while the backup ran), and a later transition of a socket at the same address with the
/// same states would find it and be taken for handled. (A run between a transition's two
/// programs, an interrupt's or, from 7.0, another task's while this one is held, loses that
/// transition's note so: the backup then handles it again, which changes nothing, and `DONE`
/// guards a CLOSE.)
///
/// A nested run (a softirq's transition in this run; 5.10 runs the program in itself, later
/// kernels only the backup) uses the first free slot from the one after the last note, or that
/// slot with none free, so it never overwrites the note of the run it interrupted.
///
/// # Safety
/// `s` is this CPU's scratch, and the caller is the main program.
#[inline(always)]
pub(crate) unsafe fn put_note(s: *mut Scratch, key: u64, outermost: bool) {
    // SAFETY: as the caller promises; every index is masked into range.
    unsafe {
        if outermost {
            // The note first: a run nested in this one from here on sees its slot taken, and
            // finishes (its note put and taken) before this run clears the rest.
            core::ptr::write_volatile(&mut (*s).notes[0], key);
            core::ptr::write_volatile(&mut (*s).next, 1);
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
            let mut i = 1;
            while i < RECENT_LEN {
                core::ptr::write_volatile(&mut (*s).notes[i], 0);
                i += 1;
            }
            return;
        }
        let start = core::ptr::read_volatile(&(*s).next) as usize;
        let mut slot = start & (RECENT_LEN - 1);
        let mut i = 0;
        while i < RECENT_LEN {
            let j = (start + i) & (RECENT_LEN - 1);
            if core::ptr::read_volatile(&(*s).notes[j]) == 0 {
                slot = j;
                break;
            }
            i += 1;
        }
        // Where the next note goes is moved past this slot first: a run nested in this one
        // from here on starts after it. One nested before this write found the slot as this
        // run did, and took it and cleared it again before this run goes on.
        core::ptr::write_volatile(&mut (*s).next, (slot + 1) as u64);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        core::ptr::write_volatile(&mut (*s).notes[slot & (RECENT_LEN - 1)], key);
    }
}

/// Whether the main program noted the transition `key` (the note is cleared).
///
/// # Safety
/// `notes` is this CPU's ring of notes.
#[inline(always)]
pub(crate) unsafe fn take_note(notes: *mut [u64; RECENT_LEN], key: u64) -> bool {
    let mut i = 0;
    while i < RECENT_LEN {
        // SAFETY: as the caller promises; i < RECENT_LEN.
        unsafe {
            let note = &mut (*notes)[i];
            if core::ptr::read_volatile(note) == key {
                core::ptr::write_volatile(note, 0);
                return true;
            }
        }
        i += 1;
    }
    false
}
