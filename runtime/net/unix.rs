//! Unix domain sockets: [`UnixListener`], [`UnixStream`] and [`UnixDatagram`],
//! cooperative twins of `std::os::unix::net`.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::{self, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Io, socket_impls, socket_methods, stream_io_impls};

/// A Unix stream socket server: std's [`UnixListener`](std::os::unix::net::UnixListener),
/// cooperative.
///
/// ```
/// use std::io::{Read, Write};
/// use greenhub::net::{UnixListener, UnixStream};
///
/// let path = std::env::temp_dir().join(format!("greenhub-doc-{}.sock", std::process::id()));
/// # let _ = std::fs::remove_file(&path);
/// let listener = UnixListener::bind(&path)?;
/// let p = path.clone();
/// let client = greenhub::spawn(move || -> std::io::Result<String> {
///     let mut s = UnixStream::connect(&p)?;
///     let mut reply = String::new();
///     s.read_to_string(&mut reply)?;
///     Ok(reply)
/// });
/// let (mut conn, _) = listener.accept()?;
/// conn.write_all(b"over unix")?;
/// drop(conn);
/// assert_eq!(client.join().unwrap()?, "over unix");
/// std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixListener {
    io: Rc<Io<mio::net::UnixListener>>,
}

impl UnixListener {
    /// Binds a listener to `path` (which must not exist).
    ///
    /// # Errors
    /// The `bind` error (`AddrInUse` if the path exists).
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<UnixListener> {
        UnixListener::from_mio(mio::net::UnixListener::bind(path)?)
    }

    /// Binds a listener to `addr` (also an abstract address).
    ///
    /// # Errors
    /// The `bind` error.
    pub fn bind_addr(addr: &SocketAddr) -> io::Result<UnixListener> {
        UnixListener::from_mio(mio::net::UnixListener::bind_addr(addr)?)
    }

    fn from_mio(l: mio::net::UnixListener) -> io::Result<UnixListener> {
        Ok(UnixListener { io: Io::shared(l)? })
    }

    /// Converts a std listener, switching it to non-blocking mode and registering it with
    /// this thread's hub.
    ///
    /// # Errors
    /// The `ioctl` or `epoll_ctl` error.
    pub fn from_std(listener: net::UnixListener) -> io::Result<UnixListener> {
        listener.set_nonblocking(true)?;
        UnixListener::from_mio(mio::net::UnixListener::from_std(listener))
    }

    /// Accepts a connection, parking until one arrives. Errors are std's; out of file
    /// descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) it first sleeps
    /// cooperatively (5 ms doubling to 1 s, reset by a success) so that the greenlets
    /// holding descriptors can close them: see
    /// [`TcpListener::accept`](super::TcpListener::accept).
    ///
    /// # Errors
    /// The `accept4` error; `TimedOut` if a `Timeout` scope expires (also during the
    /// pause).
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (s, addr) = self.io.accept_with(mio::net::UnixListener::accept)?;
        Ok((
            UnixStream::from_nonblocking(net::UnixStream::from(s))?,
            addr,
        ))
    }

    /// An endless iterator over accepted connections.
    pub fn incoming(&self) -> UnixIncoming<'_> {
        UnixIncoming { listener: self }
    }

    socket_methods! {
        /// The address it listens on.
        ///
        /// # Errors
        /// The `getsockname` error.
        fn local_addr(&self) -> io::Result<SocketAddr>;

        /// Another handle to the same listener, sharing its registration.
        ///
        /// # Errors
        /// None (kept for std's signature).
        share fn try_clone(&self) -> io::Result<UnixListener>;

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
}

/// The connections a [`UnixListener`] accepts, forever.
#[derive(Debug)]
pub struct UnixIncoming<'a> {
    listener: &'a UnixListener,
}

impl Iterator for UnixIncoming<'_> {
    type Item = io::Result<UnixStream>;
    fn next(&mut self) -> Option<io::Result<UnixStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// A Unix stream socket: std's [`UnixStream`](std::os::unix::net::UnixStream),
/// cooperative. `Read` and `Write` are implemented for `&UnixStream` too.
///
/// ```
/// use std::io::{Read, Write};
/// let (mut a, mut b) = greenhub::net::UnixStream::pair()?;
/// let reader = greenhub::spawn(move || {
///     let mut buf = [0; 3];
///     b.read_exact(&mut buf).map(|()| buf)
/// });
/// a.write_all(b"abc")?;
/// assert_eq!(&reader.join().unwrap()?, b"abc");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixStream {
    io: Rc<Io<net::UnixStream>>,
}

