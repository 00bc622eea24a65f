//! The FIFO wait list under every primitive in this module.
//!
//! A waiter that a `notify` wakes holds a *grant* (an item, a permit, a slot: what the
//! grant means is the primitive's business). If its wait then fails anyway (an expired
//! `Timeout` scope, a kill) the grant goes back through the primitive's `give_back`, so
//! it reaches the next waiter and nothing is lost. Waiters whose wait ended some other
//! way (timed out, killed) are stale: `notify_one` skips them, so a dead greenlet never
//! swallows a wake-up meant for a live one.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::hub::{WaitOn, Waiter, Wake, current_hub};

/// Greenlets waiting on one condition of a primitive, woken in FIFO order.
#[derive(Default)]
pub(crate) struct WaitList {
    waiters: RefCell<VecDeque<Waiter>>,
}

impl WaitList {
    pub(crate) fn new() -> WaitList {
        WaitList::default()
    }

    /// Wakes the first greenlet still waiting, giving it the grant; returns whether there
    /// was one.
    #[inline]
    pub(crate) fn notify_one(&self) -> bool {
        loop {
            let Some(w) = self.waiters.borrow_mut().pop_front() else {
                return false;
            };
            if w.wake(Wake::Ready) {
                return true;
            }
        }
    }

    /// Like [`notify_one`](WaitList::notify_one); returns the id of the woken greenlet.
    pub(crate) fn notify_one_greenlet(&self) -> Option<u64> {
        loop {
            let w = self.waiters.borrow_mut().pop_front()?;
            let id = w.task.greenlet.id();
            if w.wake(Wake::Ready) {
                return Some(id);
            }
        }
    }

    /// Wakes every waiting greenlet; returns how many.
    pub(crate) fn notify_all(&self) -> usize {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        waiters
            .into_iter()
            .filter_map(|w| w.wake(Wake::Ready).then_some(()))
            .count()
    }

    /// How many greenlets are still waiting.
    pub(crate) fn live(&self) -> usize {
        self.waiters
            .borrow()
            .iter()
            .filter(|w| w.is_waiting())
            .count()
    }

    fn remove(&self, seq: u64) -> bool {
        let mut waiters = self.waiters.borrow_mut();
        match waiters.iter().rposition(|w| w.seq == seq) {
            Some(i) => {
                waiters.remove(i);
                true
            }
            None => false,
        }
    }

    /// Parks the running greenlet at the back of the list until a `notify` wakes it
    /// (`Ok(true)`: it holds the grant) or `deadline` passes (`Ok(false)`).
    ///
    /// If it was notified but the wait fails anyway (an error, or unwinding when killed),
    /// `give_back` runs so that the grant goes on.
    ///
    /// # Errors
    /// [`Error::Timeout`] when a `Timeout` scope expires, [`Error::BlockForever`] when
    /// nothing can wake it, or an error thrown into the greenlet.
    #[inline(always)]
    pub(crate) fn wait(
        &self,
        kind: &'static &'static str,
        deadline: Option<Instant>,
        give_back: impl FnOnce(),
    ) -> Result<bool, Error> {
        let hub = current_hub();
        let waiter = begin(&hub, kind);
        self.waiters.borrow_mut().push_back(waiter.clone());
        let mut settle = Settle {
            list: self,
            waiter: &waiter,
            give_back: Some(give_back),
        };
        let r = hub.park(&waiter, deadline);
        if let Ok(Wake::Ready) = r {
            // Only a `notify` of this list wakes this wait with `Ready`.
            settle.give_back = None;
            return Ok(true);
        }
        drop(settle);
        r.map(|_| false)
    }
}

#[inline]
fn begin(hub: &crate::hub::Hub, kind: &'static &'static str) -> Waiter {
    hub.begin_wait_on(WaitOn::Sync(kind))
}

/// Ends a wait that did not end with a plain notify: leaves the list, and hands a grant
/// received meanwhile on. Runs on unwinding too (a kill).
struct Settle<'a, F: FnOnce()> {
    list: &'a WaitList,
    waiter: &'a Waiter,
    give_back: Option<F>,
}

impl<F: FnOnce()> Drop for Settle<'_, F> {
    fn drop(&mut self) {
        let Some(give_back) = self.give_back.take() else {
            return;
        };
        // Still listed: nobody notified us. Not listed: a notify popped us, and it granted
        // something iff it found us still waiting, i.e. iff it set `Ready`.
        if !self.list.remove(self.waiter.seq) && self.waiter.task.wake.get() == Wake::Ready {
            give_back();
        }
    }
}

/// The deadline `timeout` from now (saturating far in the future).
pub(crate) fn deadline_in(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
