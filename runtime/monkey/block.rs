//! The one loop behind every hooked call that may block on a descriptor: decide how the
//! call runs ([`plan`]), then run the non-blocking operation until it does not fail with
//! `EAGAIN`, waiting in between — on the hub (cooperating) or in the real `ppoll`
//! (emulating the blocking call the user asked for on a thread that cannot cooperate).

use std::rc::Rc;
use std::time::{Duration, Instant};

use libc::{c_int, ssize_t};

use super::context::{self, Busy, errno, set_errno};
use super::fdtable::{self, Entry, OTHER, Reg, SOCKET, STREAM, SYS_NONBLOCK, State, USER_NONBLOCK};
use super::real;
use crate::error::Error;
use crate::hub::raw::{self, RawInterest};
use crate::hub::{Hub, Wake};

/// How long a wait on a descriptor registered with another thread's hub lasts before it
/// looks again whether the descriptor was closed (that hub is the one told of it).
const FOREIGN_SLICE: Duration = Duration::from_millis(100);

/// How a call that may block waits.
pub(super) enum How {
    /// On this thread's hub: other greenlets run meanwhile.
    Cooperate(Rc<Hub>),
    /// In the real `ppoll`: the thread blocks, as the user's blocking call would.
    Emulate,
}

/// A hooked call on a blocking-mode descriptor (in the user's view) that is non-blocking
/// in the kernel: it waits itself whenever the kernel says `EAGAIN`.
pub(super) struct Blocking {
    pub(super) fd: c_int,
    pub(super) entry: &'static Entry,
    generation: u32,
    pub(super) how: How,
    /// The call's deadline from `SO_RCVTIMEO`/`SO_SNDTIMEO`, fixed at its first wait.
    deadline: Option<Option<Instant>>,
    busy: Option<Busy>,
}

/// How a call on `fd` runs: `None` for the real call as is (the descriptor is not a
/// socket, the user made it non-blocking, greenhub never touched it and this call cannot
/// cooperate, or the table does not track it).
#[inline]
pub(super) fn plan(fd: c_int) -> Option<Blocking> {
    let entry = fdtable::entry(fd)?;
    let st = entry.state();
    if st.kind() == OTHER || st.has(USER_NONBLOCK) {
        return None;
    }
    if context::may_cooperate()
        && let Some(b) = cooperate(fd, entry)
    {
        return Some(b);
    }
    let st = entry.state();
    st.emulated().then_some(Blocking {
        fd,
        entry,
        generation: st.generation(),
        how: How::Emulate,
        deadline: None,
        busy: None,
    })
}

/// [`plan`] for a call that can cooperate: makes the socket non-blocking in the kernel.
#[inline(never)]
fn cooperate(fd: c_int, entry: &'static Entry) -> Option<Blocking> {
    let busy = Busy::enter();
    let hub = raw::cooperative_hub()?;
    let st = classify(fd, entry)?;
    if st.kind() != SOCKET || st.has(USER_NONBLOCK) {
        return None;
    }
    let st = make_nonblocking(fd, entry, st)?;
    Some(Blocking {
        fd,
        entry,
        generation: st.generation(),
        how: How::Cooperate(hub),
        deadline: None,
        busy: Some(busy),
    })
}

/// The entry's state, looking at the descriptor first if it never was: a socket (its
/// type, mode and timeouts read from the kernel) or something else. `None` if the
/// descriptor is not open. The standard streams are never treated as sockets: they are
/// shared with other processes.
pub(super) fn classify(fd: c_int, entry: &Entry) -> Option<State> {
    let st = entry.state();
    if st.kind() != fdtable::UNKNOWN {
        return Some(st);
    }
    let flags = if fd <= 2 {
        OTHER
    } else {
        match socket_type(fd) {
            Err(libc::ENOTSOCK) => OTHER,
            Err(_) => return None,
            Ok(ty) => {
                // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags.
                let fl = unsafe { real::fcntl()(fd, libc::F_GETFL, 0usize) };
                if fl < 0 {
                    return None;
                }
                entry.set_timeouts_us(
                    Some(timeout_option(fd, libc::SO_RCVTIMEO)),
                    Some(timeout_option(fd, libc::SO_SNDTIMEO)),
                );
                let mut flags = SOCKET;
                if ty == libc::SOCK_STREAM {
                    flags |= STREAM;
                }
                if fl & libc::O_NONBLOCK != 0 {
                    flags |= USER_NONBLOCK;
                }
                flags
            }
        }
    };
    entry.update(st, flags);
    Some(entry.state())
}

