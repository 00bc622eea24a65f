//! The idle clock of a connection: how long calls on it have waited since one last
//! succeeded (the time behind [`StreamServer::idle_timeout`](super::StreamServer::idle_timeout)).
//!
//! The clock runs while at least one call waits on the connection (a reader and a
//! writer may wait at once: their overlap counts once) and restarts at zero whenever a
//! call succeeds, whichever greenlet made it. Time with no call waiting — the handler
//! at other work — does not count.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(super) struct IdleClock {
    /// The idle timeout; `None`: the clock is off and costs nothing.
    timeout: Cell<Option<Duration>>,
    /// Waiting time since the last success, not counting the stretch now running.
    spent: Cell<Duration>,
    /// Calls waiting now.
    waiting: Cell<u32>,
    /// When the stretch now running began (meaningful while `waiting > 0`).
    since: Cell<Option<Instant>>,
}

impl IdleClock {
    pub(super) fn timeout(&self) -> Option<Duration> {
        self.timeout.get()
    }

    /// Sets the timeout (`None`: off) and restarts the clock.
    pub(super) fn set_timeout(&self, timeout: Option<Duration>) {
        self.timeout.set(timeout);
        self.spent.set(Duration::ZERO);
        if self.waiting.get() > 0 {
            self.since.set(Some(Instant::now()));
        }
    }

    /// A call succeeded: the clock restarts at zero.
    pub(super) fn progress(&self) {
        if self.timeout.get().is_some() {
            self.spent.set(Duration::ZERO);
            if self.waiting.get() > 0 {
                self.since.set(Some(Instant::now()));
            }
        }
    }

    /// When the timeout runs out if nothing succeeds (`None` when off or nobody waits).
    pub(super) fn expires_at(&self) -> Option<Instant> {
        let timeout = self.timeout.get()?;
        let since = self.since.get().filter(|_| self.waiting.get() > 0)?;
        Some(since + timeout.saturating_sub(self.spent.get()))
    }

    /// A call starts waiting; the clock runs until the returned guard drops. `None` when
    /// the clock is off.
    pub(super) fn begin_wait(&self) -> Option<IdleWait<'_>> {
        self.timeout.get()?;
        if self.waiting.get() == 0 {
            self.since.set(Some(Instant::now()));
        }
        self.waiting.set(self.waiting.get() + 1);
        Some(IdleWait { clock: self })
    }
}

/// One waiting call; dropping it (however the wait ends, unwinding included) stops its
/// share of the clock.
pub(super) struct IdleWait<'a> {
    clock: &'a IdleClock,
}

impl Drop for IdleWait<'_> {
    fn drop(&mut self) {
        let clock = self.clock;
        clock.waiting.set(clock.waiting.get() - 1);
        if clock.waiting.get() == 0
            && let Some(since) = clock.since.take()
        {
            clock.spent.set(clock.spent.get() + since.elapsed());
        }
    }
}