impl UnixStream {
    /// Connects to the socket at `path`.
    ///
    /// A Unix socket connect does not wait for the listener: when its backlog is full it
    /// fails with `EAGAIN`. Where std's blocking connect would wait, this one retries,
    /// sleeping cooperatively (1 ms doubling to 100 ms), until it gets in or a `Timeout`
    /// scope expires.
    ///
    /// # Errors
    /// The `connect` error (`NotFound`, `ConnectionRefused`, …); `TimedOut` if a `Timeout`
    /// scope expires while the backlog is full.
    pub fn connect<P: AsRef<Path>>(path: P) -> io::Result<UnixStream> {
        let path = path.as_ref();
        connect_retrying(|| mio::net::UnixStream::connect(path))
    }

    /// Connects to the socket at `addr` (also an abstract address); as
    /// [`connect`](UnixStream::connect).
    ///
    /// # Errors
    /// As `connect`.
    pub fn connect_addr(addr: &SocketAddr) -> io::Result<UnixStream> {
        connect_retrying(|| mio::net::UnixStream::connect_addr(addr))
    }

    /// An unnamed pair of connected sockets.
    ///
    /// # Errors
    /// The `socketpair` or `epoll_ctl` error.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = mio::net::UnixStream::pair()?;
        Ok((
            UnixStream::from_nonblocking(a.into())?,
            UnixStream::from_nonblocking(b.into())?,
        ))
    }

    fn from_nonblocking(s: net::UnixStream) -> io::Result<UnixStream> {
        Ok(UnixStream { io: Io::shared(s)? })
    }

    /// Converts a std stream, switching it to non-blocking mode and registering it with
    /// this thread's hub.
    ///
    /// # Errors
    /// The `ioctl` or `epoll_ctl` error.
    pub fn from_std(stream: net::UnixStream) -> io::Result<UnixStream> {
        stream.set_nonblocking(true)?;
        UnixStream::from_nonblocking(stream)
    }

    socket_methods! {
        /// Another handle to the same connection, sharing its registration (see the
        /// [module rules](super#rules)).
        ///
        /// # Errors
        /// None (kept for std's signature).
        share fn try_clone(&self) -> io::Result<UnixStream>;

        /// The local address.
        ///
        /// # Errors
        /// The `getsockname` error.
        fn local_addr(&self) -> io::Result<SocketAddr>;

        /// The peer's address.
        ///
        /// # Errors
        /// The `getpeername` error.
        fn peer_addr(&self) -> io::Result<SocketAddr>;

        /// Bounds every later read call; one that waits longer fails, as in std on Linux,
        /// with `EAGAIN` (`ErrorKind::WouldBlock`).
        ///
        /// # Errors
        /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
        io fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;

        /// Bounds every later write call (`WouldBlock` when it expires, as std).
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

        /// In non-blocking mode calls return `WouldBlock` instead of parking.
        ///
        /// # Errors
        /// None (kept for std's signature).
        io fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;

        /// Takes the pending `SO_ERROR`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn take_error(&self) -> io::Result<Option<io::Error>>;

        /// Shuts down the read half, the write half or both.
        ///
        /// # Errors
        /// The `shutdown` error.
        fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    }
}

/// Connects, retrying with a cooperative back-off while the listener's backlog is full.
fn connect_retrying(
    mut connect: impl FnMut() -> io::Result<mio::net::UnixStream>,
) -> io::Result<UnixStream> {
    let mut pause = Duration::from_millis(1);
    let stream = loop {
        match connect() {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                crate::hub::sleep_until(Instant::now() + pause)?;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    };
    let stream = UnixStream::from_nonblocking(stream.into())?;
    // A Unix connect completes at once (or fails); check, as for TCP.
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    Ok(stream)
}

stream_io_impls!(UnixStream, drain_hint = false);

/// A Unix datagram socket: std's [`UnixDatagram`](std::os::unix::net::UnixDatagram),
/// cooperative.
///
/// ```
/// let (a, b) = greenhub::net::UnixDatagram::pair()?;
/// let rx = greenhub::spawn(move || {
///     let mut buf = [0; 16];
///     b.recv(&mut buf).map(|n| buf[..n].to_vec())
/// });
/// a.send(b"datagram")?;
/// assert_eq!(rx.join().unwrap()?, b"datagram");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixDatagram {
    io: Rc<Io<net::UnixDatagram>>,
}

impl UnixDatagram {
    /// A socket bound to `path`.
    ///
    /// # Errors
    /// The `bind` error.
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<UnixDatagram> {
        UnixDatagram::from_mio(mio::net::UnixDatagram::bind(path)?)
    }

