//! The data-transfer hooks: `read`, `readv`, `write`, `writev`, `recv`, `recvfrom`,
//! `recvmsg`, `send`, `sendto`, `sendmsg`, `sendfile`, `splice`.
//!
//! Each passes its call through unless [`plan`] finds a blocking-mode socket it must wait
//! for; then the real, non-blocking call runs in [`Blocking::run`] (reads: done at the
//! first bytes, as a blocking read) or [`Blocking::run_all`] (writes on a stream socket:
//! done when everything is sent, as a blocking write).

use libc::{
    c_int, c_uint, c_void, iovec, loff_t, msghdr, off_t, size_t, sockaddr, socklen_t, ssize_t,
};

use super::block::{Blocking, plan};
use super::context::{OFF, mode};
use super::real;

/// `read(2)`.
///
/// # Safety
/// As `read(2)`: `buf` is valid for writes of `count` bytes.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    if mode() != OFF
        && let Some(mut b) = plan(fd)
    {
        // SAFETY: the caller's arguments, unchanged.
        return b.run(true, || unsafe { real::read()(fd, buf, count) });
    }
    // SAFETY: as above.
    unsafe { real::read()(fd, buf, count) }
}

/// `readv(2)`.
///
/// # Safety
/// As `readv(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    if mode() != OFF
        && let Some(mut b) = plan(fd)
    {
        // SAFETY: the caller's arguments, unchanged.
        return b.run(true, || unsafe { real::readv()(fd, iov, iovcnt) });
    }
    // SAFETY: as above.
    unsafe { real::readv()(fd, iov, iovcnt) }
}

/// `write(2)`.
///
/// # Safety
/// As `write(2)`: `buf` is valid for reads of `count` bytes.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    if mode() != OFF
        && let Some(mut b) = plan(fd)
    {
        return b.run_all(
            false,
            || count,
            // SAFETY: the caller's buffer, from `done` (< count) on.
            |done| unsafe { real::write()(fd, buf.cast::<u8>().add(done).cast(), count - done) },
        );
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::write()(fd, buf, count) }
}

/// `writev(2)`.
///
/// # Safety
/// As `writev(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    if mode() != OFF
        && let Some(mut b) = plan(fd)
    {
        return b.run_all(
            false,
            // SAFETY: called once the kernel has read the iovecs: they are valid.
            || iov_len(unsafe { iovecs(iov, iovcnt) }),
            |done| {
                if done == 0 {
                    // SAFETY: the caller's arguments, unchanged.
                    return unsafe { real::writev()(fd, iov, iovcnt) };
                }
                // SAFETY: as for the length above.
                let rest = advanced(unsafe { iovecs(iov, iovcnt) }, done);
                // SAFETY: `rest` points into the caller's buffers, after what was sent.
                unsafe { real::writev()(fd, rest.as_ptr(), rest.len() as c_int) }
            },
        );
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::writev()(fd, iov, iovcnt) }
}

/// `recv(2)`. `MSG_DONTWAIT` passes through; `MSG_WAITALL` waits for the whole buffer
/// (or the end of the stream, an error or the timeout), as the blocking call does.
///
/// # Safety
/// As `recv(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn recv(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    if mode() != OFF
        && flags & libc::MSG_DONTWAIT == 0
        && let Some(mut b) = plan(fd)
    {
        return receive(&mut b, len, flags, |done| {
            // SAFETY: the caller's buffer, from `done` (< len) on.
            unsafe { real::recv()(fd, buf.cast::<u8>().add(done).cast(), len - done, flags) }
        });
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::recv()(fd, buf, len, flags) }
}

