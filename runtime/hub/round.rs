//! A round of the event loop: which ready greenlet runs next, and handing the thread
//! straight to it when the greenlet that runs now parks.
//!
//! A round runs every greenlet that was woken before it began, then every one that
//! yielded before it began, each once and in order; then, up to [`ROUND_RUNS`] runs in
//! all, greenlets made ready during the round (woken ones first). I/O is then polled and
//! timers fired before the next round: a socket or a timer never waits behind more than
//! one round, and a round makes at most `ROUND_RUNS` runs beyond those it began with
//! (tokio's event interval is 61 too). A round that has run for [`ROUND_BUDGET_NS`]
//! ends early (the rest keep their places), so that a timer or socket never waits behind
//! more than one time slice of cooperating CPU hogs. (Time here is [`coarse_now`]'s:
//! the budget is kept to within one scheduler tick.)
//!
//! # Handing off
//!
//! When the running greenlet parks and the greenlet the round would run next is one it
//! woke itself (or it yields to the next yielder), it switches to that greenlet directly
//! instead of through the hub: one machine switch instead of two, and none of the hub's
//! bookkeeping in between (Go's `runnext`). Which greenlet runs next, the round's count
//! and its budget are exactly what they would be through the hub. The resume chain
//! (see `greenlet::switch`) is kept at most one level deeper than the hub's own: a
//! greenlet handed to may hand back to the one that handed to it (a `suspend`: the
//! ping-pong of a request and its answer costs one switch each way), but it parks
//! through the hub otherwise. The main greenlet neither hands off nor is handed to.

use std::cell::Cell;
use std::rc::Rc;

use super::{Hub, Task, WaitOn, coarse_now};
use crate::greenlet::Greenlet;

/// Most runs a round makes beyond those it began with.
pub(super) const ROUND_RUNS: usize = 61;
/// Longest a round runs before it ends early, in ns.
pub(super) const ROUND_BUDGET_NS: u64 = 2_000_000;

/// The state of the round in progress.
#[derive(Default)]
pub(super) struct Round {
    /// A round is in progress: the hub is in [`Hub::run_ready`].
    active: Cell<bool>,
    /// When it began ([`coarse_now`]).
    start: Cell<u64>,
    /// Runs made so far.
    runs: Cell<usize>,
    /// Greenlets woken before it began that have not run yet.
    woken_left: Cell<usize>,
    /// Greenlets that yielded before it began that have not run yet.
    yielded_left: Cell<usize>,
    /// When the greenlet running now was switched into ([`coarse_now`]).
    run_started: Cell<u64>,
    /// How many handoffs deep the running greenlet is (0: the hub switched into it).
    depth: Cell<u8>,
    /// At depth 1: the id of the greenlet that handed off to the running one.
    handed_by: Cell<u64>,
    /// The id of the greenlet the running one woke last (0: none).
    woken_by_running: Cell<u64>,
}

impl Hub {
    /// Runs one round of ready greenlets (see the module docs).
    pub(super) fn run_ready(&self) {
        let round = &self.round;
        let now = coarse_now();
        round.start.set(now);
        round.run_started.set(now);
        round.runs.set(0);
        round.woken_left.set(self.ready.borrow().len());
        round.yielded_left.set(self.yielded.borrow().len());
        round.active.set(true);
        while let Some(task) = self.next_in_round(round.run_started.get()) {
            self.run_task(task);
            if self.stopping.get() {
                break;
            }
        }
        round.active.set(false);
    }

    /// Takes the greenlet to run next from its queue, if the round goes on (it is `now`).
    fn next_in_round(&self, now: u64) -> Option<Rc<Task>> {
        let round = &self.round;
        if now.saturating_sub(round.start.get()) >= ROUND_BUDGET_NS {
            return None;
        }
        let task = if round.woken_left.get() > 0 {
            round.woken_left.set(round.woken_left.get() - 1);
            self.ready.borrow_mut().pop_front()
        } else if round.yielded_left.get() > 0 {
            round.yielded_left.set(round.yielded_left.get() - 1);
            self.yielded.borrow_mut().pop_front()
        } else if round.runs.get() < ROUND_RUNS {
            let next = self.ready.borrow_mut().pop_front();
            next.or_else(|| self.yielded.borrow_mut().pop_front())
        } else {
            None
        };
        if task.is_some() {
            round.runs.set(round.runs.get() + 1);
        }
        task
    }

    /// The hub is about to switch into the running task (its run started when the last
    /// one ended).
    #[inline]
    pub(super) fn start_run(&self) {
        self.round.depth.set(0);
    }

    /// Counts the run of `task` that ends at `ended`.
    pub(super) fn end_run(&self, task: &Task, ended: u64) {
        task.runs.set(task.runs.get().saturating_add(1));
        let started = self.round.run_started.get();
        if ended > started {
            task.run_time.set(task.run_time.get() + (ended - started));
        }
        self.round.run_started.set(ended);
    }

    /// A task was scheduled: remember it if the running greenlet woke it.
    #[inline]
    pub(super) fn note_woken(&self, task: &Task) {
        if self.round.active.get() {
            self.round.woken_by_running.set(task.greenlet.id());
        }
    }

    /// The running task `me` parks: if the greenlet to run next can be switched to
    /// directly (see the module docs), makes it the running task and returns it, for the
    /// caller to switch to; `None`: switch to the hub.
    #[inline]
    pub(super) fn hand_off(&self, me: &Task) -> Option<Greenlet> {
        let round = &self.round;
        if !round.active.get() || me.greenlet.is_main() {
            return None;
        }
        // The queue `next_in_round` takes from.
        let (queue, left) = if round.woken_left.get() > 0 {
            (&self.ready, Some(&round.woken_left))
        } else if round.yielded_left.get() > 0 {
            (&self.yielded, Some(&round.yielded_left))
        } else if round.runs.get() < ROUND_RUNS {
            let ready = !self.ready.borrow().is_empty();
            (if ready { &self.ready } else { &self.yielded }, None)
        } else {
            return None;
        };
        let mut queue = queue.borrow_mut();
        let next = &queue.front()?.greenlet;
        let fits = match round.depth.get() {
            0 => {
                next.is_resumable()
                    && !next.is_main()
                    && (next.id() == round.woken_by_running.get()
                        || me.waiting_on.get() == WaitOn::Turn)
            }
            1 => next.is_resuming() && next.id() == round.handed_by.get(),
            _ => false,
        };
        // `me` runs, and only one greenlet does: it is the running task if that one runs.
        if !fits
            || !self
                .running
                .borrow()
                .as_ref()
                .is_some_and(|t| t.greenlet.is_running())
        {
            return None;
        }
        let now = coarse_now();
        if now.saturating_sub(round.start.get()) >= ROUND_BUDGET_NS {
            return None;
        }
        let task = queue.pop_front()?;
        drop(queue);
        if let Some(left) = left {
            left.set(left.get() - 1);
        }
        round.runs.set(round.runs.get() + 1);
        self.end_run(me, now);
        if let Some(p) = &self.probe {
            self.publish(p, &task);
        }
        if round.depth.get() == 0 {
            round.depth.set(1);
            round.handed_by.set(me.greenlet.id());
        } else {
            round.depth.set(0);
        }
        round.woken_by_running.set(0);
        let next = task.greenlet.clone();
        // `me`'s own waiter keeps it alive: this is not its last handle.
        let me = self.running.borrow_mut().replace(task);
        drop(me);
        Some(next)
    }
}
