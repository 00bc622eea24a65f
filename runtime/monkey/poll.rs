//! The readiness hooks: `poll`, `ppoll`, `select` (libcurl and most C clients wait in
//! `poll`).
//!
//! A cooperating call asks the kernel with a zero timeout; if nothing is ready it waits
//! on the hub for any of its descriptors (each registered once with the hub's `epoll`,
//! sockets or not: pipes and eventfds work too) and asks again, until something is ready
//! or the timeout passes. The kernel computes every result, so the revents, the counts
//! and the sets are exactly its own.

use std::time::{Duration, Instant};

use libc::{c_int, fd_set, nfds_t, pollfd, sigset_t, timespec, timeval};

use super::block::{registration, timespec_of, wait_error};
use super::context::{self, Busy, OFF, mode, set_errno};
use super::fdtable;
use super::real;
use crate::hub::raw::{self, RawInterest};
use crate::hub::{Hub, Wake};

/// `poll(2)`.
///
/// # Safety
/// As `poll(2)`: `fds` is valid for `nfds` entries.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let real_poll = |t: c_int| unsafe { real::poll()(fds, nfds, t) };
    if timeout == 0 || mode() == OFF || !context::may_cooperate() {
        return real_poll(timeout);
    }
    let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    // SAFETY: the caller's array (checked by the first real call before it is read).
    let interests = || unsafe { poll_interests(fds, nfds) };
    cooperative_wait(
        deadline,
        interests,
        || real_poll(0),
        |left| real_poll(left.map_or(-1, |d| d.as_millis().min(c_int::MAX as u128) as c_int)),
    )
}

/// `ppoll(2)`. While waiting on the hub the thread keeps its signal mask (other greenlets
/// run meanwhile); `sigmask` applies to each look at the descriptors.
///
/// # Safety
/// As `ppoll(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's arguments, with our own timeout.
    let real_ppoll = |t: *const timespec| unsafe { real::ppoll()(fds, nfds, t, sigmask) };
    if mode() == OFF || !context::may_cooperate() {
        return real_ppoll(timeout);
    }
    let wait = if timeout.is_null() {
        None
    } else {
        // SAFETY: the caller's timespec.
        match duration_of(unsafe { &*timeout }) {
            Some(d) => Some(d),
            None => return real_ppoll(timeout), // EINVAL
        }
    };
    if wait.is_some_and(|d| d.is_zero()) {
        return real_ppoll(timeout);
    }
    let deadline = wait.map(|d| Instant::now() + d);
    let zero = timespec_of(Duration::ZERO);
    // SAFETY: as in `poll`.
    let interests = || unsafe { poll_interests(fds, nfds) };
    cooperative_wait(
        deadline,
        interests,
        || real_ppoll(&zero),
        |left| {
            let ts = left.map(timespec_of);
            real_ppoll(
                ts.as_ref()
                    .map_or(std::ptr::null(), |t| t as *const timespec),
            )
        },
    )
}

/// `select(2)`. With no descriptors it is a sleep (an old idiom), made cooperative too.
/// On return `timeout` holds the time not slept, as Linux does.
///
/// # Safety
/// As `select(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn select(
    nfds: c_int,
    readfds: *mut fd_set,
    writefds: *mut fd_set,
    exceptfds: *mut fd_set,
    timeout: *mut timeval,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let real_select = || unsafe { real::select()(nfds, readfds, writefds, exceptfds, timeout) };
    if mode() == OFF
        || !context::may_cooperate()
        || !(0..=libc::FD_SETSIZE as c_int).contains(&nfds)
    {
        return real_select();
    }
    let wait = if timeout.is_null() {
        None
    } else {
        // SAFETY: the caller's timeval.
        let tv = unsafe { *timeout };
        if tv.tv_sec < 0 || !(0..1_000_000).contains(&tv.tv_usec) {
            return real_select(); // EINVAL
        }
        Some(Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64))
    };
    if wait.is_some_and(|d| d.is_zero()) {
        return real_select();
    }
    let deadline = wait.map(|d| Instant::now() + d);
    // SAFETY: each set is null or the caller's fd_set.
    let sets = unsafe { [copy_set(readfds), copy_set(writefds), copy_set(exceptfds)] };
    let interests = || select_interests(nfds, &sets);
    let check = || {
        // Ask on copies with a zero timeout; the caller's sets get the answer.
        let mut copies = sets;
        let mut zero = timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let ptrs = [readfds, writefds, exceptfds];
        let mut args = [std::ptr::null_mut(); 3];
        for i in 0..3 {
            if let Some(set) = copies[i].as_mut() {
                args[i] = set as *mut fd_set;
            }
        }
        // SAFETY: our copies of the sets and our zero timeout.
        let r = unsafe { real::select()(nfds, args[0], args[1], args[2], &mut zero) };
        if r >= 0 {
            for i in 0..3 {
                if let (Some(set), false) = (copies[i], ptrs[i].is_null()) {
                    // SAFETY: the caller's set, non-null.
                    unsafe { *ptrs[i] = set };
                }
            }
        }
        r
    };
    let r = cooperative_wait(deadline, interests, check, |left| {
        let mut tv = left.map(|d| timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        });
        let tvp = tv
            .as_mut()
            .map_or(std::ptr::null_mut(), |t| t as *mut timeval);
        // SAFETY: the caller's sets, our timeout.
        unsafe { real::select()(nfds, readfds, writefds, exceptfds, tvp) }
    });
    if let Some(d) = deadline
        && !timeout.is_null()
    {
        let left = d.saturating_duration_since(Instant::now());
        // SAFETY: the caller's timeval.
        unsafe {
            *timeout = timeval {
                tv_sec: left.as_secs() as libc::time_t,
                tv_usec: left.subsec_micros() as libc::suseconds_t,
            };
        }
    }
    r
}