/// `recvfrom(2)`, as [`recv`].
///
/// # Safety
/// As `recvfrom(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> ssize_t {
    if mode() != OFF
        && flags & libc::MSG_DONTWAIT == 0
        && let Some(mut b) = plan(fd)
    {
        return receive(&mut b, len, flags, |done| {
            // SAFETY: the caller's arguments, the buffer from `done` (< len) on.
            unsafe {
                real::recvfrom()(
                    fd,
                    buf.cast::<u8>().add(done).cast(),
                    len - done,
                    flags,
                    addr,
                    addrlen,
                )
            }
        });
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::recvfrom()(fd, buf, len, flags, addr, addrlen) }
}

/// `recvmsg(2)`. `MSG_DONTWAIT` passes through. (`MSG_WAITALL` returns at the first
/// bytes, as a plain blocking `recvmsg`.)
///
/// # Safety
/// As `recvmsg(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if mode() != OFF
        && flags & libc::MSG_DONTWAIT == 0
        && let Some(mut b) = plan(fd)
    {
        // SAFETY: the caller's arguments, unchanged.
        return b.run(true, || unsafe { real::recvmsg()(fd, msg, flags) });
    }
    // SAFETY: as above.
    unsafe { real::recvmsg()(fd, msg, flags) }
}

/// A blocking receive of up to `len` bytes with `flags`: `op(done)` receives after the
/// first `done` bytes.
fn receive(
    b: &mut Blocking,
    len: usize,
    flags: c_int,
    mut op: impl FnMut(usize) -> isize,
) -> isize {
    if flags & libc::MSG_WAITALL == 0 {
        return b.run(true, || op(0));
    }
    if flags & libc::MSG_PEEK == 0 {
        return b.run_all(true, || len, op);
    }
    // Peeking for the whole buffer: look again each time more data has come.
    loop {
        let r = b.run(true, || op(0));
        if r <= 0 || r as usize >= len || !b.entry.state().has(super::fdtable::STREAM) {
            return r;
        }
        if b.wait_for_more().is_err() {
            return r;
        }
    }
}

/// `send(2)`. `MSG_DONTWAIT` passes through; on a stream socket the call returns when
/// everything is sent (or on an error or the timeout, with the count sent so far), as
/// the blocking call does.
///
/// # Safety
/// As `send(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn send(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
) -> ssize_t {
    if mode() != OFF
        && flags & libc::MSG_DONTWAIT == 0
        && let Some(mut b) = plan(fd)
    {
        return b.run_all(
            false,
            || len,
            // SAFETY: the caller's buffer, from `done` (< len) on.
            |done| unsafe {
                real::send()(fd, buf.cast::<u8>().add(done).cast(), len - done, flags)
            },
        );
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::send()(fd, buf, len, flags) }
}

/// `sendto(2)`, as [`send`].
///
/// # Safety
/// As `sendto(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addrlen: socklen_t,
) -> ssize_t {
    if mode() != OFF
        && flags & libc::MSG_DONTWAIT == 0
        && let Some(mut b) = plan(fd)
    {
        return b.run_all(
            false,
            || len,
            |done| {
                // SAFETY: the caller's arguments, the buffer from `done` (< len) on.
                unsafe {
                    real::sendto()(
                        fd,
                        buf.cast::<u8>().add(done).cast(),
                        len - done,
                        flags,
                        addr,
                        addrlen,
                    )
                }
            },
        );
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::sendto()(fd, buf, len, flags, addr, addrlen) }
}

/// `sendmsg(2)`, as [`send`] (the ancillary data goes with the first bytes).
///
/// # Safety
/// As `sendmsg(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if mode() != OFF
        && flags & libc::MSG_DONTWAIT == 0
        && let Some(mut b) = plan(fd)
    {
        return b.run_all(
            false,
            // SAFETY: called once the kernel has read the header and its iovecs.
            || iov_len(unsafe { msg_iovecs(msg) }),
            |done| {
                if done == 0 {
                    // SAFETY: the caller's arguments, unchanged.
                    return unsafe { real::sendmsg()(fd, msg, flags) };
                }
                // SAFETY: as for the length above.
                let (mut rest_msg, rest) = unsafe { (*msg, advanced(msg_iovecs(msg), done)) };
                rest_msg.msg_iov = rest.as_ptr().cast_mut();
                rest_msg.msg_iovlen = rest.len();
                rest_msg.msg_control = std::ptr::null_mut();
                rest_msg.msg_controllen = 0;
                // SAFETY: a header for the rest of the caller's buffers.
                unsafe { real::sendmsg()(fd, &rest_msg, flags) }
            },
        );
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::sendmsg()(fd, msg, flags) }
}

