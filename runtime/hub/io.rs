//! I/O readiness: the table of registered fds and the greenlets waiting on them.
//!
//! mio is edge-triggered, so each registration remembers the readiness it has seen;
//! an operation that gets `WouldBlock` clears it (`clear_ready`) and then waits
//! (`wait_io`). With one thread per hub there is no race between the two.

use std::cell::{Cell, RefCell};
use std::io;
use std::time::Instant;

use slab::Slab;

use super::{Hub, Waiter, Wake};

/// Which way a greenlet waits on an fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Waiting to read (or accept).
    Read,
    /// Waiting to write (or for a connect to finish).
    Write,
}

#[derive(Default)]
pub(super) struct Slot {
    /// The fd, for `dump()` (-1 when not known).
    pub(super) fd: i32,
    pub(super) readable: bool,
    pub(super) writable: bool,
    /// `epoll` has reported the read side closed (`EPOLLRDHUP`, `EPOLLHUP`) or an error:
    /// sticky, since no later edge will come for it.
    read_closed: bool,
    /// A read returned less than it asked for since the last read edge, and the read
    /// side is not closed: the socket is known not to be readable (see
    /// [`Hub::note_short_read`]).
    drained: bool,
    reader: Option<Waiter>,
    writer: Option<Waiter>,
    /// Waits of the libc hooks (see `raw`): any number, in either or both directions.
    pub(super) raw: Vec<RawWait>,
}

/// One hooked call's wait on a slot.
pub(super) struct RawWait {
    pub(super) waiter: Waiter,
    pub(super) read: bool,
    pub(super) write: bool,
}

#[derive(Default)]
pub(crate) struct IoTable {
    pub(super) slots: RefCell<Slab<Slot>>,
    pub(super) waiting: Cell<usize>,
}

impl IoTable {
    /// How many greenlets are parked on I/O.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.get()
    }

    pub(crate) fn dispatch(&self, event: &mio::event::Event) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(event.token().0) else {
            return; // deregistered meanwhile
        };
        let closed = event.is_error() || event.is_read_closed() || event.is_write_closed();
        if event.is_readable() || closed {
            slot.readable = true;
            slot.drained = false;
            slot.read_closed |= event.is_read_closed() || event.is_error();
            if let Some(w) = slot.reader.take() {
                w.wake(Wake::Io);
            }
        }
        if event.is_writable() || closed {
            slot.writable = true;
            if let Some(w) = slot.writer.take() {
                w.wake(Wake::Io);
            }
        }
        if !slot.raw.is_empty() {
            let (r, w) = (event.is_readable() || closed, event.is_writable() || closed);
            // The woken stay listed (their waits end with them and clean up): no waiter
            // is dropped while the table is borrowed.
            for wait in &slot.raw {
                if (wait.read && r) || (wait.write && w) {
                    wait.waiter.wake_listed(Wake::Io);
                }
            }
        }
    }
}

impl Slot {
    /// Wakes every greenlet waiting on the slot (its fd is going away).
    pub(super) fn wake_all(self) {
        for w in [self.reader, self.writer].into_iter().flatten() {
            w.wake(Wake::Io);
        }
        for wait in self.raw {
            wait.waiter.wake(Wake::Io);
        }
    }
}

impl Hub {
    /// Registers `source` for read and write readiness, naming its fd for `dump()`;
    /// returns its token.
    pub(crate) fn register_io_fd(
        &self,
        source: &mut impl mio::event::Source,
        fd: i32,
    ) -> io::Result<usize> {
        let token = self.io.slots.borrow_mut().insert(Slot {
            fd,
            ..Slot::default()
        });
        let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .borrow()
            .registry()
            .register(source, mio::Token(token), interest)
        {
            self.io.slots.borrow_mut().remove(token);
            return Err(e);
        }
        Ok(token)
    }

    /// Deregisters `source`; a greenlet still waiting on it is woken (its retry then fails).
    pub(crate) fn deregister_io(&self, source: &mut impl mio::event::Source, token: usize) {
        let _ = self.poll.borrow().registry().deregister(source);
        let slot = self.io.slots.borrow_mut().try_remove(token);
        if let Some(slot) = slot {
            slot.wake_all();
        }
    }

