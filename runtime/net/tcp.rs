//! TCP: [`TcpListener`] and [`TcpStream`], cooperative twins of std's.

use std::io;
use std::net::{self, Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::addr::each_addr;
use super::{Expiry, Io, ToSocketAddrs, socket_impls, socket_methods, stream_io_impls};
use crate::hub::Direction;

/// A TCP socket server, listening for connections: std's
/// [`TcpListener`](std::net::TcpListener), cooperative.
///
/// `accept` parks the calling greenlet until a connection arrives. Accepted streams are
/// non-blocking, close-on-exec and registered with this thread's hub.
///
/// ```
/// use std::io::{Read, Write};
/// use greenhub::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let client = greenhub::spawn(move || {
///     let mut s = TcpStream::connect(addr)?;
///     let mut reply = String::new();
///     s.read_to_string(&mut reply)?;
///     Ok::<_, std::io::Error>(reply)
/// });
/// for stream in listener.incoming().take(1) {
///     stream?.write_all(b"welcome")?;
/// }
/// assert_eq!(client.join().unwrap()?, "welcome");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpListener {
    io: Rc<Io<mio::net::TcpListener>>,
}

impl TcpListener {
    /// Binds a listener to `addr` (std's `bind`: each resolved address is tried in turn).
    /// The socket has `SO_REUSEADDR` and a backlog of 1,024.
    ///
    /// # Errors
    /// The bind error of the last address tried (`AddrInUse`, `PermissionDenied`, …);
    /// a resolution error.
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<TcpListener> {
        each_addr(&addr, |a| {
            let l = mio::net::TcpListener::bind(a)?;
            Ok(TcpListener { io: Io::shared(l)? })
        })
    }

    /// Accepts a connection, parking until one arrives.
    ///
    /// Errors are std's, as they come (`ECONNABORTED`, `EMFILE`, …), with one addition:
    /// when the process is out of file descriptors or memory (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`, `ENOMEM`), `accept` first sleeps cooperatively — 5 ms, doubling on each
    /// such failure in a row up to 1 s, reset by a success, as Go's `net/http` server
    /// does — and then returns the error. A std thread-per-connection loop that logs the
    /// error and calls `accept` again would otherwise spin without ever letting the
    /// greenlets that hold the descriptors run and close them; with the pause it
    /// recovers as its std twin does (see `examples/echo_server.rs`). In non-blocking
    /// mode the error comes at once. [`StreamServer`](super::StreamServer) handles all of
    /// this itself.
    ///
    /// ```no_run
    /// use greenhub::net::TcpListener;
    /// let listener = TcpListener::bind("127.0.0.1:8080")?;
    /// for stream in listener.incoming() {
    ///     match stream {
    ///         Ok(stream) => drop(greenhub::spawn(move || drop(stream))),
    ///         Err(e) => eprintln!("accept failed: {e}"), // EMFILE: after a pause
    ///     }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// The `accept4` error; `TimedOut` if a `Timeout` scope expires (also during the
    /// pause).
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, peer) = self.io.accept_with(mio::net::TcpListener::accept)?;
        Ok((TcpStream::from_nonblocking(net::TcpStream::from(s))?, peer))
    }

    /// An endless iterator over accepted connections (std's `incoming`).
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    socket_methods! {
        /// The address it listens on.
        ///
        /// # Errors
        /// The `getsockname` error.
        fn local_addr(&self) -> io::Result<SocketAddr>;

        /// Another handle to the same listener (sharing its registration; see the
        /// [module rules](super#rules)). Never fails; `io::Result` for std's signature.
        ///
        /// # Errors
        /// None.
        share fn try_clone(&self) -> io::Result<TcpListener>;

        /// Sets `IP_TTL`.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn set_ttl(&self, ttl: u32) -> io::Result<()>;

        /// `IP_TTL`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn ttl(&self) -> io::Result<u32>;

        /// Takes the pending `SO_ERROR`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn take_error(&self) -> io::Result<Option<io::Error>>;

        /// In non-blocking mode `accept` returns `WouldBlock` instead of parking.
        ///
        /// # Errors
        /// None (kept for std's signature).
        io fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    }

    /// Converts a std listener, switching it to non-blocking mode and registering it with
    /// this thread's hub.
    ///
    /// # Errors
    /// The `fcntl` or `epoll_ctl` error.
    pub fn from_std(listener: net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        let io = Io::shared(mio::net::TcpListener::from_std(listener))?;
        Ok(TcpListener { io })
    }
}

/// The connections a [`TcpListener`] accepts, forever (std's `Incoming`).
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;
    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// A TCP connection: std's [`TcpStream`](std::net::TcpStream), cooperative.
///
/// `Read` and `Write` are implemented for `TcpStream` and `&TcpStream`, so one greenlet
/// can read while another writes (see the [module rules](super#rules)).
///
/// ```
/// use std::io::{BufRead, BufReader, Write};
/// use greenhub::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// greenhub::spawn(move || -> std::io::Result<()> {
///     let (conn, _) = listener.accept()?;
///     let mut line = String::new();
///     BufReader::new(&conn).read_line(&mut line)?;
///     (&conn).write_all(line.to_uppercase().as_bytes())
/// });
/// let mut s = TcpStream::connect(addr)?;
/// s.write_all(b"shout\n")?;
/// let mut reply = String::new();
/// BufReader::new(&s).read_line(&mut reply)?;
/// assert_eq!(reply, "SHOUT\n");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpStream {
    io: Rc<Io<net::TcpStream>>,
}

