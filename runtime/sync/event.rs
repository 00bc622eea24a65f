//! [`Event`] and [`AsyncResult`]: wake every waiter when something happens (gevent's
//! `gevent.event`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::wait::{WaitList, deadline_in};
use crate::error::{Error, PanicPayload};

/// A flag that greenlets can wait for (gevent's `Event`): [`wait`](Event::wait) blocks
/// until another greenlet calls [`set`](Event::set), which wakes every waiter (in the order
/// they started waiting). The flag stays set until [`clear`](Event::clear).
///
/// Cloning an `Event` makes another handle to the same flag. An `Event` belongs to its
/// thread's hub; it is `!Send`.
///
/// ```
/// use greenhub::{spawn, sync::Event};
/// let ready = Event::new();
/// let r = ready.clone();
/// let waiter = spawn(move || {
///     r.wait().unwrap();
///     "went"
/// });
/// ready.set();
/// assert_eq!(waiter.join().unwrap(), "went");
/// assert!(ready.is_set());
/// ```
///
/// It cannot be sent to another thread:
///
/// ```compile_fail,E0277
/// fn assert_send<T: Send>(_: T) {}
/// assert_send(greenhub::sync::Event::new());
/// ```
#[derive(Clone, Default)]
pub struct Event {
    inner: Rc<EventInner>,
}

#[derive(Default)]
struct EventInner {
    flag: Cell<bool>,
    waiters: WaitList,
}

impl Event {
    /// A new event, not set.
    pub fn new() -> Event {
        Event::default()
    }

    /// Sets the flag and wakes every greenlet waiting for it. Later waits return at once.
    pub fn set(&self) {
        self.inner.flag.set(true);
        self.inner.waiters.notify_all();
    }

    /// Clears the flag: later waits block until the next [`set`](Event::set). Greenlets
    /// already woken by a `set` still return `Ok`.
    pub fn clear(&self) {
        self.inner.flag.set(false);
    }

    /// Is the flag set?
    pub fn is_set(&self) -> bool {
        self.inner.flag.get()
    }

    /// Waits cooperatively until the flag is set (returns at once if it is).
    ///
    /// # Errors
    /// [`Error::Timeout`] if an enclosing [`Timeout`](crate::Timeout) scope expires,
    /// [`Error::BlockForever`] if nothing can ever set it (waiting in the main greenlet
    /// with nothing else to run).
    pub fn wait(&self) -> Result<(), Error> {
        self.wait_until(None)
    }

