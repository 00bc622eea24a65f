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
/// A plain (sized) struct, so that a handle to it is one pointer and its fields sit at
/// fixed offsets: the ready queue, wait lists and waiters hold `Rc<Task>`s, and every
/// wait reads and writes several fields. A spawned greenlet's function and typed result
/// live in a body of their own ([`body`](Task::body), see `spawn`).
pub(crate) struct Task {
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
    /// What a spawned greenlet's `JoinHandle` waits on (its function until it runs, then
    /// its result and joiners), kept alive as long as the task: a detached greenlet's
    /// function must outlive its handle.
    #[allow(dead_code, reason = "owned to keep the body alive, never read")]
    body: Option<Rc<dyn std::any::Any>>,
}

impl Task {
    /// A task for `greenlet`, with the spawned greenlet's `body` if it has one.
    pub(crate) fn new(greenlet: Greenlet, body: Option<Rc<dyn std::any::Any>>) -> Task {
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
            body,
        }
    }

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

/// Finished tasks kept for reuse, so that spawning a greenlet allocates no task record
/// (only its typed body): the hub's ready queue, wait lists and waiters then always hold
/// a small, plain `Rc<Task>`. A task comes here when its last handle goes and nothing
/// else (no weak handle) refers to it; its greenlet and body are let go at once, so the
/// greenlet's record and stack go back to their own pools.
#[derive(Default)]
pub(crate) struct SpareTasks {
    spares: RefCell<Vec<Rc<Task>>>,
    /// The fewest spares there were since the last [`trim`](SpareTasks::trim).
    low: Cell<usize>,
}

/// Most spare tasks kept (like the warm stacks of the stack pool).
const MAX_SPARE_TASKS: usize = 16_384;

impl SpareTasks {
    /// A task for `greenlet` carrying `body`: a spare one if there is one.
    pub(crate) fn take(&self, greenlet: Greenlet, body: Option<Rc<dyn std::any::Any>>) -> Rc<Task> {
        let spare = self.spares.borrow_mut().pop();
        let len = self.spares.borrow().len();
        if len < self.low.get() {
            self.low.set(len);
        }
        match spare {
            Some(mut task) => {
                match Rc::get_mut(&mut task) {
                    Some(t) => *t = Task::new(greenlet, body),
                    None => return Rc::new(Task::new(greenlet, body)), // never: kept unique
                }
                task
            }
            None => Rc::new(Task::new(greenlet, body)),
        }
    }

    /// Takes `task` for reuse if `handle` is its last handle and its greenlet is dead;
    /// `placeholder` replaces its greenlet meanwhile. Gives it back otherwise.
    pub(crate) fn keep(&self, mut task: Rc<Task>, placeholder: &Greenlet) -> Option<Rc<Task>> {
        if !task.greenlet.is_dead() || self.spares.borrow().len() >= MAX_SPARE_TASKS {
            return Some(task);
        }
        let Some(t) = Rc::get_mut(&mut task) else {
            return Some(task);
        };
        // Let go of what it holds now (user code may run: a body's captured values).
        let greenlet = std::mem::replace(&mut t.greenlet, placeholder.clone());
        let body = t.body.take();
        t.scopes.get_mut().clear();
        drop((greenlet, body));
        if let Ok(mut spares) = self.spares.try_borrow_mut() {
            spares.push(task);
            return None;
        }
        Some(task)
    }

    /// Gives back the spares that were not needed since the last trim.
    pub(crate) fn trim(&self) {
        let unused = self.low.get();
        let mut spares = self.spares.borrow_mut();
        let keep = spares.len() - unused.min(spares.len());
        let gone: Vec<Rc<Task>> = spares.drain(keep..).collect();
        self.low.set(spares.len());
        drop(spares);
        drop(gone);
    }

    /// Drops every spare (the hub is torn down).
    pub(crate) fn clear(&self) {
        let gone = std::mem::take(&mut *self.spares.borrow_mut());
        self.low.set(0);
        drop(gone);
    }
}
