//! [`Channel`]: a rendezvous between greenlets (gevent's `Channel`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::queue::{GetError, PutError};
use super::wait::{WaitList, deadline_in};
use crate::hub::{WaitOn, Waiter, Wake, current_hub};

/// A rendezvous channel (gevent's `Channel`, a queue of size 0): `put` waits until a
/// getter takes the item, `get` waits until a putter offers one. Both wait in FIFO order
/// and accept a timeout; [`close`](Channel::close) works as for [`Queue`](super::Queue).
///
/// Cloning makes another handle to the same channel; it is `!Send`.
///
/// ```
/// use greenhub::{spawn, sync::Channel};
/// let ch = Channel::new();
/// let tx = ch.clone();
/// let sender = spawn(move || {
///     tx.put("hello").unwrap(); // returns once the main greenlet has taken it
///     "delivered"
/// });
/// assert_eq!(ch.get().unwrap(), "hello");
/// assert_eq!(sender.join().unwrap(), "delivered");
/// ```
pub struct Channel<T> {
    inner: Rc<Inner<T>>,
}

struct Inner<T> {
    /// Items handed to woken getters (and, rarely, ones a woken getter could not take).
    handed: RefCell<VecDeque<T>>,
    /// How many of `handed` are promised to woken getters.
    grants: Cell<usize>,
    /// Putters waiting for a taker, with their items.
    offers: RefCell<VecDeque<(Waiter, T)>>,
    getters: WaitList,
    closed: Cell<bool>,
}

impl<T> Clone for Channel<T> {
    fn clone(&self) -> Self {
        Channel {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Default for Channel<T> {
    fn default() -> Self {
        Channel::new()
    }
}

impl<T> fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("waiting_putters", &self.inner.offers.borrow().len())
            .field("closed", &self.inner.closed.get())
            .finish()
    }
}

impl<T> Channel<T> {
    /// A new, open channel.
    pub fn new() -> Channel<T> {
        Channel {
            inner: Rc::new(Inner {
                handed: RefCell::new(VecDeque::new()),
                grants: Cell::new(0),
                offers: RefCell::new(VecDeque::new()),
                getters: WaitList::new(),
                closed: Cell::new(false),
            }),
        }
    }

    /// Offers `item` and waits cooperatively until a getter takes it.
    ///
    /// # Errors
    /// [`PutError::Closed`] if the channel is (or gets) closed before a getter took it;
    /// [`PutError::Timeout`] if an enclosing [`Timeout`](crate::Timeout) scope expires;
    /// [`PutError::Other`] with [`Error::BlockForever`](crate::Error::BlockForever) if
    /// nothing can ever take it. The item comes back in the error.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, None, true)
    }

