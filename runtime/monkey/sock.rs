//! The descriptor hooks: `accept`, `accept4`, `connect` (which block), `socket`,
//! `socketpair`, `close`, `dup`, `dup2`, `dup3` (which keep the table right), and
//! `fcntl`, `ioctl(FIONBIO)`, `setsockopt` (which keep the user's view of the blocking
//! mode and the socket timeouts).

use libc::{c_int, c_ulong, sockaddr, socklen_t};

use super::block::{Blocking, How, plan, release, timeval_us};
use super::context::{self, Busy, OFF, errno, mode, set_errno};
use super::fdtable::{self, SOCKET, STREAM, SYS_NONBLOCK, USER_NONBLOCK};
use super::real;
use crate::hub::raw;

/// `SO_RCVTIMEO` and `SO_SNDTIMEO` with a 64-bit `time_t` (the same layout on x86_64).
const SO_RCVTIMEO_NEW: c_int = 66;
const SO_SNDTIMEO_NEW: c_int = 67;

/// `accept(2)`.
///
/// # Safety
/// As `accept(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn accept(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> c_int {
    if mode() == OFF {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::accept()(fd, addr, len) };
    }
    // SAFETY: `accept` is `accept4` without flags.
    unsafe { accept_with(fd, addr, len, 0) }
}

/// `accept4(2)`.
///
/// # Safety
/// As `accept4(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    if mode() == OFF {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::accept4()(fd, addr, len, flags) };
    }
    // SAFETY: as above.
    unsafe { accept_with(fd, addr, len, flags) }
}

/// An `accept4` with the hooks on. A cooperating accept makes the new socket
/// non-blocking in the kernel from the start (the user's mode is `flags`'); it inherits
/// the listener's timeouts, as in the kernel.
///
/// # Safety
/// As `accept4(2)`.
unsafe fn accept_with(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let Some(mut b) = plan(fd) else {
        // SAFETY: the caller's arguments, unchanged.
        let new = unsafe { real::accept4()(fd, addr, len, flags) };
        if new >= 0 {
            note_new(new, fdtable::UNKNOWN, 0, 0);
        }
        return new;
    };
    let extra = match b.how {
        How::Cooperate(_) if flags & libc::SOCK_NONBLOCK == 0 => libc::SOCK_NONBLOCK,
        _ => 0,
    };
    // SAFETY: the caller's arguments, plus SOCK_NONBLOCK for the new socket.
    let new = b.run(
        true,
        || unsafe { real::accept4()(fd, addr, len, flags | extra) } as isize,
    ) as c_int;
    if new >= 0 {
        let listener = b.entry;
        let mut bits = SOCKET | (listener.state().flags() & STREAM);
        if flags & libc::SOCK_NONBLOCK != 0 {
            bits |= USER_NONBLOCK;
        }
        if extra != 0 {
            bits |= SYS_NONBLOCK;
        }
        note_new(
            new,
            bits,
            listener.recv_timeout_us(),
            listener.send_timeout_us(),
        );
    }
    new
}

/// `connect(2)`. A blocking connect waits for the connection (bounded by `SO_SNDTIMEO`:
/// then `EINPROGRESS`, as Linux) and fails with its error (`ECONNREFUSED`,
/// `ETIMEDOUT`, …); a non-blocking one returns `EINPROGRESS` at once.
///
/// # Safety
/// As `connect(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if mode() != OFF
        && let Some(mut b) = plan(fd)
    {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { connect_blocking(&mut b, fd, addr, len) };
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::connect()(fd, addr, len) }
}