/// `SO_TYPE` of `fd`, or the errno of asking.
fn socket_type(fd: c_int) -> Result<c_int, c_int> {
    let mut ty: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty` (not a hooked function).
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut ty).cast(),
            &mut len,
        )
    };
    if r == 0 { Ok(ty) } else { Err(errno()) }
}

/// A socket timeout option of `fd` in microseconds (0 for none or unreadable).
fn timeout_option(fd: c_int, name: c_int) -> u64 {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `tv`.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut tv).cast(), &mut len) };
    if r == 0 { timeval_us(&tv) } else { 0 }
}

/// A socket timeout as the kernel reads it, in microseconds: 0 for none; a negative one
/// is the shortest wait.
pub(super) fn timeval_us(tv: &libc::timeval) -> u64 {
    if tv.tv_sec < 0 {
        return 1;
    }
    (tv.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(tv.tv_usec.max(0) as u64)
}

/// Switches a blocking-mode socket to `O_NONBLOCK` in the kernel, remembering that the
/// user still sees it blocking. `None` if that failed, or if the kernel already had it
/// non-blocking behind the hooks' back (then that is the user's mode).
fn make_nonblocking(fd: c_int, entry: &Entry, st: State) -> Option<State> {
    if st.has(SYS_NONBLOCK) {
        return Some(st);
    }
    // SAFETY: F_GETFL takes no argument.
    let fl = unsafe { real::fcntl()(fd, libc::F_GETFL, 0usize) };
    if fl < 0 {
        return None;
    }
    if fl & libc::O_NONBLOCK != 0 {
        entry.modify(st.generation(), USER_NONBLOCK, 0);
        return None;
    }
    // SAFETY: F_SETFL with an int of flags, the ones read above plus O_NONBLOCK.
    if unsafe { real::fcntl()(fd, libc::F_SETFL, (fl | libc::O_NONBLOCK) as usize) } < 0 {
        return None;
    }
    entry.modify(st.generation(), SYS_NONBLOCK, 0)
}

/// Why a wait ended without the descriptor becoming ready: the errno the call fails with.
type Errno = c_int;

impl Blocking {
    /// Runs `op` (a non-blocking system call returning -1 and `errno` on failure) until
    /// it does not fail with `EAGAIN`, waiting for `read` (else write) readiness between
    /// tries; its result, with `errno` set when it is -1.
    pub(super) fn run(&mut self, read: bool, mut op: impl FnMut() -> ssize_t) -> ssize_t {
        loop {
            let r = op();
            if r >= 0 {
                return r;
            }
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {}
                _ => return -1,
            }
            if let Err(e) = self.wait(read) {
                set_errno(e);
                return -1;
            }
        }
    }

    /// [`run`](Blocking::run) for a transfer of `len` bytes that a blocking call makes in
    /// full on a stream socket (`send`, `write`, `sendfile`; `recv` with `MSG_WAITALL`):
    /// `op(done)` moves the rest after `done` bytes. Returns the count moved, which is
    /// short only when an error, the end of the input, or the timeout came after some
    /// bytes had moved (as the blocking call); -1 with `errno` if none did.
    ///
    /// `len` gives the length; it is only called once some bytes have moved (the
    /// buffers, iovecs included, have then been read by the kernel: they are valid).
    pub(super) fn run_all(
        &mut self,
        read: bool,
        len: impl Fn() -> usize,
        mut op: impl FnMut(usize) -> ssize_t,
    ) -> ssize_t {
        let all = self.entry.state().has(STREAM);
        let mut done = 0usize;
        loop {
            let r = op(done);
            if r > 0 {
                done += r as usize;
                if !all || done >= len() {
                    return done as ssize_t;
                }
                continue;
            }
            if r == 0 {
                return done as ssize_t;
            }
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            let e = if e == libc::EAGAIN {
                match self.wait(read) {
                    Ok(()) => continue,
                    Err(e) => e,
                }
            } else {
                e
            };
            if done > 0 {
                return done as ssize_t;
            }
            set_errno(e);
            return -1;
        }
    }

    /// Waits once for `read` (else write) readiness.
    ///
    /// # Errors
    /// The errno the call then fails with: `EAGAIN` at the socket timeout, `EBADF` if the
    /// descriptor was closed meanwhile, `ETIMEDOUT` when a `Timeout` scope expired,
    /// `ECANCELED` when the greenlet was killed.
    pub(super) fn wait(&mut self, read: bool) -> Result<(), Errno> {
        let deadline = *self
            .deadline
            .get_or_insert_with(|| self.entry.timeout(read).map(|t| Instant::now() + t));
        let r = match &self.how {
            How::Cooperate(hub) => {
                let hub = hub.clone();
                self.wait_on_hub(&hub, read, deadline)
            }
            How::Emulate => wait_in_poll(self.fd, read, deadline),
        };
        if self.entry.state().generation() != self.generation {
            return Err(libc::EBADF);
        }
        r
    }

    /// After a peek that found fewer bytes than wanted: waits until more may have come.
    ///
    /// # Errors
    /// As [`wait`](Blocking::wait).
    pub(super) fn wait_for_more(&mut self) -> Result<(), Errno> {
        if let How::Cooperate(_) = self.how {
            // The hub's readiness is cleared first: this waits for the next arrival.
            return self.wait(true);
        }
        // `ppoll` would say "readable" at once: look again in a millisecond.
        self.pause(true)
    }

    /// Waits a millisecond (cooperatively when it can), for a retry that readiness does
    /// not announce.
    ///
    /// # Errors
    /// As [`wait`](Blocking::wait) (`EAGAIN` once the `read` or write timeout has passed).
    pub(super) fn pause(&mut self, read: bool) -> Result<(), Errno> {
        const PAUSE: Duration = Duration::from_millis(1);
        let deadline = *self
            .deadline
            .get_or_insert_with(|| self.entry.timeout(read).map(|t| Instant::now() + t));
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(libc::EAGAIN);
        }
        match &self.how {
            How::Cooperate(_) => {
                if let Err(e) = self.released(|| raw::sleep_until(Instant::now() + PAUSE)) {
                    return Err(wait_error(e).unwrap_or(libc::ECANCELED));
                }
            }
            How::Emulate => {
                let pause = timespec_of(PAUSE);
                // SAFETY: a timespec on our stack; no remainder wanted.
                unsafe { real::nanosleep()(&pause, std::ptr::null_mut()) };
            }
        }
        if self.entry.state().generation() != self.generation {
            return Err(libc::EBADF);
        }
        Ok(())
    }

    fn wait_on_hub(
        &self,
        hub: &Rc<Hub>,
        read: bool,
        deadline: Option<Instant>,
    ) -> Result<(), Errno> {
        let Some((token, temporary)) = registration(hub, self.fd, self.entry) else {
            return wait_in_poll(self.fd, read, deadline);
        };
        let waits = [RawInterest {
            token,
            fd: self.fd,
            read,
            write: !read,
        }];
        hub.clear_raw_ready(token, read, !read);
        let slice = temporary.then(|| Instant::now() + FOREIGN_SLICE);
        let until = match (deadline, slice) {
            (Some(d), Some(s)) => Some(d.min(s)),
            (d, s) => d.or(s),
        };
        let woke = self.released(|| hub.wait_raw(&waits, until));
        if temporary {
            self.drop_temporary(hub, token);
        }
        match woke {
            Ok(Wake::Timer) if deadline.is_some_and(|d| Instant::now() >= d) => Err(libc::EAGAIN),
            Ok(_) => Ok(()),
            Err(e) => match wait_error(e) {
                Some(errno) => Err(errno),
                None => wait_in_poll(self.fd, read, deadline),
            },
        }
    }

    /// Deregisters a per-wait registration (one with a hub other than the descriptor's
    /// own), unless the descriptor was closed meanwhile (its number may be another's now).
    fn drop_temporary(&self, hub: &Hub, token: usize) {
        if self.entry.state().generation() == self.generation {
            hub.deregister_raw(self.fd, token);
        }
    }

    /// Runs `f` with the in-hook mark lifted, if this call set it.
    pub(super) fn released<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.busy {
            Some(b) => b.released(f),
            None => f(),
        }
    }
}

/// The errno a hub wait's error becomes; `None` when the wait can never end on the hub
/// (fall back to the thread-blocking wait, as the real call would block).
pub(super) fn wait_error(e: Error) -> Option<Errno> {
    match e {
        Error::Closed => Some(libc::EBADF),
        Error::Timeout => Some(libc::ETIMEDOUT),
        Error::BlockForever => None,
        _ => Some(libc::ECANCELED),
    }
}

/// The token of `fd` on `hub`, registering it on first use; `true` if the registration
/// is only for this wait (the descriptor is registered with another thread's hub).
/// `None` if it cannot be registered.
pub(super) fn registration(hub: &Hub, fd: c_int, entry: &Entry) -> Option<(usize, bool)> {
    let me = raw::thread_hub_id();
    match entry.reg() {
        Some(r) if r.hub == me => Some((r.token, false)),
        Some(_) => hub.register_raw(fd).ok().map(|t| (t, true)),
        None => {
            let token = hub.register_raw(fd).ok()?;
            if entry.set_reg(Reg { hub: me, token }) {
                Some((token, false))
            } else {
                // Another thread's hub registered it first: this one is for this wait.
                Some((token, true))
            }
        }
    }
}

/// Waits for `fd` in the real `ppoll` until ready or `deadline`.
///
/// # Errors
/// `EAGAIN` at the deadline, or `ppoll`'s own error (never `EINTR`: it is retried).
pub(super) fn wait_in_poll(fd: c_int, read: bool, deadline: Option<Instant>) -> Result<(), Errno> {
    let events = if read { libc::POLLIN } else { libc::POLLOUT };
    loop {
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let ts = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(libc::EAGAIN);
                }
                Some(timespec_of(left))
            }
        };
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: one pollfd we own; `tsp` is null or points at a timespec on our stack.
        let r = unsafe { real::ppoll()(&mut p, 1, tsp, std::ptr::null()) };
        match r {
            r if r > 0 => return Ok(()),
            0 => return Err(libc::EAGAIN),
            _ if errno() == libc::EINTR => continue,
            _ => return Err(errno()),
        }
    }
}

/// `d` as a timespec (saturating).
pub(super) fn timespec_of(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// Forgets a registration whose descriptor is going away (or whose number now names a
/// new descriptor), before the descriptor is closed: it is deregistered from its hub's
/// `epoll` (keyed by descriptor *and* open file, so it must go while the fd still names
/// the file) and the greenlets waiting on it wake up to find it closed.
pub(super) fn release(fd: c_int, reg: Reg) {
    if context::in_signal_handler() {
        raw::close_in_signal_handler(reg.hub, fd);
        return;
    }
    if reg.hub == raw::thread_hub_id()
        && let Some(hub) = raw::this_thread_hub()
        && hub.deregister_raw(fd, reg.token)
    {
        return;
    }
    raw::close_elsewhere(reg.hub, fd, reg.token);
}
