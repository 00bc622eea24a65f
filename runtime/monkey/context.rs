//! Where a hook stands: whether the hooks are on for the process, and whether this call
//! can cooperate (not inside another hook, not in a signal handler, on a hub thread).
//!
//! All of it is read from const-initialised statics and thread-locals without
//! destructors: checking costs a few loads, allocates nothing, takes no lock and runs no
//! lazy initialisation, so it is safe before `main`, in signal handlers and while a
//! thread is being torn down.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::hub::raw;

/// The hooks pass every call through (before `patch_all`, or turned off).
pub(super) const OFF: u8 = 0;
/// The hooks are on.
pub(super) const ON: u8 = 1;
/// In a child after `fork`: no cooperation and no change to what the parent shares
/// (its hubs' `epoll` instances), only the blocking emulation.
pub(super) const CHILD: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(OFF);

/// The process's mode: [`OFF`], [`ON`] or [`CHILD`].
#[inline(always)]
pub(super) fn mode() -> u8 {
    MODE.load(Ordering::Acquire)
}

pub(super) fn set_mode(mode: u8) {
    MODE.store(mode, Ordering::Release);
}

/// Set while a hook does its own work (not while it is parked on the hub).
const IN_HOOK: u32 = 1;
/// Added once per signal handler being run on the thread (see `signal`).
const SIGNAL: u32 = 2;

thread_local! {
    static FLAGS: Cell<u32> = const { Cell::new(0) };
}

/// Can a call here cooperate? The hooks are on, the call is not made from inside a hook
/// or a signal handler, and the thread has a hub. (The running greenlet is checked after.)
#[inline(always)]
pub(super) fn may_cooperate() -> bool {
    mode() == ON && FLAGS.with(Cell::get) == 0 && raw::thread_hub_id() != 0
}

/// Is a signal handler running on this thread (one installed through the hooks)?
pub(super) fn in_signal_handler() -> bool {
    FLAGS.with(Cell::get) >= SIGNAL
}

/// Marks the thread as inside a hook while it lives.
pub(super) struct Busy(());

impl Busy {
    pub(super) fn enter() -> Busy {
        FLAGS.with(|f| f.set(f.get() | IN_HOOK));
        Busy(())
    }

    /// Runs `f` (a wait on the hub, during which other greenlets run their own hooks)
    /// with the mark lifted.
    pub(super) fn released<R>(&self, f: impl FnOnce() -> R) -> R {
        FLAGS.with(|fl| fl.set(fl.get() & !IN_HOOK));
        let r = f();
        FLAGS.with(|fl| fl.set(fl.get() | IN_HOOK));
        r
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        FLAGS.with(|f| f.set(f.get() & !IN_HOOK));
    }
}

/// Counts a signal handler in for as long as it lives (see `signal`).
pub(super) struct InSignal(());

impl InSignal {
    pub(super) fn enter() -> InSignal {
        FLAGS.with(|f| f.set(f.get().wrapping_add(SIGNAL)));
        InSignal(())
    }
}

impl Drop for InSignal {
    fn drop(&mut self) {
        FLAGS.with(|f| f.set(f.get().wrapping_sub(SIGNAL)));
    }
}

/// The calling thread's `errno`.
#[inline]
pub(super) fn errno() -> libc::c_int {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
#[inline]
pub(super) fn set_errno(e: libc::c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}