    /// Like [`wait`](Event::wait), for at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the flag is still not set when `timeout` has passed; as
    /// [`wait`](Event::wait) otherwise.
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenhub::{Error, sync::Event};
    /// let e = Event::new();
    /// assert!(matches!(e.wait_timeout(Duration::from_millis(5)), Err(Error::Timeout)));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_until(Some(deadline_in(timeout)))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<(), Error> {
        if self.is_set() {
            return Ok(());
        }
        match self.inner.waiters.wait(&"event", deadline, || {})? {
            true => Ok(()),
            false => Err(Error::Timeout),
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

/// A one-time result that greenlets can wait for (gevent's `AsyncResult`): a value or an
/// error, set by one greenlet, read by any number of others.
///
/// [`get`](AsyncResult::get) waits until it is set, then returns a clone of the value, or
/// the error. Setting it again replaces the outcome and wakes new waiters.
///
/// Cloning makes another handle to the same result; it is `!Send`.
///
/// ```
/// use std::time::Duration;
/// use greenhub::{sleep, spawn, sync::AsyncResult};
/// let answer = AsyncResult::new();
/// let a = answer.clone();
/// spawn(move || {
///     sleep(Duration::from_millis(5));
///     a.set(42);
/// });
/// assert_eq!(answer.get().unwrap(), 42);
/// assert!(answer.ready() && answer.successful());
/// ```
pub struct AsyncResult<T> {
    inner: Rc<ResultInner<T>>,
}

struct ResultInner<T> {
    outcome: RefCell<Option<Result<T, Error>>>,
    waiters: WaitList,
}

impl<T> Clone for AsyncResult<T> {
    fn clone(&self) -> Self {
        AsyncResult {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Default for AsyncResult<T> {
    fn default() -> Self {
        AsyncResult::new()
    }
}

impl<T> AsyncResult<T> {
    /// A result that is not set yet.
    pub fn new() -> AsyncResult<T> {
        AsyncResult {
            inner: Rc::new(ResultInner {
                outcome: RefCell::new(None),
                waiters: WaitList::new(),
            }),
        }
    }

    /// Stores `value` and wakes every waiter.
    pub fn set(&self, value: T) {
        self.settle(Ok(value));
    }

    /// Stores `error` and wakes every waiter: their `get` returns it.
    ///
    /// ```
    /// use greenhub::{Error, sync::AsyncResult};
    /// let r: AsyncResult<u8> = AsyncResult::new();
    /// r.set_error(Error::custom("no answer"));
    /// assert!(r.ready() && !r.successful());
    /// assert_eq!(r.get().unwrap_err().to_string(), "no answer");
    /// ```
    pub fn set_error(&self, error: Error) {
        self.settle(Err(error));
    }

    fn settle(&self, outcome: Result<T, Error>) {
        let old = self.inner.outcome.replace(Some(outcome));
        drop(old);
        self.inner.waiters.notify_all();
    }

    /// Has it been set (with a value or an error)?
    pub fn ready(&self) -> bool {
        self.inner.outcome.borrow().is_some()
    }

    /// Has it been set with a value?
    pub fn successful(&self) -> bool {
        matches!(*self.inner.outcome.borrow(), Some(Ok(_)))
    }

    /// Waits cooperatively until it is set (returns at once if it is); the outcome is not
    /// consumed.
    ///
    /// # Errors
    /// [`Error::Timeout`] if an enclosing [`Timeout`](crate::Timeout) scope expires,
    /// [`Error::BlockForever`] if nothing can ever set it.
    pub fn wait(&self) -> Result<(), Error> {
        self.wait_until(None)
    }

    /// Like [`wait`](AsyncResult::wait), for at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is still not set when `timeout` has passed.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_until(Some(deadline_in(timeout)))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<(), Error> {
        loop {
            if self.ready() {
                return Ok(());
            }
            // Woken: set (or set and taken again meanwhile: wait on).
            if !self.inner.waiters.wait(&"async result", deadline, || {})? {
                return Err(Error::Timeout);
            }
        }
    }

    /// Takes the outcome out (the error as it was set, with its panic payload, if any);
    /// the result is unset again. `None` if it is not set.
    pub fn take(&self) -> Option<Result<T, Error>> {
        self.inner.outcome.borrow_mut().take()
    }
}

impl<T: Clone> AsyncResult<T> {
    /// Waits until it is set, then returns a clone of the value, or the error.
    ///
    /// Every caller gets the outcome: an error is handed out as a copy that keeps its
    /// variant and message (a panic payload becomes its message as a `String`, a
    /// [`Error::Custom`] error becomes its message); [`take`](AsyncResult::take) gives
    /// the original.
    ///
    /// # Errors
    /// The error it was set with; [`Error::Timeout`] or [`Error::BlockForever`] if the wait
    /// fails (see [`wait`](AsyncResult::wait)).
    pub fn get(&self) -> Result<T, Error> {
        self.wait()?;
        self.peek()
    }

    /// Like [`get`](AsyncResult::get), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is not set in time; as [`get`](AsyncResult::get) otherwise.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.wait_timeout(timeout)?;
        self.peek()
    }

    /// The outcome if it is set, without waiting (gevent's `get_nowait`).
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is not set yet; the error it was set with.
    pub fn get_nowait(&self) -> Result<T, Error> {
        self.peek()
    }

    /// The value, if it is set with one (gevent's `value`).
    pub fn value(&self) -> Option<T> {
        match &*self.inner.outcome.borrow() {
            Some(Ok(v)) => Some(v.clone()),
            _ => None,
        }
    }

    fn peek(&self) -> Result<T, Error> {
        match &*self.inner.outcome.borrow() {
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(e)) => Err(copy_error(e)),
            None => Err(Error::Timeout),
        }
    }
}

impl<T> fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.inner.outcome.borrow() {
            None => "unset",
            Some(Ok(_)) => "value",
            Some(Err(_)) => "error",
        };
        f.debug_struct("AsyncResult")
            .field("state", &state)
            .finish()
    }
}

/// A copy of `e` for another reader: same variant and message.
pub(crate) fn copy_error(e: &Error) -> Error {
    #[allow(unreachable_patterns)] // `Error` is non-exhaustive for other crates
    match e {
        Error::DeadGreenlet { id } => Error::DeadGreenlet { id: *id },
        Error::CyclicParent { id, parent } => Error::CyclicParent {
            id: *id,
            parent: *parent,
        },
        Error::MainGreenletParent => Error::MainGreenletParent,
        Error::Killed => Error::Killed,
        Error::Timeout => Error::Timeout,
        Error::Closed => Error::Closed,
        Error::BlockForever => Error::BlockForever,
        Error::Panicked(p) => Error::Panicked(PanicPayload::new(Box::new(
            p.message().unwrap_or("<non-string payload>").to_string(),
        ))),
        other => Error::custom(other.to_string()),
    }
}