/// A copy of a set (`None` for a null one).
///
/// # Safety
/// `set` is null or valid.
unsafe fn copy_set(set: *const fd_set) -> Option<fd_set> {
    // SAFETY: per the contract.
    (!set.is_null()).then(|| unsafe { *set })
}

/// The descriptors of select's sets: read for the read set, write for the write set,
/// read (out-of-band data) for the exception set.
fn select_interests(nfds: c_int, sets: &[Option<fd_set>; 3]) -> Vec<(c_int, bool, bool)> {
    let mut out = Vec::new();
    for fd in 0..nfds {
        let is_set = |s: &Option<fd_set>| {
            // SAFETY: FD_ISSET reads one bit of a set we own, `fd < FD_SETSIZE`.
            s.as_ref().is_some_and(|s| unsafe { libc::FD_ISSET(fd, s) })
        };
        let (r, w, e) = (is_set(&sets[0]), is_set(&sets[1]), is_set(&sets[2]));
        if r || w || e {
            out.push((fd, r || e, w));
        }
    }
    out
}

/// The descriptors of a pollfd array and the directions their events ask for.
///
/// # Safety
/// `fds` is valid for `nfds` entries.
unsafe fn poll_interests(fds: *const pollfd, nfds: nfds_t) -> Vec<(c_int, bool, bool)> {
    if fds.is_null() || nfds == 0 {
        return Vec::new();
    }
    // SAFETY: per the contract.
    let fds = unsafe { std::slice::from_raw_parts(fds, nfds as usize) };
    let read = libc::POLLIN | libc::POLLPRI | libc::POLLRDNORM | libc::POLLRDBAND | libc::POLLRDHUP;
    let write = libc::POLLOUT | libc::POLLWRNORM | libc::POLLWRBAND;
    fds.iter()
        .filter(|p| p.fd >= 0)
        .map(|p| (p.fd, p.events & read != 0, p.events & write != 0))
        .collect()
}

/// `timespec` as a duration; `None` if it is invalid.
fn duration_of(ts: &timespec) -> Option<Duration> {
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The cooperative loop of the readiness hooks: `check()` asks the kernel without
/// waiting; while it says "nothing" (0), wait on the hub for any of `interests()` or
/// until `deadline`. `block(left)` is the real, thread-blocking call, for when the hub
/// cannot be used.
fn cooperative_wait(
    deadline: Option<Instant>,
    interests: impl Fn() -> Vec<(c_int, bool, bool)>,
    mut check: impl FnMut() -> c_int,
    mut block: impl FnMut(Option<Duration>) -> c_int,
) -> c_int {
    let busy = Busy::enter();
    let Some(hub) = raw::cooperative_hub() else {
        drop(busy);
        return block(deadline.map(|d| d.saturating_duration_since(Instant::now())));
    };
    let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
    loop {
        let r = check();
        if r < 0 && context::errno() == libc::EINTR {
            continue;
        }
        if r != 0 {
            return r;
        }
        if left().is_some_and(|d| d.is_zero()) {
            return 0;
        }
        let Some((waits, temporary)) = register_all(&hub, &interests()) else {
            drop(busy);
            return block(left());
        };
        for w in &waits {
            hub.clear_raw_ready(w.token, w.read, w.write);
        }
        let until = if temporary.is_empty() {
            deadline
        } else {
            // Registered with this hub for this wait only: look again now and then for
            // a close that another hub is told of.
            let slice = Instant::now() + Duration::from_millis(100);
            Some(deadline.map_or(slice, |d| d.min(slice)))
        };
        let woke = busy.released(|| {
            if waits.is_empty() {
                raw::sleep_until(until.unwrap_or_else(far_future)).map(|()| Wake::Timer)
            } else {
                hub.wait_raw(&waits, until)
            }
        });
        for &(fd, token) in &temporary {
            hub.deregister_raw(fd, token);
        }
        match woke {
            Ok(_) | Err(crate::Error::Closed) => {}
            Err(e) => match wait_error(e) {
                Some(errno) => {
                    set_errno(errno);
                    return -1;
                }
                None => {
                    drop(busy);
                    return block(left());
                }
            },
        }
    }
}

/// A deadline nothing reaches (a wait with no descriptor and no timeout).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Descriptors registered with a hub for one wait only: (fd, token).
type Temporary = Vec<(c_int, usize)>;

/// Registers every descriptor of `interests` with `hub`; the waits, and which of them are
/// registered for this wait only (fd, token). `None` if one cannot be registered (then
/// the real call has to wait).
fn register_all(
    hub: &Hub,
    interests: &[(c_int, bool, bool)],
) -> Option<(Vec<RawInterest>, Temporary)> {
    let mut waits = Vec::with_capacity(interests.len());
    let mut temporary = Vec::new();
    for &(fd, read, write) in interests {
        let registered = fdtable::entry(fd).and_then(|e| registration(hub, fd, e));
        let Some((token, temp)) = registered else {
            for &(fd, token) in &temporary {
                hub.deregister_raw(fd, token);
            }
            return None;
        };
        if temp {
            temporary.push((fd, token));
        }
        // Errors and hang-ups wake either direction; ask for reads if nothing else.
        waits.push(RawInterest {
            token,
            fd,
            read: read || !write,
            write,
        });
    }
    Some((waits, temporary))
}
