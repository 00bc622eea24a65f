//! Semaphores and locks (gevent's `gevent.lock`): [`Semaphore`], [`BoundedSemaphore`],
//! [`Lock`] and [`RLock`], released by RAII guards.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::wait::{WaitList, deadline_in};
use crate::error::Error;
use crate::greenlet::getcurrent;

/// A release that breaks the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockError {
    /// A [`BoundedSemaphore`] was released more times than it was acquired.
    OverRelease,
    /// A [`Lock`] or [`RLock`] that is not held was released.
    NotLocked,
    /// An [`RLock`] was released by a greenlet that does not own it.
    NotOwner,
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockError::OverRelease => "semaphore released more times than it was acquired",
            LockError::NotLocked => "release of a lock that is not held",
            LockError::NotOwner => "release of a lock owned by another greenlet",
        })
    }
}

impl std::error::Error for LockError {}

struct SemInner {
    permits: Cell<usize>,
    /// Permits handed by `release` to woken waiters that have not run yet.
    handed: Cell<usize>,
    /// The most permits it may hold (bounded semaphores and locks).
    bound: Option<usize>,
    waiters: WaitList,
    kind: &'static &'static str,
}

impl SemInner {
    fn new(permits: usize, bound: Option<usize>, kind: &'static &'static str) -> Rc<SemInner> {
        Rc::new(SemInner {
            permits: Cell::new(permits),
            handed: Cell::new(0),
            bound,
            waiters: WaitList::new(),
            kind,
        })
    }

    /// Returns a permit: to the first waiter, if any.
    fn release(&self) {
        if self.waiters.notify_one() {
            self.handed.set(self.handed.get() + 1);
        } else {
            self.permits.set(self.permits.get() + 1);
        }
    }

    /// Permits not held by anyone: free, or handed to a waiter that has not run yet
    /// (gevent counts those as free too).
    fn unheld(&self) -> usize {
        self.permits.get() + self.handed.get()
    }

    fn try_acquire(&self) -> bool {
        let n = self.permits.get();
        if n > 0 {
            self.permits.set(n - 1);
            true
        } else {
            false
        }
    }

    fn acquire(&self, deadline: Option<Instant>) -> Result<(), Error> {
        if self.try_acquire() {
            return Ok(());
        }
        // A woken waiter was handed the permit by `release` (it never went back to the
        // count); if it cannot take it, the permit goes on.
        let give_back = || {
            self.handed.set(self.handed.get() - 1);
            self.release();
        };
        match self.waiters.wait(self.kind, deadline, give_back)? {
            true => {
                self.handed.set(self.handed.get() - 1);
                Ok(())
            }
            false => Err(Error::Timeout),
        }
    }
}

/// Holds one permit of a [`Semaphore`], [`BoundedSemaphore`] or [`Lock`]; dropping it
/// releases the permit (to the first waiter, if any).
#[must_use = "the permit is released when the guard is dropped"]
pub struct SemaphoreGuard {
    sem: Option<Rc<SemInner>>,
}

impl SemaphoreGuard {
    /// Keeps the permit acquired after the guard is gone, for gevent-style code that
    /// releases it by hand with `release()`.
    pub fn forget(mut self) {
        self.sem = None;
    }
}

impl Drop for SemaphoreGuard {
    fn drop(&mut self) {
        if let Some(sem) = self.sem.take() {
            sem.release();
        }
    }
}

impl fmt::Debug for SemaphoreGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SemaphoreGuard")
    }
}

/// The guard of a [`Lock`].
pub type LockGuard = SemaphoreGuard;