impl TcpStream {
    /// Connects to `addr`, trying each resolved address in turn (std's `connect`); the
    /// calling greenlet parks until the handshake completes.
    ///
    /// # Errors
    /// The last address's error (`ConnectionRefused`, …); a resolution error; `TimedOut`
    /// if a `Timeout` scope expires.
    pub fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<TcpStream> {
        each_addr(&addr, |a| TcpStream::connect_deadline(a, None))
    }

    /// Connects to one address, giving up after `timeout` (std's `connect_timeout`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let l = greenhub::net::TcpListener::bind("127.0.0.1:0")?;
    /// let s = greenhub::net::TcpStream::connect_timeout(&l.local_addr()?, Duration::from_secs(1))?;
    /// assert_eq!(s.peer_addr()?, l.local_addr()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// `TimedOut` ("connection timed out", as std) after `timeout`, or when a `Timeout`
    /// scope expires; `InvalidInput` for a zero timeout; the connect error.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        TcpStream::connect_deadline(*addr, Some((Instant::now() + timeout, Expiry::Connect)))
    }

    fn connect_deadline(
        addr: SocketAddr,
        deadline: Option<(Instant, Expiry)>,
    ) -> io::Result<TcpStream> {
        // A non-blocking connect (EINPROGRESS); done when writable and SO_ERROR is clear.
        let stream =
            TcpStream::from_nonblocking(net::TcpStream::from(mio::net::TcpStream::connect(addr)?))?;
        stream.io.io_loop(Direction::Write, deadline, |s| {
            if let Some(e) = s.take_error()? {
                return Err(e);
            }
            match s.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(e) => Err(e),
            }
        })?;
        Ok(stream)
    }

    /// A server's idle timeout: a call that has waited on this connection, together with
    /// the calls that waited since one last succeeded, for `timeout` shuts the connection
    /// down and fails with `TimedOut` (see [`StreamServer::idle_timeout`](super::StreamServer::idle_timeout)).
    pub(crate) fn set_idle_timeout(&self, timeout: Option<Duration>) {
        self.io.set_idle_timeout(timeout);
    }

    /// Registers a socket already in non-blocking mode.
    pub(crate) fn from_nonblocking(s: net::TcpStream) -> io::Result<TcpStream> {
        Ok(TcpStream { io: Io::shared(s)? })
    }

    /// Converts a std stream, switching it to non-blocking mode and registering it with
    /// this thread's hub.
    ///
    /// # Errors
    /// The `ioctl` or `epoll_ctl` error.
    pub fn from_std(stream: net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        TcpStream::from_nonblocking(stream)
    }

    socket_methods! {
        /// The remote address.
        ///
        /// # Errors
        /// `NotConnected` when not connected.
        fn peer_addr(&self) -> io::Result<SocketAddr>;

        /// The local address.
        ///
        /// # Errors
        /// The `getsockname` error.
        fn local_addr(&self) -> io::Result<SocketAddr>;

        /// Shuts down the read half, the write half or both (the peer reads end-of-file after
        /// a write shutdown).
        ///
        /// # Errors
        /// `NotConnected` when not connected.
        fn shutdown(&self, how: Shutdown) -> io::Result<()>;

        /// Another handle to the same connection, sharing its registration, timeouts and
        /// non-blocking mode (see the [module rules](super#rules)). Never fails; `io::Result`
        /// for std's signature.
        ///
        /// # Errors
        /// None.
        share fn try_clone(&self) -> io::Result<TcpStream>;

        /// Bounds every later read (and `peek`) call: one that waits longer fails, as in
        /// std on Linux, with `EAGAIN` (`ErrorKind::WouldBlock`). `None` waits forever.
        ///
        /// ```
        /// use std::{io::Read, time::Duration};
        /// let l = greenhub::net::TcpListener::bind("127.0.0.1:0")?;
        /// let mut s = greenhub::net::TcpStream::connect(l.local_addr()?)?;
        /// s.set_read_timeout(Some(Duration::from_millis(10)))?;
        /// let err = s.read(&mut [0; 8]).unwrap_err(); // nobody writes
        /// assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        /// # Ok::<(), std::io::Error>(())
        /// ```
        ///
        /// # Errors
        /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
        io fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;

        /// Bounds every later write call (`WouldBlock` when it expires, as std); see
        /// [`set_read_timeout`](TcpStream::set_read_timeout).
        ///
        /// # Errors
        /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
        io fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;

        /// The read timeout.
        ///
        /// # Errors
        /// None (kept for std's signature).
        io fn read_timeout(&self) -> io::Result<Option<Duration>>;

        /// The write timeout.
        ///
        /// # Errors
        /// None (kept for std's signature).
        io fn write_timeout(&self) -> io::Result<Option<Duration>>;

        /// Reads without removing the data from the queue, parking until some arrives.
        ///
        /// # Errors
        /// As `read`.
        read fn peek(&self, buf: &mut [u8]) -> io::Result<usize>;

        /// Sets `TCP_NODELAY` (disables Nagle's algorithm).
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;

        /// `TCP_NODELAY`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn nodelay(&self) -> io::Result<bool>;

        /// Sets `IP_TTL`.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn set_ttl(&self, ttl: u32) -> io::Result<()>;

        /// `IP_TTL`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn ttl(&self) -> io::Result<u32>;

        /// Takes the pending `SO_ERROR`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn take_error(&self) -> io::Result<Option<io::Error>>;

        /// In non-blocking mode calls return `WouldBlock` instead of parking.
        ///
        /// # Errors
        /// None (kept for std's signature).
        io fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    }
}

stream_io_impls!(TcpStream, drain_hint = true);

socket_impls!(TcpListener, net::TcpListener, { addr: local_addr });
socket_impls!(TcpStream, net::TcpStream, { addr: local_addr, peer: peer_addr });
