//! Waits for the libc hooks (`crate::monkey`, the `monkey` feature).
//!
//! A hook is an `extern "C"` function with C frames possibly below it, so nothing may
//! unwind out of it: [`no_unwind`] turns a kill delivered by unwinding into
//! [`Error::Killed`] and leaves the kill pending, so that it lands at the greenlet's next
//! switch point outside the hook. And a blocking libc call may have any number of callers
//! on one descriptor (several greenlets in `accept` on one listener, one reading while
//! another polls): each descriptor is registered once, by [`Hub::register_raw`], and
//! [`Hub::wait_raw`] lets any number of greenlets wait on any number of descriptors.
//!
//! A descriptor is registered with the hub of the thread that first waited on it; closing
//! it from another thread goes through [`close_elsewhere`], which deregisters it from that
//! hub's `epoll` before the descriptor is closed and wakes that hub's waiters.
// Only the libc hooks wait here; without them the hub still keeps the thread list.
#![cfg_attr(not(feature = "monkey"), allow(dead_code))]

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mio::unix::SourceFd;

use super::io::RawWait;
use super::remote::Remote;
use super::{HUB, Hub, HubHandle, WaitOn, Wake};
use crate::error::Error;
use crate::greenlet::GreenletExit;

thread_local! {
    /// This thread's hub id, 0 until the thread has a hub. Const-initialised with no
    /// destructor, so reading it never allocates, locks or runs lazy initialisation.
    static HUB_ID: Cell<u32> = const { Cell::new(0) };
    /// Has this thread's hub been entered in [`LISTED`]?
    static IS_LISTED: Cell<bool> = const { Cell::new(false) };
    /// Takes this thread's hub out of [`LISTED`] when the thread exits.
    static UNLIST: Unlist = const { Unlist };
}

static NEXT_HUB_ID: AtomicU32 = AtomicU32::new(1);

/// Hubs with descriptors registered by [`Hub::register_raw`]: what another thread needs
/// to deregister one of them (a clone of the hub's `epoll` registry, which stays valid
/// whatever the hub's thread does) and to wake the hub's waiters.
static LISTED: Mutex<Vec<Listed>> = Mutex::new(Vec::new());

struct Listed {
    id: u32,
    registry: mio::Registry,
    remote: Arc<Remote>,
}

struct Unlist;

impl Drop for Unlist {
    fn drop(&mut self) {
        forget_hub_thread();
    }
}

/// This thread's hub is gone (torn down at thread exit): hooks pass through from now on,
/// and other threads no longer find its registrations in [`LISTED`].
pub(crate) fn forget_hub_thread() {
    let id = HUB_ID.with(|id| id.replace(0));
    if id != 0 && IS_LISTED.with(|listed| listed.replace(false)) {
        let mut listed = LISTED.lock().unwrap_or_else(|e| e.into_inner());
        listed.retain(|l| l.id != id);
    }
}

/// Gives this thread's new hub its id (called once, when the hub is made).
pub(crate) fn note_hub_thread() {
    HUB_ID.with(|id| id.set(NEXT_HUB_ID.fetch_add(1, Ordering::Relaxed)));
}

/// This thread's hub id; 0 when the thread has no hub. A load, nothing else.
#[inline]
pub(crate) fn thread_hub_id() -> u32 {
    HUB_ID.with(Cell::get)
}

/// This thread's hub, if the running greenlet can block on it: the thread has a hub
/// (made and not torn down), and the running greenlet is not the hub itself. (A greenlet
/// being killed by force parks too: its switch away fails, or gives it up to its killer,
/// which leaks its stack — never a real blocking call that could hang the thread.)
/// Never creates anything.
pub(crate) fn cooperative_hub() -> Option<Rc<Hub>> {
    if thread_hub_id() == 0 {
        return None;
    }
    let hub = HUB.try_with(|cell| cell.get().cloned()).ok().flatten()?;
    let me = crate::greenlet::signal_safe_identity().id;
    if me == 0 || me == hub.greenlet.id() {
        return None;
    }
    Some(hub)
}

/// This thread's hub, if it has one (whatever greenlet is running).
pub(crate) fn this_thread_hub() -> Option<Rc<Hub>> {
    if thread_hub_id() == 0 {
        return None;
    }
    HUB.try_with(|cell| cell.get().cloned()).ok().flatten()
}