    /// A socket bound to `addr` (also an abstract address).
    ///
    /// # Errors
    /// The `bind` error.
    pub fn bind_addr(addr: &SocketAddr) -> io::Result<UnixDatagram> {
        UnixDatagram::from_mio(mio::net::UnixDatagram::bind_addr(addr)?)
    }

    /// A socket bound to no address.
    ///
    /// # Errors
    /// The `socket` or `epoll_ctl` error.
    pub fn unbound() -> io::Result<UnixDatagram> {
        UnixDatagram::from_mio(mio::net::UnixDatagram::unbound()?)
    }

    /// An unnamed pair of connected sockets.
    ///
    /// # Errors
    /// The `socketpair` or `epoll_ctl` error.
    pub fn pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
        let (a, b) = mio::net::UnixDatagram::pair()?;
        Ok((UnixDatagram::from_mio(a)?, UnixDatagram::from_mio(b)?))
    }

    fn from_mio(s: mio::net::UnixDatagram) -> io::Result<UnixDatagram> {
        Ok(UnixDatagram {
            io: Io::shared(net::UnixDatagram::from(s))?,
        })
    }

    /// Converts a std socket, switching it to non-blocking mode and registering it with
    /// this thread's hub.
    ///
    /// # Errors
    /// The `ioctl` or `epoll_ctl` error.
    pub fn from_std(socket: net::UnixDatagram) -> io::Result<UnixDatagram> {
        socket.set_nonblocking(true)?;
        Ok(UnixDatagram {
            io: Io::shared(socket)?,
        })
    }

    /// Connects to the socket at `path`: `send` and `recv` then use it.
    ///
    /// # Errors
    /// The `connect` error.
    pub fn connect<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        self.io.sock.connect(path)
    }

    /// Sends `buf` to the socket at `path`, parking while the peer's queue is full.
    ///
    /// # Errors
    /// The `sendto` error; `WouldBlock` after the write timeout (as std).
    pub fn send_to<P: AsRef<Path>>(&self, buf: &[u8], path: P) -> io::Result<usize> {
        let path = path.as_ref();
        self.io.write_with(|s| s.send_to(buf, path))
    }

    socket_methods! {
        /// Connects to `addr`.
        ///
        /// # Errors
        /// The `connect` error.
        fn connect_addr(&self, addr: &SocketAddr) -> io::Result<()>;

        /// Another handle to the same socket, sharing its registration.
        ///
        /// # Errors
        /// None (kept for std's signature).
        share fn try_clone(&self) -> io::Result<UnixDatagram>;

        /// The local address.
        ///
        /// # Errors
        /// The `getsockname` error.
        fn local_addr(&self) -> io::Result<SocketAddr>;

        /// The connected peer's address.
        ///
        /// # Errors
        /// `NotConnected` when not connected.
        fn peer_addr(&self) -> io::Result<SocketAddr>;

        /// Receives one datagram, parking until one arrives; returns its size and sender.
        ///
        /// # Errors
        /// The `recvfrom` error; `WouldBlock` after the read timeout (as std); `TimedOut`
        /// when a `Timeout` scope expires.
        read fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;

        /// Receives one datagram from the connected peer, parking until one arrives.
        ///
        /// # Errors
        /// As `recv_from`.
        read fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;

        /// Sends `buf` to `addr`.
        ///
        /// # Errors
        /// As `send_to`.
        write fn send_to_addr(&self, buf: &[u8], addr: &SocketAddr) -> io::Result<usize>;

        /// Sends `buf` to the connected peer, parking while its queue is full.
        ///
        /// # Errors
        /// The `send` error; `WouldBlock` after the write timeout (as std).
        write fn send(&self, buf: &[u8]) -> io::Result<usize>;

        /// Bounds every later receive call.
        ///
        /// # Errors
        /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
        io fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;

        /// Bounds every later send call.
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

        /// In non-blocking mode calls return `WouldBlock` instead of parking.
        ///
        /// # Errors
        /// None (kept for std's signature).
        io fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;

        /// Takes the pending `SO_ERROR`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn take_error(&self) -> io::Result<Option<io::Error>>;

        /// Shuts down the read half, the write half or both.
        ///
        /// # Errors
        /// The `shutdown` error.
        fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    }
}

socket_impls!(UnixListener, net::UnixListener, { addr: local_addr });
socket_impls!(UnixStream, net::UnixStream, { local: local_addr, peer: peer_addr });
socket_impls!(UnixDatagram, net::UnixDatagram, { local: local_addr });