    /// Forgets the readiness seen in `direction` (call after an operation got `WouldBlock`).
    pub(crate) fn clear_ready(&self, token: usize, direction: Direction) {
        if let Some(slot) = self.io.slots.borrow_mut().get_mut(token) {
            match direction {
                Direction::Read => slot.readable = false,
                Direction::Write => slot.writable = false,
            }
        }
    }

    /// A stream read on `token` returned less than it asked for (and more than nothing):
    /// the socket's receive queue was empty then, so until the next read edge a read can
    /// skip its `read` system call and wait (tokio's rule). Not once `epoll` has reported
    /// the read side closed or an error: that edge came already and no other will, so
    /// the end-of-file (or error) must be read, not waited for.
    pub(crate) fn note_short_read(&self, token: usize) {
        if let Some(slot) = self.io.slots.borrow_mut().get_mut(token)
            && !slot.read_closed
        {
            slot.readable = false;
            slot.drained = true;
        }
    }

    /// Is `token` known not to be readable (a short read, no read edge since)?
    pub(crate) fn is_drained(&self, token: usize) -> bool {
        self.io
            .slots
            .borrow()
            .get(token)
            .is_some_and(|slot| slot.drained && !slot.readable)
    }

    /// Waits until `token` is ready in `direction`, or `deadline` passes.
    ///
    /// # Errors
    /// `TimedOut` at the deadline or when a `Timeout` scope expires; `ResourceBusy` when
    /// another greenlet already waits in the same direction on this fd (gevent's
    /// `ConcurrentObjectUseError`); `Other` when the wait can never end.
    pub(crate) fn wait_io(
        &self,
        token: usize,
        direction: Direction,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        match self.wait_io_until(token, direction, deadline)? {
            true => Ok(()),
            false => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out waiting for the socket",
            )),
        }
    }

    /// As [`wait_io`](Hub::wait_io), but the wait's own `deadline` passing is `Ok(false)`
    /// rather than an error, so that the caller can tell it from a `Timeout` scope's
    /// expiry (still `Err(TimedOut)`) and answer as it must (std's `EAGAIN` for a socket
    /// timeout). `Ok(true)`: ready (or deregistered; the retry tells).
    ///
    /// # Errors
    /// As `wait_io`, but for the deadline.
    pub(crate) fn wait_io_until(
        &self,
        token: usize,
        direction: Direction,
        deadline: Option<Instant>,
    ) -> io::Result<bool> {
        let waiter = {
            let mut slots = self.io.slots.borrow_mut();
            let Some(slot) = slots.get_mut(token) else {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the socket was closed",
                ));
            };
            let fd = slot.fd;
            let (ready, place) = match direction {
                Direction::Read => (slot.readable, &mut slot.reader),
                Direction::Write => (slot.writable, &mut slot.writer),
            };
            if ready {
                return Ok(true);
            }
            if place.as_ref().is_some_and(Waiter::is_waiting) {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "another greenlet is already waiting to {} on this socket",
                        match direction {
                            Direction::Read => "read",
                            Direction::Write => "write",
                        }
                    ),
                ));
            }
            let waiter = self.begin_wait_on(super::WaitOn::Io { fd, direction });
            *place = Some(waiter.clone());
            waiter
        };
        self.io.waiting.set(self.io.waiting.get() + 1);
        // Clears our place (and the count) however the wait ends, unwinding included.
        let _cleanup = IoWaitCleanup {
            hub: self,
            token,
            direction,
            seq: waiter.seq,
        };
        match self.park(&waiter, deadline) {
            Ok(Wake::Timer) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

struct IoWaitCleanup<'a> {
    hub: &'a Hub,
    token: usize,
    direction: Direction,
    seq: u64,
}

impl Drop for IoWaitCleanup<'_> {
    fn drop(&mut self) {
        let io = &self.hub.io;
        io.waiting.set(io.waiting.get() - 1);
        if let Some(slot) = io.slots.borrow_mut().get_mut(self.token) {
            let place = match self.direction {
                Direction::Read => &mut slot.reader,
                Direction::Write => &mut slot.writer,
            };
            if place.as_ref().is_some_and(|w| w.seq == self.seq) {
                *place = None;
            }
        }
    }
}