/// Runs `f` (a wait on the hub) so that nothing unwinds out of it.
///
/// A kill is reported once: the wait it cuts short fails with [`Error::Killed`], and the
/// kill stays pending for the next switch point outside the hooks (which unwinds). Until
/// then later hooked waits go on as usual, so that code retrying a failed call in a loop
/// does not spin; another kill request fails one more wait.
///
/// # Errors
/// `f`'s error; [`Error::Killed`] when the greenlet was killed during `f`;
/// [`Error::Panicked`] when a panic was raised at the greenlet's switch point (a child
/// greenlet's, reported here).
pub(crate) fn no_unwind<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let task = super::with_hub(|hub| hub.current_task());
    let hidden = task.kill_reported.get() && task.kill_pending.replace(false);
    let outcome = catch_unwind(AssertUnwindSafe(f));
    if hidden && outcome.is_ok() {
        task.kill_pending.set(true);
    }
    match outcome {
        Ok(r) => r,
        Err(payload) if payload.is::<GreenletExit>() => {
            task.kill_pending.set(true);
            task.kill_reported.set(true);
            Err(Error::Killed)
        }
        Err(payload) => {
            let msg =
                crate::error::panic_payload_str(payload.as_ref()).unwrap_or("<non-string payload>");
            eprintln!(
                "greenhub: a panic reached greenlet #{} while it was blocked in a hooked libc \
                 call, which fails instead: {msg}",
                crate::greenlet::getcurrent().id()
            );
            Err(Error::Panicked(payload.into()))
        }
    }
}

/// Sleeps the running greenlet until `deadline` without unwinding (see [`no_unwind`]).
///
/// # Errors
/// [`Error::Timeout`] when a `Timeout` scope expires first; [`Error::Killed`] on a kill.
pub(crate) fn sleep_until(deadline: Instant) -> Result<(), Error> {
    no_unwind(|| super::sleep_until(deadline))
}

/// Lets the other ready greenlets run once, without unwinding (see [`no_unwind`]).
///
/// # Errors
/// As [`sleep_until`].
pub(crate) fn yield_now() -> Result<(), Error> {
    no_unwind(super::yield_now)
}

/// One descriptor a hooked call waits on, and in which directions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawInterest {
    /// Its token from [`Hub::register_raw`].
    pub(crate) token: usize,
    /// Its fd (for `dump()`).
    pub(crate) fd: RawFd,
    pub(crate) read: bool,
    pub(crate) write: bool,
}