macro_rules! semaphore_common {
    ($name:ident) => {
        impl $name {
            /// Takes a permit, waiting cooperatively until one is free; waiters are served
            /// in the order they came. The guard gives it back.
            ///
            /// # Errors
            /// [`Error::Timeout`] if an enclosing [`Timeout`](crate::Timeout) scope
            /// expires, [`Error::BlockForever`] if nothing can ever release one.
            pub fn acquire(&self) -> Result<SemaphoreGuard, Error> {
                self.inner.acquire(None)?;
                Ok(self.guard())
            }

            /// Like [`acquire`](Self::acquire), waiting at most `timeout`.
            ///
            /// # Errors
            /// [`Error::Timeout`] if no permit was free within `timeout`; as
            /// [`acquire`](Self::acquire) otherwise.
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard, Error> {
                self.inner.acquire(Some(deadline_in(timeout)))?;
                Ok(self.guard())
            }

            /// Takes a permit if one is free now, without waiting.
            pub fn try_acquire(&self) -> Option<SemaphoreGuard> {
                self.inner.try_acquire().then(|| self.guard())
            }

            fn guard(&self) -> SemaphoreGuard {
                SemaphoreGuard {
                    sem: Some(self.inner.clone()),
                }
            }

            /// How many permits are free (gevent's `counter`).
            pub fn available_permits(&self) -> usize {
                self.inner.permits.get()
            }

            /// Would [`acquire`](Self::acquire) wait?
            pub fn locked(&self) -> bool {
                self.inner.permits.get() == 0
            }
        }

        impl Clone for $name {
            /// Another handle to the same semaphore.
            fn clone(&self) -> Self {
                $name {
                    inner: self.inner.clone(),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("available_permits", &self.inner.permits.get())
                    .finish()
            }
        }
    };
}

/// A counting semaphore (gevent's `Semaphore`): at most `permits` holders at a time.
/// [`acquire`](Semaphore::acquire) waits cooperatively, in FIFO order, for a free permit
/// and returns a guard that releases it.
///
/// Cloning makes another handle to the same semaphore; it is `!Send`.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use greenhub::{joinall, sleep, spawn, sync::Semaphore};
/// let sem = Semaphore::new(2);
/// let (now, peak) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
/// let jobs: Vec<_> = (0..6)
///     .map(|_| {
///         let (sem, now, peak) = (sem.clone(), now.clone(), peak.clone());
///         spawn(move || {
///             let _permit = sem.acquire().unwrap();
///             now.set(now.get() + 1);
///             peak.set(peak.get().max(now.get()));
///             sleep(Duration::from_millis(2));
///             now.set(now.get() - 1);
///         })
///     })
///     .collect();
/// joinall(&jobs, None);
/// assert_eq!(peak.get(), 2);
/// ```
pub struct Semaphore {
    inner: Rc<SemInner>,
}

impl Semaphore {
    /// A semaphore with `permits` free permits.
    pub fn new(permits: usize) -> Semaphore {
        Semaphore {
            inner: SemInner::new(permits, None, &"semaphore"),
        }
    }

    /// Adds a permit (gevent's `release`): for permits kept with
    /// [`SemaphoreGuard::forget`], or to raise the count. A plain semaphore has no bound.
    pub fn release(&self) {
        self.inner.release();
    }
}

semaphore_common!(Semaphore);

/// A semaphore that refuses to be released more times than it was acquired (gevent's
/// `BoundedSemaphore`): a manual [`release`](BoundedSemaphore::release) beyond the
/// initial count is an error.
///
/// ```
/// use greenhub::sync::{BoundedSemaphore, LockError};
/// let sem = BoundedSemaphore::new(1);
/// sem.acquire().unwrap().forget(); // acquired by hand
/// assert_eq!(sem.release(), Ok(()));
/// assert_eq!(sem.release(), Err(LockError::OverRelease));
/// ```
pub struct BoundedSemaphore {
    inner: Rc<SemInner>,
}

impl BoundedSemaphore {
    /// A semaphore with `permits` free permits, and at most that many ever.
    pub fn new(permits: usize) -> BoundedSemaphore {
        BoundedSemaphore {
            inner: SemInner::new(permits, Some(permits), &"bounded semaphore"),
        }
    }

    /// Releases a permit acquired by hand (see [`SemaphoreGuard::forget`]).
    ///
    /// # Errors
    /// [`LockError::OverRelease`] if every permit is already free.
    pub fn release(&self) -> Result<(), LockError> {
        if Some(self.inner.unheld()) >= self.inner.bound {
            return Err(LockError::OverRelease);
        }
        self.inner.release();
        Ok(())
    }
}

semaphore_common!(BoundedSemaphore);

/// A mutual-exclusion lock (gevent's `Lock`, a bounded semaphore of 1): one holder at a
/// time; others wait cooperatively, in FIFO order. Not re-entrant (see [`RLock`]); any
/// greenlet may release it.
///
/// ```
/// use greenhub::sync::Lock;
/// let lock = Lock::new();
/// let guard = lock.acquire().unwrap();
/// assert!(lock.locked() && lock.try_acquire().is_none());
/// drop(guard);
/// assert!(!lock.locked());
/// ```
pub struct Lock {
    inner: Rc<SemInner>,
}

impl Default for Lock {
    fn default() -> Self {
        Lock::new()
    }
}

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> Lock {
        Lock {
            inner: SemInner::new(1, Some(1), &"lock"),
        }
    }

    /// Releases a lock acquired by hand (see [`SemaphoreGuard::forget`]).
    ///
    /// # Errors
    /// [`LockError::NotLocked`] if it is not locked.
    pub fn release(&self) -> Result<(), LockError> {
        if self.inner.unheld() > 0 {
            return Err(LockError::NotLocked);
        }
        self.inner.release();
        Ok(())
    }
}

semaphore_common!(Lock);

struct RInner {
    /// The id of the owning greenlet.
    owner: Cell<Option<u64>>,
    depth: Cell<usize>,
    waiters: WaitList,
}