/// # Safety
/// As `connect(2)`.
unsafe fn connect_blocking(
    b: &mut Blocking,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> c_int {
    loop {
        // SAFETY: the caller's arguments, unchanged.
        if unsafe { real::connect()(fd, addr, len) } == 0 {
            return 0;
        }
        match errno() {
            libc::EINPROGRESS => return finish_connect(b, fd),
            libc::EINTR => continue,
            // A Unix socket's listener has a full backlog: a blocking connect waits for
            // room, which no readiness announces.
            libc::EAGAIN => {
                if let Err(e) = b.pause(false) {
                    set_errno(e);
                    return -1;
                }
            }
            _ => return -1,
        }
    }
}

/// Waits for a connection in progress; its result.
fn finish_connect(b: &mut Blocking, fd: c_int) -> c_int {
    loop {
        match b.wait(false) {
            Ok(()) => {}
            Err(libc::EAGAIN) => {
                // SO_SNDTIMEO passed: Linux's blocking connect says EINPROGRESS.
                set_errno(libc::EINPROGRESS);
                return -1;
            }
            Err(e) => {
                set_errno(e);
                return -1;
            }
        }
        let mut err: c_int = 0;
        let mut len = size_of::<c_int>() as socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `err`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return -1;
        }
        if err != 0 {
            set_errno(err);
            return -1;
        }
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut plen = size_of::<libc::sockaddr_storage>() as socklen_t;
        // SAFETY: getpeername writes at most `plen` bytes into `peer`.
        if unsafe { libc::getpeername(fd, (&raw mut peer).cast(), &mut plen) } == 0 {
            return 0;
        }
        // Not connected yet (a wake-up for something else): wait again.
    }
}

/// `socket(2)`. A socket made where the call could cooperate is non-blocking in the
/// kernel from the start (the user still sees the mode they asked for).
///
/// # Safety
/// None beyond `socket(2)`'s (it takes no pointers).
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    if mode() == OFF {
        // SAFETY: plain integers.
        return unsafe { real::socket()(domain, ty, protocol) };
    }
    let extra = if ty & libc::SOCK_NONBLOCK == 0 && may_cooperate_here() {
        libc::SOCK_NONBLOCK
    } else {
        0
    };
    // SAFETY: plain integers.
    let fd = unsafe { real::socket()(domain, ty | extra, protocol) };
    if fd >= 0 {
        let mut bits = socket_bits(ty);
        if extra != 0 {
            bits |= SYS_NONBLOCK;
        }
        note_new(fd, bits, 0, 0);
    }
    fd
}

/// `socketpair(2)`.
///
/// # Safety
/// As `socketpair(2)`: `sv` is valid for two ints.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let r = unsafe { real::socketpair()(domain, ty, protocol, sv) };
    if r == 0 && mode() != OFF {
        for i in 0..2 {
            // SAFETY: the kernel has just written both ints.
            note_new(unsafe { *sv.add(i) }, socket_bits(ty), 0, 0);
        }
    }
    r
}

/// The table bits of a new socket of type `ty` (with its `SOCK_*` flags).
fn socket_bits(ty: c_int) -> u64 {
    let mut bits = SOCKET;
    if ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) == libc::SOCK_STREAM {
        bits |= STREAM;
    }
    if ty & libc::SOCK_NONBLOCK != 0 {
        bits |= USER_NONBLOCK;
    }
    bits
}

/// Could a call made here cooperate (see `block::plan`)?
fn may_cooperate_here() -> bool {
    context::may_cooperate() && {
        let _busy = Busy::enter();
        raw::cooperative_hub().is_some()
    }
}

/// Starts the entry of a descriptor a hooked call has just made.
fn note_new(fd: c_int, bits: u64, recv_us: u64, send_us: u64) {
    if let Some(e) = fdtable::entry(fd)
        && let Some(stale) = e.reset(bits, recv_us, send_us)
    {
        // Left by a close the hooks did not see; the number names a new file now.
        if mode() == context::ON {
            release(fd, stale);
        }
    }
}

/// Resets the entry of `fd`, which is about to be closed, deregistering it first.
fn forget(fd: c_int) {
    if let Some(e) = fdtable::entry(fd)
        && let Some(reg) = e.reset(fdtable::UNKNOWN, 0, 0)
        && mode() == context::ON
    {
        release(fd, reg);
    }
}

