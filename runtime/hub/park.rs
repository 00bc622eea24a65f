//! Parking and waking: how a greenlet waits on the hub (a [`Waiter`] per wait, a timer
//! for its deadline, the `Timeout` scopes and kills that cut it short) and how a wait
//! ends (the woken task goes to the ready queue, or straight to the thread).

use std::rc::Rc;
use std::time::Instant;

use super::{Hub, Task, WaitOn, Waiter, Wake, timer};
use crate::error::Error;
use crate::greenlet::GreenletExit;

impl Hub {
    /// Starts a wait for `what` (see [`begin_wait`](Hub::begin_wait)).
    #[inline(always)]
    pub(crate) fn begin_wait_on(&self, what: WaitOn) -> Waiter {
        let waiter = self.begin_wait();
        waiter.task.waiting_on.set(what);
        waiter
    }

    /// Starts a wait of the running greenlet and returns the waiter that ends it.
    #[inline(always)]
    pub(crate) fn begin_wait(&self) -> Waiter {
        let task = self.current_task();
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        task.waiting.set(seq);
        task.waiting_on.set(WaitOn::Sync(&"event"));
        Waiter { task, seq }
    }

    /// Puts a task at the back of the ready queue.
    #[inline]
    pub(crate) fn schedule(&self, task: Rc<Task>) {
        self.note_woken(&task);
        let mut ready = self.ready.borrow_mut();
        ready.push_back(task);
        if let Some(p) = &self.probe {
            // A greenlet woken by the running one waits for it: the monitor's to know.
            p.publish_ready(ready.len());
        }
    }

    /// Puts a task that yielded at the back of the yielded queue.
    pub(super) fn schedule_yielded(&self, task: Rc<Task>) {
        self.yielded.borrow_mut().push_back(task);
    }

    /// Parks the running greenlet until `waiter` is woken or `deadline` (the operation's
    /// own) passes, whichever is first; open `Timeout` scopes cut it short too.
    ///
    /// Returns why it woke: `Ok(Wake::Timer)` when the operation's own deadline passed.
    ///
    /// # Errors
    /// [`Error::Timeout`] when a `Timeout` scope's deadline passed (before or during the
    /// wait), [`Error::BlockForever`] when nothing can ever wake it.
    ///
    /// # Panics
    /// Unwinds with [`GreenletExit`] when the greenlet is killed.
    #[inline(always)]
    pub(crate) fn park(&self, waiter: &Waiter, deadline: Option<Instant>) -> Result<Wake, Error> {
        let task = &waiter.task;
        if deadline.is_some() || task.kill_pending.get() || task.has_scopes() {
            return self.park_timed(waiter, deadline);
        }
        // No timer and nothing to deliver: the common wait. It is inlined into its callers,
        // so that the switch back lands in their frame: a return right after a stack switch
        // is mispredicted (the return stack buffer holds the other stack's frames), one per
        // frame between the switch and the code that goes on.
        loop {
            let next = self.hand_off(task);
            let target = next.as_ref().unwrap_or(&self.greenlet);
            if let Err(e) = target.switch(()) {
                task.waiting.set(0);
                return Err(e);
            }
            if !waiter.is_waiting() {
                break;
            }
        }
        let wake = task.wake.get();
        if task.kill_pending.get() || !matches!(wake, Wake::Ready | Wake::Io) {
            return self.woken(task, None, None);
        }
        Ok(wake)
    }

    /// [`park`](Hub::park) with a timer (the operation's deadline or a `Timeout` scope's),
    /// or with a kill to deliver first.
    #[inline(never)]
    fn park_timed(&self, waiter: &Waiter, deadline: Option<Instant>) -> Result<Wake, Error> {
        let task = &waiter.task;
        if let Err(e) = self.check_interrupts(task) {
            task.waiting.set(0);
            return Err(e);
        }
        let scope = task.scope_deadline();
        let timer_at = match (deadline, scope) {
            (Some(d), Some(s)) => Some(d.min(s)),
            (d, s) => d.or(s),
        };
        let timer = timer_at.map(|at| self.timers.borrow_mut().insert(at, waiter.clone()));
        // Switch to the hub at least once: a waiter woken before parking (`sleep(0)`) is
        // already in the ready queue, and the hub will switch back when its turn comes.
        // Switched back while still waiting is spurious (a plain `switch` into us): park again.
        loop {
            let next = self.hand_off(task);
            let target = next.as_ref().unwrap_or(&self.greenlet);
            if let Err(e) = target.switch(()) {
                // Thrown at us by a plain switch: the wait ends with that error.
                task.waiting.set(0);
                if let Some(t) = timer {
                    self.cancel_timer(t);
                }
                return Err(e);
            }
            if !waiter.is_waiting() {
                break;
            }
        }
        // Woken by its timer, the timer is gone already (it fired): nothing to look up.
        if let Some(t) = timer
            && task.wake.get() != Wake::Timer
        {
            self.cancel_timer(t);
        }
        self.woken(task, scope, deadline)
    }

    /// What a wait that `task` was woken from returns: why it woke, or the kill, the
    /// expired `Timeout` scope (`scope`: the earliest when it parked) or the error it woke
    /// for. `deadline` is the operation's own.
    #[inline(never)]
    fn woken(
        &self,
        task: &Task,
        scope: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Result<Wake, Error> {
        match task.wake.get() {
            Wake::Kill => {
                self.check_interrupts(task)?;
                Err(Error::Killed)
            }
            Wake::BlockForever => Err(Error::BlockForever),
            Wake::Timer if scope.is_some_and(|s| deadline.is_none_or(|d| s <= d)) => {
                // The timer was a `Timeout` scope's, not the operation's own.
                task.fire_scopes(Instant::now());
                Err(Error::Timeout)
            }
            other => self.check_interrupts(task).map(|()| other),
        }
    }

    /// Cancels a parked greenlet's timer. It runs on, so the monitor learns the earliest
    /// timer now (else it could take a cancelled one for a due one and report a block).
    fn cancel_timer(&self, key: timer::TimerKey) {
        let mut timers = self.timers.borrow_mut();
        if timers.cancel(key).is_some()
            && let Some(p) = &self.probe
            && timers.take_changed()
        {
            p.publish_next_timer(timers.next_deadline());
        }
    }

    /// Delivers a pending kill (by unwinding) or an expired `Timeout` scope (as an error).
    fn check_interrupts(&self, task: &Task) -> Result<(), Error> {
        if task.kill_pending.get() && !std::thread::panicking() && !task.greenlet.is_main() {
            task.kill_pending.set(false);
            task.waiting.set(0);
            std::panic::resume_unwind(Box::new(GreenletExit));
        }
        if let Some(s) = task.scope_deadline() {
            let now = Instant::now();
            if s <= now {
                task.fire_scopes(now);
                return Err(Error::Timeout);
            }
        }
        Ok(())
    }

    /// Requests a kill of `task`: delivered now if it is parked, else at its next wait.
    pub(crate) fn request_kill(&self, task: &Rc<Task>) {
        task.kill_pending.set(true);
        let seq = task.waiting.get();
        if seq != 0 {
            Waiter {
                task: task.clone(),
                seq,
            }
            .wake(Wake::Kill);
        }
    }
}
