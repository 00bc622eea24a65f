//! Cooperative networking: drop-in twins of `std::net` and `std::os::unix::net`
//! (gevent's `socket` after `monkey.patch_all()`).
//!
//! [`TcpListener`], [`TcpStream`], [`UdpSocket`], [`UnixListener`], [`UnixStream`] and
//! [`UnixDatagram`] have the methods and traits of their std twins, but a call that would
//! block parks the calling greenlet on the hub instead of blocking the thread; from plain
//! `fn main` (the main greenlet) it runs the hub until the socket is ready. Porting a
//! blocking thread-per-connection server means changing `use std::net::…` to
//! `use greenhub::net::…` and `thread::spawn` to `greenhub::spawn` — see
//! `examples/echo_server.rs`.
//!
//! ```
//! use std::io::{Read, Write};
//! use greenhub::net::{TcpListener, TcpStream};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let server = greenhub::spawn(move || -> std::io::Result<()> {
//!     let (mut conn, _peer) = listener.accept()?;
//!     let mut buf = [0; 5];
//!     conn.read_exact(&mut buf)?;
//!     conn.write_all(&buf)
//! });
//! let mut client = TcpStream::connect(addr)?; // the main greenlet runs the hub meanwhile
//! client.write_all(b"hello")?;
//! let mut echo = [0; 5];
//! client.read_exact(&mut echo)?;
//! assert_eq!(&echo, b"hello");
//! server.join().unwrap()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Rules
//!
//! - **A socket belongs to the hub of the thread that created it.** It is registered with
//!   that hub's `epoll` when it is created (accepted, connected, bound or converted with
//!   `From<std::…>`) and deregistered when its last handle is dropped. Like greenlets,
//!   greenhub sockets are `!Send` (they never leave their hub's thread); to hand a
//!   connection to another thread, `into_raw_fd` it and rebuild it there (or use a std
//!   socket there).
//!
//!   ```compile_fail
//!   fn needs_send<T: Send>(_: T) {}
//!   needs_send(greenhub::net::TcpListener::bind("127.0.0.1:0").unwrap()); // !Send
//!   ```
//! - **Sharing.** `try_clone` and `&TcpStream` share one registration: one greenlet may
//!   read while another writes. A second greenlet that waits in the *same* direction on the
//!   same socket gets `io::ErrorKind::ResourceBusy` (gevent's `ConcurrentObjectUseError`)
//!   instead of a lost wake-up. Unlike std's `try_clone` no new descriptor is made: the
//!   descriptor is closed when the last handle goes.
//! - **Timeouts.** `set_read_timeout`/`set_write_timeout` are honoured cooperatively, per
//!   call, and an expired one gives exactly what std gives on Linux: `EAGAIN`
//!   (`io::ErrorKind::WouldBlock`, "Resource temporarily unavailable (os error 11)"), so
//!   ported code that checks for `WouldBlock` keeps working. `connect_timeout` gives std's
//!   `TimedOut` ("connection timed out"). `TimedOut` is otherwise greenhub's own: a
//!   [`Timeout`](crate::Timeout) scope or [`with_timeout`](crate::with_timeout) around a
//!   call, and a [`StreamServer`] idle timeout, cut the wait short with
//!   `io::ErrorKind::TimedOut`.
//! - **Kill.** Killing a greenlet blocked in a socket call unwinds it at that call; its
//!   wait is withdrawn, and sockets it owned are closed and deregistered as they drop.
//! - **Non-blocking mode.** `set_nonblocking(true)` makes calls return `WouldBlock` instead
//!   of parking, as in std.
//! - **Name resolution never blocks the hub.** Host names in a [`ToSocketAddrs`] argument
//!   are resolved with `getaddrinfo` on the [thread pool](crate::spawn_blocking) while the
//!   caller waits cooperatively; IP-address literals skip the pool. See [`lookup_host`].
//!   Resolution failures give std's error.
//! - **File descriptors.** The first hub a process starts raises the soft
//!   `RLIMIT_NOFILE` to the hard limit, once (as Go does), so a server is not stopped by the
//!   customary soft limit of 1,024. When `accept` fails for want of descriptors or memory
//!   (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) it returns that error as std does, but
//!   first sleeps cooperatively (5 ms, doubling on each failure in a row to 1 s, reset by
//!   a success: Go's `net/http` back-off) so that the other greenlets run and close their
//!   connections: a std-style `for s in listener.incoming()` loop that logs errors and
//!   goes on recovers instead of spinning. [`StreamServer`] also logs once per episode and
//!   keeps serving open connections.

