//! Tasks: the hub's record of a greenlet that blocks on it, and the waiters that wake it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use crate::greenlet::Greenlet;

/// Why a parked greenlet was woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Scheduled to run (spawned, `sleep(0)`, or an explicit wake-up by a sync primitive).
    Ready,
    /// Its timer fired.
    Timer,
    /// An I/O readiness event for the fd it waits on.
    Io,
    /// A kill was requested: unwind.
    Kill,
    /// Nothing else can ever wake it (main greenlet only).
    BlockForever,
}

/// What a parked task waits for, for [`dump`](crate::hub::dump).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitOn {
    /// Not waiting.
    Nothing,
    /// A timer (`sleep`, or a deadline).
    Timer,
    /// An fd to become ready.
    Io {
        fd: i32,
        direction: super::Direction,
    },
    /// Another greenlet to finish.
    Join,
    /// A synchronization primitive or queue (its kind; a thin reference, so that a task
    /// stays small).
    Sync(&'static &'static str),
    /// A value from another thread (a thread-pool job, a `result_channel`).
    Thread,
    /// Its turn to run (`sleep(0)`, `cooperate()`).
    Turn,
}

/// A `Timeout` scope on a task: its deadline, and whether it has cut a wait short.
pub(crate) struct Scope {
    pub(crate) id: u64,
    pub(crate) deadline: Instant,
    pub(crate) fired: Rc<Cell<bool>>,
}

/// The hub's view of one greenlet that blocks cooperatively.
///
/// `C` is what a spawned greenlet's [`JoinHandle`](super::JoinHandle) waits on (its
/// function until it runs, then its typed result and joiners), kept in the task's own
/// allocation: spawning allocates once. The hub sees every task as `Rc<Task>` (`C = dyn
/// Any`); other greenlets' tasks carry `()`.
pub(crate) struct Task<C: ?Sized = dyn std::any::Any> {
    pub(crate) greenlet: Greenlet,
    /// The task's slot in the hub's table of live tasks (for `dump()`); `u32::MAX`: none.
    pub(crate) tracked: Cell<u32>,
    /// The sequence number of the wait in progress; 0 when not waiting.
    pub(crate) waiting: Cell<u64>,
    /// Why the last wait ended.
    pub(crate) wake: Cell<Wake>,
    /// A kill was requested and not yet delivered.
    pub(crate) kill_pending: Cell<bool>,
    /// A hooked libc call (the `monkey` feature) has failed with `ECANCELED` for the
    /// pending kill; later hooked waits do not fail for it again (see `raw::no_unwind`).
    pub(crate) kill_reported: Cell<bool>,
    /// Open `Timeout` scopes, innermost last.
    pub(crate) scopes: RefCell<Vec<Scope>>,
    /// What it waits for (while `waiting` is non-zero).
    pub(crate) waiting_on: Cell<WaitOn>,
    /// How many times the hub has switched into it (saturating).
    pub(crate) runs: Cell<u32>,
    /// Time spent running after those switches, in ns (to the scheduler tick: see
    /// `coarse_now`).
    pub(crate) run_time: Cell<u64>,
    /// See the type's docs.
    pub(crate) completion: C,
}

impl<C> Task<C> {
    /// A task for `greenlet`, carrying `completion`.
    pub(crate) fn new(greenlet: Greenlet, completion: C) -> Task<C> {
        Task {
            greenlet,
            tracked: Cell::new(u32::MAX),
            waiting: Cell::new(0),
            wake: Cell::new(Wake::Ready),
            kill_pending: Cell::new(false),
            kill_reported: Cell::new(false),
            scopes: RefCell::new(Vec::new()),
            waiting_on: Cell::new(WaitOn::Nothing),
            runs: Cell::new(0),
            run_time: Cell::new(0),
            completion,
        }
    }
}

impl<C: ?Sized> Task<C> {
    /// Is a `Timeout` scope open?
    #[inline]
    pub(crate) fn has_scopes(&self) -> bool {
        !self.scopes.borrow().is_empty()
    }

    /// The earliest deadline among the open `Timeout` scopes.
    pub(crate) fn scope_deadline(&self) -> Option<Instant> {
        self.scopes.borrow().iter().map(|s| s.deadline).min()
    }

    /// Marks every scope whose deadline is at or before `now` as fired.
    pub(crate) fn fire_scopes(&self, now: Instant) {
        for s in self.scopes.borrow().iter() {
            if s.deadline <= now {
                s.fired.set(true);
            }
        }
    }
}

/// One wait of one task: waking it schedules the task, once, if that wait is still on.
///
/// Wait lists hold `Waiter`s; a waiter whose task has since been woken, killed or timed
/// out is stale, and [`Waiter::wake`] on it returns `false` so the list can move on to the
/// next (no lost wake-ups, no ghosts).
#[derive(Clone)]
pub(crate) struct Waiter {
    pub(crate) task: Rc<Task>,
    pub(crate) seq: u64,
}

impl Waiter {
    /// Is the task still in this wait?
    pub(crate) fn is_waiting(&self) -> bool {
        self.task.waiting.get() == self.seq
    }

    /// Wakes the task for `reason` if it is still in this wait; returns whether it was.
    /// The waiter's handle to the task moves into the hub's ready queue.
    #[inline]
    pub(crate) fn wake(self, reason: Wake) -> bool {
        if !self.is_waiting() {
            return false;
        }
        self.task.waiting.set(0);
        self.task.wake.set(reason);
        super::with_hub(|hub| hub.schedule(self.task));
        true
    }

    /// [`wake`](Waiter::wake) for a waiter that stays where it is listed.
    #[inline]
    pub(crate) fn wake_listed(&self, reason: Wake) -> bool {
        self.is_waiting() && self.clone().wake(reason)
    }
}
