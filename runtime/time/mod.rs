//! Cooperative time: [`sleep`], and deadlines for every blocking call inside a scope
//! ([`Timeout`], [`with_timeout`]) — gevent's `sleep`, `Timeout` and `with_timeout`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::hub::{self, Scope, Task};

/// Suspends the running greenlet for `duration`; other greenlets run meanwhile.
///
/// `sleep(Duration::ZERO)` lets every greenlet that is ready run once, then returns
/// (gevent's `sleep(0)`): the cure for a loop that would otherwise hog the thread.
/// Inside an expired [`Timeout`] scope it returns early; the scope's next fallible call
/// reports the timeout. Called from plain `fn main`, it runs the hub meanwhile.
///
/// ```
/// use std::time::{Duration, Instant};
/// let t = Instant::now();
/// let a = greenhub::spawn(|| greenhub::sleep(Duration::from_millis(30)));
/// let b = greenhub::spawn(|| greenhub::sleep(Duration::from_millis(30)));
/// a.join().unwrap();
/// b.join().unwrap();
/// assert!(t.elapsed() < Duration::from_millis(55), "they slept at the same time");
/// ```
// Inlined, with the yield of `sleep(ZERO)`: see `hub::yield_now`.
#[inline(always)]
pub fn sleep(duration: Duration) {
    if duration.is_zero() {
        let _ = hub::yield_now();
    } else {
        sleep_for(duration);
    }
}

/// [`sleep`] for a duration that is not zero.
#[inline(never)]
fn sleep_for(duration: Duration) {
    let _ = hub::sleep_until(Instant::now() + duration);
}

static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);

/// A deadline for every blocking call the current greenlet makes while the guard lives
/// (gevent's `Timeout`). Once it passes, waits fail with [`Error::Timeout`] (I/O with
/// `ErrorKind::TimedOut`). Scopes nest: each fires at its own deadline.
///
/// ```
/// use std::time::Duration;
/// use greenhub::{Error, Timeout};
/// let t = Timeout::start(Duration::from_millis(10));
/// let h = greenhub::spawn(|| greenhub::sleep(Duration::from_secs(10)));
/// assert!(matches!(h.join_timeout(Duration::from_secs(60)), Err(Error::Timeout)));
/// assert!(t.fired());
/// # h.kill();
/// ```
#[must_use = "the deadline applies while the guard lives"]
pub struct Timeout {
    task: Rc<Task>,
    id: u64,
    deadline: Instant,
    fired: Rc<Cell<bool>>,
}

impl Timeout {
    /// Opens a scope that expires `duration` from now.
    pub fn start(duration: Duration) -> Timeout {
        Timeout::at(Instant::now() + duration)
    }

    /// Opens a scope that expires at `deadline`.
    pub fn at(deadline: Instant) -> Timeout {
        let task = hub::current_hub().current_task();
        let id = NEXT_SCOPE.fetch_add(1, Ordering::Relaxed);
        let fired = Rc::new(Cell::new(false));
        task.scopes.borrow_mut().push(Scope {
            id,
            deadline,
            fired: fired.clone(),
        });
        Timeout {
            task,
            id,
            deadline,
            fired,
        }
    }

    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Has this scope's deadline cut a wait short?
    pub fn fired(&self) -> bool {
        self.fired.get()
    }
}

impl std::fmt::Debug for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout")
            .field("deadline", &self.deadline)
            .field("fired", &self.fired.get())
            .finish_non_exhaustive()
    }
}

impl Drop for Timeout {
    fn drop(&mut self) {
        self.task.scopes.borrow_mut().retain(|s| s.id != self.id);
    }
}

/// Runs `f` with a [`Timeout`] of `duration` around it (gevent's `with_timeout`).
///
/// # Errors
/// [`Error::Timeout`] if the deadline cut one of `f`'s waits short (whatever `f` then
/// returned); otherwise `Ok` with `f`'s result.
///
/// ```
/// use std::time::Duration;
/// use greenhub::{Error, sleep, with_timeout};
/// let r = with_timeout(Duration::from_millis(10), || sleep(Duration::from_secs(10)));
/// assert!(matches!(r, Err(Error::Timeout)));
/// assert_eq!(with_timeout(Duration::from_secs(10), || 5).unwrap(), 5);
/// ```
pub fn with_timeout<T>(duration: Duration, f: impl FnOnce() -> T) -> Result<T, Error> {
    let scope = Timeout::start(duration);
    let value = f();
    if scope.fired() {
        Err(Error::Timeout)
    } else {
        Ok(value)
    }
}