/// Gives `to` (a new duplicate of `from`) the entry of `from`: the same open file, so the
/// same mode and timeouts.
fn copy_entry(from: c_int, to: c_int) {
    let (bits, recv, send) = match fdtable::entry(from) {
        Some(f) => (f.state().flags(), f.recv_timeout_us(), f.send_timeout_us()),
        None => (fdtable::UNKNOWN, 0, 0),
    };
    note_new(to, bits, recv, send);
}

/// `close(2)`: deregisters the descriptor from its hub's `epoll` first (a registration
/// is keyed by descriptor and open file, so it must go while `fd` still names the file);
/// greenlets waiting on it wake with `EBADF`.
///
/// # Safety
/// None beyond `close(2)`'s.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn close(fd: c_int) -> c_int {
    if mode() != OFF {
        forget(fd);
    }
    // SAFETY: a plain integer.
    unsafe { real::close()(fd) }
}

/// `dup(2)`.
///
/// # Safety
/// None beyond `dup(2)`'s.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn dup(old: c_int) -> c_int {
    // SAFETY: a plain integer.
    let new = unsafe { real::dup()(old) };
    if new >= 0 && mode() != OFF {
        copy_entry(old, new);
    }
    new
}

/// `dup2(2)`: `new`, which the call closes, is forgotten (and deregistered) first.
///
/// # Safety
/// None beyond `dup2(2)`'s.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: plain integers.
    let real_dup2 = || unsafe { real::dup2()(old, new) };
    if mode() == OFF || old == new || !is_open(old) {
        return real_dup2();
    }
    forget(new);
    let r = real_dup2();
    if r >= 0 {
        copy_entry(old, new);
    }
    r
}

/// `dup3(2)`, as [`dup2`].
///
/// # Safety
/// None beyond `dup3(2)`'s.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: plain integers.
    let real_dup3 = || unsafe { real::dup3()(old, new, flags) };
    if mode() == OFF || old == new || !is_open(old) {
        return real_dup3();
    }
    forget(new);
    let r = real_dup3();
    if r >= 0 {
        copy_entry(old, new);
    }
    r
}

/// Is `fd` an open descriptor? (Then `dup2` onto another one will close that one.)
fn is_open(fd: c_int) -> bool {
    // SAFETY: F_GETFD takes no argument.
    unsafe { real::fcntl()(fd, libc::F_GETFD, 0usize) >= 0 }
}

/// `fcntl(2)`: `F_GETFL` reports the mode the user set, `F_SETFL` records it (keeping the
/// kernel non-blocking where greenhub made it so), `F_DUPFD*` copy the entry.
///
/// C declares `fcntl` variadic; this takes the optional third argument as a fixed
/// `usize`, which the x86_64 System V ABI passes in the same register either way.
///
/// # Safety
/// As `fcntl(2)`: `arg` is what `cmd` expects.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: on x86_64 System V a variadic callee reads the third integer argument from
    // the same register as a fixed `usize` parameter; a caller that passed none left a
    // value the commands without an argument never read. It goes on to the real
    // (variadic) fcntl as it came.
    unsafe { fcntl_with(fd, cmd, arg) }
}

/// `fcntl64`, the same function on x86_64 (what C code built with
/// `_FILE_OFFSET_BITS=64` calls).
///
/// # Safety
/// As [`fcntl`].
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: as in `fcntl`.
    unsafe { fcntl_with(fd, cmd, arg) }
}