mod addr;
mod idle;
mod server;
mod tcp;
mod udp;
mod unix;

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;

use crate::hub::{Direction, Hub, current_hub};
use idle::IdleClock;

pub use addr::{ToSocketAddrs, gethostbyname, lookup_host};
pub use server::{ServerStats, ServerThreads, StreamServer, ThreadedBuilder};
pub use tcp::{Incoming, TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixDatagram, UnixIncoming, UnixListener, UnixStream};

/// std's address types, re-exported so that `use greenhub::net::{…}` replaces `use std::net::{…}`.
pub use std::net::{
    AddrParseError, IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6,
};

/// An fd's registration with this thread's hub; dropping it deregisters the fd.
struct Registration {
    hub: Rc<Hub>,
    token: usize,
    fd: RawFd,
}

impl Registration {
    fn new(fd: BorrowedFd<'_>) -> io::Result<Registration> {
        let hub = current_hub();
        let fd = fd.as_raw_fd();
        let token = hub.register_io_fd(&mut SourceFd(&fd), fd)?;
        Ok(Registration { hub, token, fd })
    }

    fn wait(&self, direction: Direction, deadline: Option<Instant>) -> io::Result<()> {
        self.hub.wait_io(self.token, direction, deadline)
    }

    /// As `wait`, but `Ok(false)` when `deadline` passes.
    fn wait_until(&self, direction: Direction, deadline: Option<Instant>) -> io::Result<bool> {
        self.hub.wait_io_until(self.token, direction, deadline)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.deregister_io(&mut SourceFd(&self.fd), self.token);
    }
}

/// First pause of `accept` after it ran out of descriptors or memory (Go's).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest such pause.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Is `e` an `accept` failure for want of descriptors or memory (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`): one that only time and other greenlets can cure?
pub(crate) fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// What a wait's own deadline is, and so what its expiry returns.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    /// `set_read_timeout`/`set_write_timeout`: std's `EAGAIN` (`WouldBlock`).
    SocketTimeout,
    /// `connect_timeout`: std's `TimedOut`, "connection timed out".
    Connect,
}

impl Expiry {
    fn error(self) -> io::Error {
        match self {
            Expiry::SocketTimeout => io::Error::from_raw_os_error(libc::EAGAIN),
            Expiry::Connect => io::Error::new(io::ErrorKind::TimedOut, "connection timed out"),
        }
    }
}

/// A non-blocking socket registered with the hub, plus the std-like settings that shape
/// its blocking calls. Every blocking call of every socket type goes through
/// [`Io::io_loop`].
pub(crate) struct Io<S> {
    // Declared before `sock`: deregistered while the fd is still open.
    reg: Registration,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
    nonblocking: Cell<bool>,
    /// A server's idle timeout on this connection (see [`Io::set_idle_timeout`]).
    idle: IdleClock,
    /// A listener's next pause after `accept` ran out of resources (zero: none yet).
    accept_backoff: Cell<Duration>,
    sock: S,
}

impl<S: AsFd> Io<S> {
    /// Registers `sock`, which must already be in non-blocking mode.
    fn new(sock: S) -> io::Result<Io<S>> {
        Ok(Io {
            reg: Registration::new(sock.as_fd())?,
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
            nonblocking: Cell::new(false),
            idle: IdleClock::default(),
            accept_backoff: Cell::new(Duration::ZERO),
            sock,
        })
    }

    /// Shared and ready to hand out.
    fn shared(sock: S) -> io::Result<Rc<Io<S>>> {
        Io::new(sock).map(Rc::new)
    }

    /// Deregisters and gives the socket back.
    fn into_inner(self) -> S {
        let Io { reg, sock, .. } = self;
        drop(reg);
        sock
    }