    /// Like [`put`](Channel::put), waiting at most `timeout` for a taker.
    ///
    /// # Errors
    /// [`PutError::Timeout`] if nobody took it within `timeout`; as [`put`](Channel::put)
    /// otherwise.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_until(item, Some(deadline_in(timeout)), true)
    }

    /// Hands `item` to a getter that is waiting now, without waiting.
    ///
    /// # Errors
    /// [`PutError::Full`] if no getter is waiting, [`PutError::Closed`] if the channel is
    /// closed.
    pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, None, false)
    }

    fn put_until(&self, item: T, deadline: Option<Instant>, wait: bool) -> Result<(), PutError<T>> {
        let inner = &*self.inner;
        if inner.closed.get() {
            return Err(PutError::Closed(item));
        }
        if inner.getters.notify_one() {
            inner.handed.borrow_mut().push_back(item);
            inner.grants.set(inner.grants.get() + 1);
            return Ok(());
        }
        if !wait {
            return Err(PutError::Full(item));
        }
        let hub = current_hub();
        let waiter = hub.begin_wait_on(WaitOn::Sync(&"channel (put)"));
        let seq = waiter.seq;
        inner.offers.borrow_mut().push_back((waiter.clone(), item));
        // Withdraws the offer however the wait ends (a kill drops the item with it).
        let guard = Offer { inner, seq };
        let r = hub.park(&waiter, deadline);
        let offered = guard.withdraw();
        drop(guard);
        match (offered, r) {
            (None, _) => Ok(()), // a getter took it
            (Some(item), _) if inner.closed.get() => Err(PutError::Closed(item)),
            (Some(item), Err(e)) => Err(PutError::from_wait(e, item)),
            (Some(item), Ok(_)) => Err(PutError::Timeout(item)),
        }
    }

    /// Takes an item from the first waiting putter, waiting cooperatively until one comes.
    ///
    /// # Errors
    /// [`GetError::Closed`] once the channel is closed (and nothing is left);
    /// [`GetError::Timeout`] if an enclosing [`Timeout`](crate::Timeout) scope expires;
    /// [`GetError::Other`] with [`Error::BlockForever`](crate::Error::BlockForever) if
    /// nothing can ever put.
    pub fn get(&self) -> Result<T, GetError> {
        self.get_until(None, true)
    }

    /// Like [`get`](Channel::get), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`GetError::Timeout`] if no putter came within `timeout`; as [`get`](Channel::get)
    /// otherwise.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_until(Some(deadline_in(timeout)), true)
    }

    /// Takes an item from a putter that is waiting now, without waiting.
    ///
    /// # Errors
    /// [`GetError::Empty`] if no putter is waiting, [`GetError::Closed`] if the channel is
    /// closed.
    pub fn get_nowait(&self) -> Result<T, GetError> {
        self.get_until(None, false)
    }

    /// An iterator that [`get`](Channel::get)s items until the channel is closed (or a
    /// `get` fails).
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.get().ok())
    }

    fn get_until(&self, deadline: Option<Instant>, wait: bool) -> Result<T, GetError> {
        let inner = &*self.inner;
        loop {
            if inner.handed.borrow().len() > inner.grants.get() {
                return Ok(inner.handed.borrow_mut().pop_front().expect("counted"));
            }
            if let Some(item) = self.take_offer() {
                return Ok(item);
            }
            if inner.closed.get() {
                return Err(GetError::Closed);
            }
            if !wait {
                return Err(GetError::Empty);
            }
            let give_back = || {
                if inner.grants.get() > 0 {
                    inner.grants.set(inner.grants.get() - 1);
                    if inner.getters.notify_one() {
                        inner.grants.set(inner.grants.get() + 1);
                    }
                }
            };
            match inner.getters.wait(&"channel (get)", deadline, give_back) {
                Ok(true) if inner.grants.get() > 0 => {
                    inner.grants.set(inner.grants.get() - 1);
                    return Ok(inner.handed.borrow_mut().pop_front().expect("granted"));
                }
                Ok(true) => continue, // woken by close()
                Ok(false) => return Err(GetError::Timeout),
                Err(e) => return Err(GetError::from_wait(e)),
            }
        }
    }

    /// Takes the item of the first putter still waiting, and wakes it.
    fn take_offer(&self) -> Option<T> {
        let mut offers = self.inner.offers.borrow_mut();
        // A putter whose wait already ended (timed out, killed) withdraws its own offer.
        let i = offers.iter().position(|(w, _)| w.is_waiting())?;
        let (w, item) = offers.remove(i).expect("found");
        w.wake(Wake::Ready);
        Some(item)
    }

    /// Closes the channel: waiting and later putters get their item back in
    /// [`PutError::Closed`]; getters get what was already handed over, then
    /// [`GetError::Closed`].
    pub fn close(&self) {
        let inner = &*self.inner;
        if inner.closed.replace(true) {
            return;
        }
        inner.getters.notify_all();
        for (w, _) in inner.offers.borrow().iter() {
            w.wake_listed(Wake::Ready);
        }
    }

    /// Has [`close`](Channel::close) been called?
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// How many putters are waiting for a taker (gevent's `balance` when positive).
    pub fn waiting_putters(&self) -> usize {
        self.inner
            .offers
            .borrow()
            .iter()
            .filter(|(w, _)| w.is_waiting())
            .count()
    }

    /// How many getters are waiting for a putter.
    pub fn waiting_getters(&self) -> usize {
        self.inner.getters.live()
    }
}

/// A putter's offer in the channel, withdrawn when the put ends (unwinding included).
struct Offer<'a, T> {
    inner: &'a Inner<T>,
    seq: u64,
}

impl<T> Offer<'_, T> {
    /// Takes the item back, if no getter has taken it.
    fn withdraw(&self) -> Option<T> {
        let mut offers = self.inner.offers.borrow_mut();
        let i = offers.iter().position(|(w, _)| w.seq == self.seq)?;
        offers.remove(i).map(|(_, item)| item)
    }
}

impl<T> Drop for Offer<'_, T> {
    fn drop(&mut self) {
        let item = self.withdraw();
        drop(item);
    }
}