impl RInner {
    /// Drops one level of ownership; at zero, hands the lock to the first waiter.
    fn release_level(&self) {
        let d = self.depth.get() - 1;
        self.depth.set(d);
        if d == 0 {
            // The woken greenlet owns it from now on (it may not have run yet).
            let heir = self.waiters.notify_one_greenlet();
            self.owner.set(heir);
            self.depth.set(usize::from(heir.is_some()));
        }
    }
}

/// A re-entrant lock (gevent's `RLock`): the owning greenlet may acquire it again (each
/// acquire needs its release); other greenlets wait cooperatively, in FIFO order. Only the
/// owner may release it.
///
/// ```
/// use greenhub::{spawn, sync::{LockError, RLock}};
/// let lock = RLock::new();
/// let outer = lock.acquire().unwrap();
/// let inner = lock.acquire().unwrap(); // the same greenlet: no deadlock
/// assert!(lock.is_owned());
/// let other = lock.clone();
/// // Another greenlet may not release it.
/// assert_eq!(spawn(move || other.release()).join().unwrap(), Err(LockError::NotOwner));
/// drop(inner);
/// drop(outer);
/// assert!(!lock.locked());
/// ```
pub struct RLock {
    inner: Rc<RInner>,
}

/// Holds one level of an [`RLock`]; dropping it releases that level.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RLockGuard {
    lock: Option<Rc<RInner>>,
}

impl RLockGuard {
    /// Keeps this level acquired after the guard is gone; release it with
    /// [`RLock::release`] from the owning greenlet.
    pub fn forget(mut self) {
        self.lock = None;
    }
}

impl Drop for RLockGuard {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release_level();
        }
    }
}

impl fmt::Debug for RLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RLockGuard")
    }
}

impl Default for RLock {
    fn default() -> Self {
        RLock::new()
    }
}

impl Clone for RLock {
    /// Another handle to the same lock.
    fn clone(&self) -> Self {
        RLock {
            inner: self.inner.clone(),
        }
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("owner", &self.owner())
            .field("depth", &self.inner.depth.get())
            .finish()
    }
}

impl RLock {
    /// A new, unlocked lock.
    pub fn new() -> RLock {
        RLock {
            inner: Rc::new(RInner {
                owner: Cell::new(None),
                depth: Cell::new(0),
                waiters: WaitList::new(),
            }),
        }
    }

    /// Acquires the lock (again, if this greenlet owns it), waiting cooperatively while
    /// another greenlet owns it.
    ///
    /// # Errors
    /// [`Error::Timeout`] if an enclosing [`Timeout`](crate::Timeout) scope expires,
    /// [`Error::BlockForever`] if nothing can ever release it.
    pub fn acquire(&self) -> Result<RLockGuard, Error> {
        self.acquire_until(None)
    }

    /// Like [`acquire`](RLock::acquire), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is still owned by another greenlet after `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<RLockGuard, Error> {
        self.acquire_until(Some(deadline_in(timeout)))
    }

    /// Acquires the lock if that needs no wait.
    pub fn try_acquire(&self) -> Option<RLockGuard> {
        self.try_lock(getcurrent().id()).then(|| self.guard())
    }

    fn guard(&self) -> RLockGuard {
        RLockGuard {
            lock: Some(self.inner.clone()),
        }
    }

    fn try_lock(&self, me: u64) -> bool {
        let inner = &*self.inner;
        match inner.owner.get() {
            Some(id) if id == me => inner.depth.set(inner.depth.get() + 1),
            Some(_) => return false,
            None => {
                inner.owner.set(Some(me));
                inner.depth.set(1);
            }
        }
        true
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> Result<RLockGuard, Error> {
        if self.try_lock(getcurrent().id()) {
            return Ok(self.guard());
        }
        let inner = &*self.inner;
        // Woken, the lock was handed to us; if we cannot take it, it goes on.
        if !inner
            .waiters
            .wait(&"re-entrant lock", deadline, || inner.release_level())?
        {
            return Err(Error::Timeout);
        }
        Ok(self.guard())
    }

    /// Releases one level acquired by hand (see [`RLockGuard::forget`]).
    ///
    /// # Errors
    /// [`LockError::NotOwner`] if another greenlet owns it, [`LockError::NotLocked`] if
    /// nobody does.
    pub fn release(&self) -> Result<(), LockError> {
        match self.owner() {
            None => Err(LockError::NotLocked),
            Some(id) if id != getcurrent().id() => Err(LockError::NotOwner),
            Some(_) => {
                self.inner.release_level();
                Ok(())
            }
        }
    }

    /// Does the running greenlet own it?
    pub fn is_owned(&self) -> bool {
        self.owner() == Some(getcurrent().id())
    }

    /// Is it owned by some greenlet?
    pub fn locked(&self) -> bool {
        self.inner.owner.get().is_some()
    }

    /// The id of the owning greenlet.
    pub fn owner(&self) -> Option<u64> {
        self.inner.owner.get()
    }
}