impl Hub {
    /// Registers `fd` with this hub's `epoll` (edge-triggered, both directions) for the
    /// hooks' waits; returns its token. One registration per descriptor, kept until
    /// [`deregister_raw`](Hub::deregister_raw).
    ///
    /// A registration this `epoll` already has for the same descriptor and file (left by
    /// a close the hooks did not see, the file being open elsewhere) is taken over.
    ///
    /// # Errors
    /// `epoll_ctl`'s (`EPERM` for a regular file).
    pub(crate) fn register_raw(&self, fd: RawFd) -> io::Result<usize> {
        self.list_for_hooks()?;
        match self.register_io_fd(&mut SourceFd(&fd), fd) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let mut slot = super::io::Slot::default();
                slot.fd = fd;
                let token = self.io.slots.borrow_mut().insert(slot);
                let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
                let taken = self.poll.borrow().registry().reregister(
                    &mut SourceFd(&fd),
                    mio::Token(token),
                    interest,
                );
                if let Err(e) = taken {
                    self.io.slots.borrow_mut().remove(token);
                    return Err(e);
                }
                Ok(token)
            }
            r => r,
        }
    }

    /// Deregisters `fd` (still open) and wakes its waiters; `false` if the hub is busy
    /// right now (called from inside one of its own operations), and nothing was done.
    pub(crate) fn deregister_raw(&self, fd: RawFd, token: usize) -> bool {
        let Ok(poll) = self.poll.try_borrow() else {
            return false;
        };
        let Ok(mut slots) = self.io.slots.try_borrow_mut() else {
            return false;
        };
        let _ = poll.registry().deregister(&mut SourceFd(&fd));
        let slot = slots.try_remove(token);
        drop((slots, poll));
        if let Some(slot) = slot {
            slot.wake_all();
        }
        true
    }

    /// Forgets a token whose descriptor another thread has deregistered; wakes its waiters.
    fn forget_raw(&self, token: usize) {
        let slot = self.io.slots.borrow_mut().try_remove(token);
        if let Some(slot) = slot {
            slot.wake_all();
        }
    }

    /// Forgets the readiness seen on `token` in the given directions (the call that waits
    /// next has just been told "not ready" by the kernel).
    pub(crate) fn clear_raw_ready(&self, token: usize, read: bool, write: bool) {
        if let Some(slot) = self.io.slots.borrow_mut().get_mut(token) {
            slot.readable &= !read;
            slot.writable &= !write;
        }
    }

    /// Parks the running greenlet until one of `waits` is ready (as far as the hub has
    /// seen since the last [`clear_raw_ready`](Hub::clear_raw_ready)), `deadline` passes,
    /// or the wait is cut short; never unwinds.
    ///
    /// Returns `Ok(Wake::Timer)` at `deadline`, `Ok(_)` otherwise (retry the call).
    ///
    /// # Errors
    /// [`Error::Closed`] when a descriptor's registration is gone (it was closed);
    /// [`Error::Timeout`] when a `Timeout` scope expires; [`Error::Killed`] on a kill (left
    /// pending); [`Error::BlockForever`] when nothing can wake it.
    pub(crate) fn wait_raw(
        &self,
        waits: &[RawInterest],
        deadline: Option<Instant>,
    ) -> Result<Wake, Error> {
        let (fd, direction) = waits.first().map_or((-1, super::Direction::Read), |w| {
            let d = if w.read {
                super::Direction::Read
            } else {
                super::Direction::Write
            };
            (w.fd, d)
        });
        let waiter = self.begin_wait_on(WaitOn::Io { fd, direction });
        let (mut ready, mut gone) = (false, false);
        {
            let mut slots = self.io.slots.borrow_mut();
            for w in waits {
                match slots.get(w.token) {
                    None => gone = true,
                    Some(s) => ready |= (w.read && s.readable) || (w.write && s.writable),
                }
            }
            if !ready && !gone {
                for w in waits {
                    slots[w.token].raw.push(RawWait {
                        waiter: waiter.clone(),
                        read: w.read,
                        write: w.write,
                    });
                }
            }
        }
        if ready || gone {
            waiter.task.waiting.set(0);
            return if gone {
                Err(Error::Closed)
            } else {
                Ok(Wake::Io)
            };
        }
        self.io.waiting.set(self.io.waiting.get() + 1);
        let _cleanup = RawWaitCleanup {
            hub: self,
            waits,
            seq: waiter.seq,
        };
        no_unwind(|| self.park(&waiter, deadline))
    }

    /// Enters this hub in [`LISTED`], once.
    fn list_for_hooks(&self) -> io::Result<()> {
        if IS_LISTED.with(Cell::get) {
            return Ok(());
        }
        let registry = self.poll.borrow().registry().try_clone()?;
        let entry = Listed {
            id: thread_hub_id(),
            registry,
            remote: self.remote.clone(),
        };
        LISTED.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
        IS_LISTED.with(|l| l.set(true));
        UNLIST.with(|_| ());
        Ok(())
    }
}

/// Takes a finished raw wait off its slots, however the wait ended.
struct RawWaitCleanup<'a> {
    hub: &'a Hub,
    waits: &'a [RawInterest],
    seq: u64,
}

impl Drop for RawWaitCleanup<'_> {
    fn drop(&mut self) {
        let io = &self.hub.io;
        io.waiting.set(io.waiting.get() - 1);
        let mut slots = io.slots.borrow_mut();
        for w in self.waits {
            if let Some(slot) = slots.get_mut(w.token) {
                // The running task owns another handle to itself: nothing is freed here.
                slot.raw.retain(|r| r.waiter.seq != self.seq);
            }
        }
    }
}

/// Deregisters `fd` (still open) from hub `hub_id`'s `epoll`, from any thread (or from
/// that hub's own thread while it is busy), and has that hub forget `token` and wake its
/// waiters. Does nothing if that hub is gone. Takes a lock: not for signal handlers (see
/// [`close_in_signal_handler`]).
pub(crate) fn close_elsewhere(hub_id: u32, fd: RawFd, token: usize) {
    let listed = LISTED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(l) = listed.iter().find(|l| l.id == hub_id) else {
        return;
    };
    let _ = l.registry.deregister(&mut SourceFd(&fd));
    let handle = HubHandle::uncounted(l.remote.clone());
    drop(listed);
    handle.spawn(move || super::with_hub(|hub| hub.forget_raw(token)));
}

/// [`close_elsewhere`] for a signal handler: deregisters `fd` only if the lock is free
/// (waiters on it are not woken: that would allocate).
pub(crate) fn close_in_signal_handler(hub_id: u32, fd: RawFd) {
    if let Ok(listed) = LISTED.try_lock()
        && let Some(l) = listed.iter().find(|l| l.id == hub_id)
    {
        let _ = l.registry.deregister(&mut SourceFd(&fd));
    }
}