/// # Safety
/// As `fcntl(2)`.
unsafe fn fcntl_with(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let real_fcntl = |arg: usize| unsafe { real::fcntl()(fd, cmd, arg) };
    if mode() == OFF {
        return real_fcntl(arg);
    }
    match cmd {
        libc::F_GETFL => {
            let r = real_fcntl(arg);
            if r >= 0
                && let Some(e) = fdtable::entry(fd)
                && e.state().has(SYS_NONBLOCK)
            {
                let user = if e.state().has(USER_NONBLOCK) {
                    libc::O_NONBLOCK
                } else {
                    0
                };
                return (r & !libc::O_NONBLOCK) | user;
            }
            r
        }
        libc::F_SETFL => {
            let Some(e) = fdtable::entry(fd) else {
                return real_fcntl(arg);
            };
            let st = e.state();
            let nonblocking = (arg as c_int) & libc::O_NONBLOCK != 0;
            let r = if st.has(SYS_NONBLOCK) {
                real_fcntl(arg | libc::O_NONBLOCK as usize)
            } else {
                real_fcntl(arg)
            };
            if r == 0 && st.kind() == SOCKET {
                set_user_mode(fd, e, st, nonblocking);
            }
            r
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let new = real_fcntl(arg);
            if new >= 0 {
                copy_entry(fd, new);
            }
            new
        }
        _ => real_fcntl(arg),
    }
}

/// Records the blocking mode the user asked for. A socket switched to non-blocking mode
/// gives up its hub registration: its calls pass through from now on, and it is free to
/// be registered by whoever drives it now (`greenhub::net`'s `from_std` on the same hub).
fn set_user_mode(fd: c_int, e: &fdtable::Entry, st: fdtable::State, nonblocking: bool) {
    if nonblocking {
        e.modify(st.generation(), USER_NONBLOCK, 0);
        if let Some(reg) = e.take_reg()
            && mode() == context::ON
        {
            release(fd, reg);
        }
    } else {
        e.modify(st.generation(), 0, USER_NONBLOCK);
    }
}

/// `ioctl(2)`: `FIONBIO` on a socket greenhub made non-blocking records the user's mode
/// and keeps the kernel's; every other request passes through.
///
/// C declares `ioctl` variadic; this takes the third argument as a fixed `usize`, as
/// [`fcntl`] does.
///
/// # Safety
/// As `ioctl(2)`: `arg` is what `request` expects (an `int *` for `FIONBIO`).
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: usize) -> c_int {
    // SAFETY: as in `fcntl`: the third integer argument's register either way, passed on
    // to the real (variadic) ioctl as it came.
    let real_ioctl = |arg: usize| unsafe { real::ioctl()(fd, request, arg) };
    if mode() == OFF || request != libc::FIONBIO || arg == 0 {
        return real_ioctl(arg);
    }
    let Some(e) = fdtable::entry(fd) else {
        return real_ioctl(arg);
    };
    // SAFETY: FIONBIO's argument is an `int *` (the caller's contract).
    let nonblocking = unsafe { *(arg as *const c_int) } != 0;
    let st = e.state();
    let r = if st.has(SYS_NONBLOCK) {
        // Keep the kernel non-blocking (this also checks `fd`).
        let one: c_int = 1;
        real_ioctl(&raw const one as usize)
    } else {
        real_ioctl(arg)
    };
    if r == 0 && st.kind() == SOCKET {
        set_user_mode(fd, e, st, nonblocking);
    }
    r
}

/// `setsockopt(2)`: also records `SO_RCVTIMEO`/`SO_SNDTIMEO`, which bound the waits of
/// the blocking calls the hooks emulate. (`getsockopt` needs no hook: the kernel keeps
/// the user's values.)
///
/// # Safety
/// As `setsockopt(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const libc::c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let r = unsafe { real::setsockopt()(fd, level, name, value, len) };
    if r == 0
        && mode() != OFF
        && level == libc::SOL_SOCKET
        && !value.is_null()
        && len as usize >= size_of::<libc::timeval>()
        && let Some(e) = fdtable::entry(fd)
    {
        // SAFETY: the kernel has just read `len` bytes there: a timeval.
        let tv = unsafe { std::ptr::read_unaligned(value.cast::<libc::timeval>()) };
        match name {
            libc::SO_RCVTIMEO | SO_RCVTIMEO_NEW => e.set_timeouts_us(Some(timeval_us(&tv)), None),
            libc::SO_SNDTIMEO | SO_SNDTIMEO_NEW => e.set_timeouts_us(None, Some(timeval_us(&tv))),
            _ => {}
        }
    }
    r
}