/// `sendfile(2)`: to a blocking-mode socket it returns when `count` bytes are sent or the
/// input ends, as the blocking call does.
///
/// # Safety
/// As `sendfile(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    if mode() != OFF
        && let Some(mut b) = plan(out_fd)
    {
        return b.run_all(
            false,
            || count,
            // SAFETY: the caller's arguments; the kernel advances `offset` (or the file
            // position) by what each call sent.
            |done| unsafe { real::sendfile()(out_fd, in_fd, offset, count - done) },
        );
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::sendfile()(out_fd, in_fd, offset, count) }
}

/// `sendfile64`, the same function on x86_64 (what C code built with
/// `_FILE_OFFSET_BITS=64` calls).
///
/// # Safety
/// As `sendfile(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, unchanged.
    unsafe { sendfile(out_fd, in_fd, offset, count) }
}

/// `splice(2)`: waits on its socket end (one end is a pipe, which the hooks leave alone)
/// unless `SPLICE_F_NONBLOCK` is given.
///
/// # Safety
/// As `splice(2)`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    // SAFETY: the caller's arguments, unchanged.
    let op = || unsafe { real::splice()(fd_in, off_in, fd_out, off_out, len, flags) };
    if mode() != OFF && flags & libc::SPLICE_F_NONBLOCK == 0 {
        if let Some(mut b) = plan(fd_in) {
            return b.run(true, op);
        }
        if let Some(mut b) = plan(fd_out) {
            return b.run(false, op);
        }
    }
    op()
}

/// `count` iovecs at `iov` as a slice (empty for a null pointer or a count below 1).
///
/// # Safety
/// `iov` is valid for `count` iovecs if it is not null and `count > 0`.
unsafe fn iovecs<'a>(iov: *const iovec, count: c_int) -> &'a [iovec] {
    if iov.is_null() || count <= 0 {
        return &[];
    }
    // SAFETY: per the contract.
    unsafe { std::slice::from_raw_parts(iov, count as usize) }
}

/// The iovecs of a message header.
///
/// # Safety
/// `msg` is a valid header whose `msg_iov` is valid for `msg_iovlen` iovecs.
unsafe fn msg_iovecs<'a>(msg: *const msghdr) -> &'a [iovec] {
    // SAFETY: per the contract.
    unsafe {
        let m = &*msg;
        iovecs(
            m.msg_iov,
            c_int::try_from(m.msg_iovlen).unwrap_or(c_int::MAX),
        )
    }
}

/// The total length of `iov`.
fn iov_len(iov: &[iovec]) -> usize {
    iov.iter().fold(0usize, |n, v| n.saturating_add(v.iov_len))
}

/// `iov` without its first `skip` bytes.
fn advanced(iov: &[iovec], mut skip: usize) -> Vec<iovec> {
    let mut rest = Vec::with_capacity(iov.len());
    for v in iov {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        rest.push(iovec {
            // SAFETY: `skip < iov_len`: still inside the caller's buffer.
            iov_base: unsafe { v.iov_base.cast::<u8>().add(skip) }.cast(),
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advanced_skips_whole_and_partial_buffers() {
        let (mut a, mut b) = ([0u8; 3], [0u8; 4]);
        let iov = [
            iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        assert_eq!(iov_len(&iov), 7);
        let rest = advanced(&iov, 4);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].iov_len, 3);
        assert_eq!(rest[0].iov_base, b[1..].as_mut_ptr().cast());
        assert!(advanced(&iov, 7).is_empty());
    }
}
