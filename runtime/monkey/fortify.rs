//! The `_FORTIFY_SOURCE` variants C code compiled with it calls instead of `read`,
//! `recv`, `recvfrom`, `poll` and `ppoll` (distributions such as Ubuntu turn it on by
//! default): glibc's buffer check, then the hook.

use libc::{
    c_int, c_void, nfds_t, pollfd, sigset_t, size_t, sockaddr, socklen_t, ssize_t, timespec,
};

unsafe extern "C" {
    /// glibc's "buffer overflow detected" abort.
    fn __chk_fail() -> !;
}

/// `__read_chk`: `read` into a buffer of `buflen` bytes.
///
/// # Safety
/// As `read(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    nbytes: size_t,
    buflen: size_t,
) -> ssize_t {
    if nbytes > buflen {
        // SAFETY: glibc's abort for a detected overflow; it does not return.
        unsafe { __chk_fail() };
    }
    // SAFETY: the caller's arguments, checked as glibc does.
    unsafe { super::io::read(fd, buf, nbytes) }
}

/// `__recv_chk`: `recv` into a buffer of `buflen` bytes.
///
/// # Safety
/// As `recv(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if len > buflen {
        // SAFETY: as in `__read_chk`.
        unsafe { __chk_fail() };
    }
    // SAFETY: the caller's arguments, checked as glibc does.
    unsafe { super::io::recv(fd, buf, len, flags) }
}

/// `__recvfrom_chk`: `recvfrom` into a buffer of `buflen` bytes.
///
/// # Safety
/// As `recvfrom(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> ssize_t {
    if len > buflen {
        // SAFETY: as in `__read_chk`.
        unsafe { __chk_fail() };
    }
    // SAFETY: the caller's arguments, checked as glibc does.
    unsafe { super::io::recvfrom(fd, buf, len, flags, addr, addrlen) }
}

/// `__poll_chk`: `poll` on an array of `fdslen` bytes.
///
/// # Safety
/// As `poll(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn __poll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    if (fdslen / size_of::<pollfd>()) < nfds as usize {
        // SAFETY: as in `__read_chk`.
        unsafe { __chk_fail() };
    }
    // SAFETY: the caller's arguments, checked as glibc does.
    unsafe { super::poll::poll(fds, nfds, timeout) }
}

/// `__ppoll_chk`: `ppoll` on an array of `fdslen` bytes.
///
/// # Safety
/// As `ppoll(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
    fdslen: size_t,
) -> c_int {
    if (fdslen / size_of::<pollfd>()) < nfds as usize {
        // SAFETY: as in `__read_chk`.
        unsafe { __chk_fail() };
    }
    // SAFETY: the caller's arguments, checked as glibc does.
    unsafe { super::poll::ppoll(fds, nfds, timeout, sigmask) }
}