    /// Runs `op` until it does not return `WouldBlock`, parking on the hub in between:
    /// the one loop behind every blocking socket call.
    ///
    /// # Errors
    /// `op`'s error; at `deadline`, what its [`Expiry`] says; `TimedOut` when a `Timeout`
    /// scope or the idle timeout expires; `ResourceBusy` when another greenlet already
    /// waits in `direction` on this socket; `WouldBlock` at once in non-blocking mode.
    fn io_loop<R>(
        &self,
        direction: Direction,
        deadline: Option<(Instant, Expiry)>,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match op(&self.sock) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.nonblocking.get() {
                        return Err(e);
                    }
                    self.reg.hub.clear_ready(self.reg.token, direction);
                    self.wait(direction, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(r) => {
                    self.idle.progress();
                    return Ok(r);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One wait of [`io_loop`](Io::io_loop): until ready, `deadline`, or the idle timeout
    /// runs out (see [`IdleClock`]), whichever is first.
    fn wait(&self, direction: Direction, deadline: Option<(Instant, Expiry)>) -> io::Result<()> {
        let Some(_idle_wait) = self.idle.begin_wait() else {
            return match self.reg.wait_until(direction, deadline.map(|(at, _)| at))? {
                true => Ok(()),
                false => Err(deadline.map_or(Expiry::SocketTimeout, |(_, e)| e).error()),
            };
        };
        let idle_at = self.idle.expires_at();
        let own = deadline.filter(|&(at, _)| idle_at.is_none_or(|i| at < i));
        let until = own.map(|(at, _)| at).or(idle_at);
        match (self.reg.wait_until(direction, until)?, own) {
            (true, _) => Ok(()),
            (false, Some((_, expiry))) => Err(expiry.error()),
            // Another call on the connection succeeded meanwhile: the clock restarted.
            (false, None) if self.idle.expires_at().is_some_and(|i| Instant::now() < i) => Ok(()),
            (false, None) => Err(self.idle_expired()),
        }
    }

    /// The idle timeout passed: shut the connection down (the peer sees end-of-file, later
    /// calls fail at once) and say why.
    fn idle_expired(&self) -> io::Error {
        let _ = socket2::SockRef::from(&self.sock).shutdown(Shutdown::Both);
        let idle = self.idle.timeout().unwrap_or_default();
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the connection was idle for {idle:?}: shut down by the idle timeout"),
        )
    }

    /// A read-side call (read, recv, peek), bounded by the read timeout.
    fn read_with<R>(&self, op: impl FnMut(&S) -> io::Result<R>) -> io::Result<R> {
        let deadline = deadline_after(self.read_timeout.get());
        self.io_loop(Direction::Read, deadline, op)
    }

    /// A read of up to `asked` bytes from a stream socket (`op`), bounded by the read
    /// timeout. When the last read returned less than it asked for and no read edge came
    /// since, the receive queue is known to be empty: this read waits first instead of
    /// making a `read` system call that would fail with `EAGAIN` (the hub keeps the
    /// read-closed bit sticky, so an end-of-file is never waited for; see
    /// `Hub::note_short_read`). Non-blocking mode always makes the call, as std does.
    ///
    /// `drain_hint`: may a short read be taken to mean an empty receive queue? (True of
    /// TCP; a Unix stream read also stops early at a change of sender credentials.)
    fn stream_read(
        &self,
        asked: usize,
        drain_hint: bool,
        op: impl FnMut(&S) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let deadline = deadline_after(self.read_timeout.get());
        if drain_hint && !self.nonblocking.get() && self.reg.hub.is_drained(self.reg.token) {
            self.wait(Direction::Read, deadline)?;
        }
        let n = self.io_loop(Direction::Read, deadline, op)?;
        if drain_hint && n > 0 && n < asked {
            self.reg.hub.note_short_read(self.reg.token);
        }
        Ok(n)
    }

    /// A write-side call (write, send), bounded by the write timeout.
    fn write_with<R>(&self, op: impl FnMut(&S) -> io::Result<R>) -> io::Result<R> {
        let deadline = deadline_after(self.write_timeout.get());
        self.io_loop(Direction::Write, deadline, op)
    }

    /// An `accept` (of any listener type): parks until a connection arrives. Out of
    /// descriptors or memory ([`out_of_resources`]), it sleeps cooperatively before it
    /// returns the error — 5 ms, doubling on each such failure in a row up to 1 s, reset
    /// by a success — so that a caller that retries at once does not starve the greenlets
    /// that would free descriptors. Non-blocking mode returns the error at once.
    fn accept_with<R>(&self, op: impl FnMut(&S) -> io::Result<R>) -> io::Result<R> {
        match self.read_with(op) {
            Ok(r) => {
                self.accept_backoff.set(Duration::ZERO);
                Ok(r)
            }
            Err(e) if out_of_resources(&e) && !self.nonblocking.get() => {
                let pause = self.accept_backoff.get().max(ACCEPT_BACKOFF_MIN);
                self.accept_backoff.set((pause * 2).min(ACCEPT_BACKOFF_MAX));
                crate::hub::sleep_until(Instant::now() + pause)?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Shuts the connection down once calls on it have waited `timeout` since one last
    /// succeeded (`None`: never); see [`IdleClock`] and [`StreamServer::idle_timeout`].
    fn set_idle_timeout(&self, timeout: Option<Duration>) {
        self.idle.set_timeout(timeout);
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(check_timeout(timeout)?);
        Ok(())
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout.set(check_timeout(timeout)?);
        Ok(())
    }

    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.read_timeout.get())
    }

    fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.write_timeout.get())
    }

    /// In non-blocking mode a call that would wait returns `WouldBlock` instead.
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.nonblocking.set(nonblocking);
        Ok(())
    }
}

/// Turns a shared socket into its fd: the socket itself if this is the last handle,
/// else a duplicate (the other handles keep theirs).
///
/// # Panics
/// If the duplicate cannot be made (the process is out of file descriptors).
fn into_owned_fd<S: AsFd + Into<std::os::fd::OwnedFd>>(io: Rc<Io<S>>) -> std::os::fd::OwnedFd {
    match Rc::try_unwrap(io) {
        Ok(io) => io.into_inner().into(),
        Err(shared) => shared
            .sock
            .as_fd()
            .try_clone_to_owned()
            .expect("greenhub: cannot duplicate a shared socket's file descriptor"),
    }
}

/// Declares std-twin socket methods, each a one-line delegation written once here. Each
/// entry is the method's docs and signature (without `pub` and body), prefixed by where
/// the call goes:
///
/// - no prefix: to the socket's own method of that name;
/// - `read` / `write`: likewise, waiting cooperatively until the socket is ready (bounded
///   by the read or write timeout);
/// - `io`: to the shared [`Io`]'s method of that name (timeouts, non-blocking mode);
/// - `share`: `try_clone`, another handle to the same `Io`.
///
/// Used inside `impl T` of a type whose `io` field is an `Rc<Io<_>>`.
macro_rules! socket_methods {
    () => {};
    ($(#[$doc:meta])* fn $($rest:tt)*) => {
        $crate::net::socket_methods!($(#[$doc])* sock fn $($rest)*);
    };
    (
        $(#[$doc:meta])*
        $to:ident fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;
        $($rest:tt)*
    ) => {
        $(#[$doc])*
        pub fn $name(&self $(, $arg: $ty)*) -> $ret {
            $crate::net::socket_methods!(@call self, $to $name($($arg),*))
        }
        $crate::net::socket_methods!($($rest)*);
    };
    (@call $self:ident, sock $name:ident($($arg:ident),*)) => {
        $self.io.sock.$name($($arg),*)
    };
    (@call $self:ident, read $name:ident($($arg:ident),*)) => {
        $self.io.read_with(|s| s.$name($($arg),*))
    };
    (@call $self:ident, write $name:ident($($arg:ident),*)) => {
        $self.io.write_with(|s| s.$name($($arg),*))
    };
    (@call $self:ident, io $name:ident($($arg:ident),*)) => {
        $self.io.$name($($arg),*)
    };
    (@call $self:ident, share try_clone()) => {
        Ok(Self {
            io: $self.io.clone(),
        })
    };
}
pub(crate) use socket_methods;

/// `Read` and `Write` for a stream type and for a shared reference to it, waiting
/// cooperatively (`&T` lets one greenlet read while another writes). `drain_hint`: see
/// `Io::stream_read`.
macro_rules! stream_io_impls {
    ($t:ty, drain_hint = $drain_hint:literal) => {
        impl ::std::io::Read for &$t {
            fn read(&mut self, buf: &mut [u8]) -> ::std::io::Result<usize> {
                let asked = buf.len();
                self.io.stream_read(asked, $drain_hint, |mut s| {
                    ::std::io::Read::read(&mut s, buf)
                })
            }
            fn read_vectored(
                &mut self,
                bufs: &mut [::std::io::IoSliceMut<'_>],
            ) -> ::std::io::Result<usize> {
                let asked = bufs.iter().map(|b| b.len()).sum();
                self.io.stream_read(asked, $drain_hint, |mut s| {
                    ::std::io::Read::read_vectored(&mut s, bufs)
                })
            }
        }

        impl ::std::io::Write for &$t {
            fn write(&mut self, buf: &[u8]) -> ::std::io::Result<usize> {
                self.io
                    .write_with(|mut s| ::std::io::Write::write(&mut s, buf))
            }
            fn write_vectored(
                &mut self,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::io::Result<usize> {
                self.io
                    .write_with(|mut s| ::std::io::Write::write_vectored(&mut s, bufs))
            }
            fn flush(&mut self) -> ::std::io::Result<()> {
                Ok(())
            }
        }

        impl ::std::io::Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> ::std::io::Result<usize> {
                ::std::io::Read::read(&mut &*self, buf)
            }
            fn read_vectored(
                &mut self,
                bufs: &mut [::std::io::IoSliceMut<'_>],
            ) -> ::std::io::Result<usize> {
                ::std::io::Read::read_vectored(&mut &*self, bufs)
            }
        }

        impl ::std::io::Write for $t {
            fn write(&mut self, buf: &[u8]) -> ::std::io::Result<usize> {
                ::std::io::Write::write(&mut &*self, buf)
            }
            fn write_vectored(
                &mut self,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::io::Result<usize> {
                ::std::io::Write::write_vectored(&mut &*self, bufs)
            }
            fn flush(&mut self) -> ::std::io::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use stream_io_impls;

/// The trait impls every socket type has: `Debug` (its name, the addresses its
/// `{ field: getter }` list gives where known, and its fd), the fd traits, and
/// `From<$std>` (through `from_std`).
macro_rules! socket_impls {
    ($t:ident, $std:ty, { $($field:ident: $getter:ident),* }) => {
        impl ::std::fmt::Debug for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let mut d = f.debug_struct(stringify!($t));
                $(
                    if let Ok(a) = self.$getter() {
                        d.field(stringify!($field), &a);
                    }
                )*
                d.field("fd", &::std::os::fd::AsRawFd::as_raw_fd(self))
                    .finish()
            }
        }

        impl ::std::os::fd::AsFd for $t {
            fn as_fd(&self) -> ::std::os::fd::BorrowedFd<'_> {
                ::std::os::fd::AsFd::as_fd(&self.io.sock)
            }
        }

        impl ::std::os::fd::AsRawFd for $t {
            fn as_raw_fd(&self) -> ::std::os::fd::RawFd {
                ::std::os::fd::AsRawFd::as_raw_fd(&self.io.sock)
            }
        }

        impl ::std::os::fd::IntoRawFd for $t {
            /// Deregisters the socket and gives up its fd, still in non-blocking mode. If
            /// other handles share it (`try_clone`), returns a duplicate instead.
            ///
            /// # Panics
            /// If that duplicate cannot be made (out of file descriptors).
            fn into_raw_fd(self) -> ::std::os::fd::RawFd {
                ::std::os::fd::IntoRawFd::into_raw_fd($crate::net::into_owned_fd(self.io))
            }
        }

        impl From<$t> for ::std::os::fd::OwnedFd {
            /// As [`IntoRawFd::into_raw_fd`](std::os::fd::IntoRawFd::into_raw_fd).
            fn from(s: $t) -> ::std::os::fd::OwnedFd {
                $crate::net::into_owned_fd(s.io)
            }
        }

        impl ::std::os::fd::FromRawFd for $t {
            /// Takes ownership of `fd` and registers it with this thread's hub, as
            /// `From<std type>`.
            ///
            /// # Safety
            /// `fd` must be an open socket of the right kind, owned by nobody else.
            ///
            /// # Panics
            /// As `From<std type>`.
            unsafe fn from_raw_fd(fd: ::std::os::fd::RawFd) -> $t {
                // SAFETY: the caller guarantees that `fd` is an open socket of this kind
                // that nobody else owns, which is what std's `from_raw_fd` requires.
                let s = unsafe { <$std as ::std::os::fd::FromRawFd>::from_raw_fd(fd) };
                $t::from(s)
            }
        }

        impl From<$std> for $t {
            /// Converts the std socket: non-blocking mode, registered with this thread's
            /// hub (see `from_std` for the fallible version).
            ///
            /// # Panics
            /// If the socket cannot be made non-blocking or registered (a descriptor that
            /// is not a socket, or one already registered with this hub).
            fn from(s: $std) -> $t {
                $t::from_std(s).unwrap_or_else(|e| {
                    panic!(
                        "greenhub: cannot convert a {} into a cooperative socket: {e}",
                        stringify!($std)
                    )
                })
            }
        }
    };
}
pub(crate) use socket_impls;

/// The deadline of a call bounded by a socket timeout.
fn deadline_after(timeout: Option<Duration>) -> Option<(Instant, Expiry)> {
    timeout.map(|t| (Instant::now() + t, Expiry::SocketTimeout))
}

/// std refuses a zero timeout with `InvalidInput`; so do we.
fn check_timeout(timeout: Option<Duration>) -> io::Result<Option<Duration>> {
    if timeout == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        ));
    }
    Ok(timeout)
}

/// Waits cooperatively until `fd` is readable, or `timeout` passes (gevent's `wait_read`).
///
/// Works with any pollable descriptor — a pipe, a std socket, a terminal — that is not
/// already registered with this hub (a greenhub socket's own calls already wait; waiting
/// on one here fails with `AlreadyExists`). The fd is registered for the wait only.
///
/// ```
/// use std::io::Write;
/// use std::os::unix::net::UnixStream; // a std socket: greenhub only waits on it
/// use std::time::Duration;
///
/// let (a, mut b) = UnixStream::pair()?;
/// let err = greenhub::net::wait_readable(&a, Some(Duration::from_millis(10))).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
/// b.write_all(b"x")?;
/// greenhub::net::wait_readable(&a, None)?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// `TimedOut` when `timeout` passes or a `Timeout` scope expires; `AlreadyExists` for a
/// descriptor this hub already watches; `PermissionDenied` for one `epoll` cannot watch
/// (a regular file).
pub fn wait_readable(fd: impl AsFd, timeout: Option<Duration>) -> io::Result<()> {
    wait_fd(fd.as_fd(), Direction::Read, timeout)
}

/// Waits cooperatively until `fd` is writable, or `timeout` passes (gevent's `wait_write`).
///
/// As [`wait_readable`], for writing.
///
/// ```
/// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
/// greenhub::net::wait_writable(&a, None)?; // an empty socket buffer: at once
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// As [`wait_readable`].
pub fn wait_writable(fd: impl AsFd, timeout: Option<Duration>) -> io::Result<()> {
    wait_fd(fd.as_fd(), Direction::Write, timeout)
}

fn wait_fd(fd: BorrowedFd<'_>, direction: Direction, timeout: Option<Duration>) -> io::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    // Registering reports the fd's current readiness at once (epoll checks on insert).
    let reg = Registration::new(fd).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            io::Error::new(
                e.kind(),
                "this fd is already registered with the hub (a greenhub socket waits by itself)",
            )
        } else {
            e
        }
    })?;
    reg.wait(direction, deadline)
}
