//! UDP: [`UdpSocket`], the cooperative twin of std's.

use std::io;
use std::net::{self, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use super::addr::each_addr;
use super::{Io, ToSocketAddrs, socket_impls, socket_methods};

/// A UDP socket: std's [`UdpSocket`](std::net::UdpSocket), cooperative. Receiving parks
/// the calling greenlet until a datagram arrives; sending parks while the send buffer is
/// full.
///
/// ```
/// use greenhub::net::UdpSocket;
/// let server = UdpSocket::bind("127.0.0.1:0")?;
/// let addr = server.local_addr()?;
/// let echo = greenhub::spawn(move || -> std::io::Result<()> {
///     let mut buf = [0; 64];
///     let (n, from) = server.recv_from(&mut buf)?;
///     server.send_to(&buf[..n], from)?;
///     Ok(())
/// });
/// let client = UdpSocket::bind("127.0.0.1:0")?;
/// client.connect(addr)?;
/// client.send(b"ping")?;
/// let mut buf = [0; 64];
/// let n = client.recv(&mut buf)?;
/// assert_eq!(&buf[..n], b"ping");
/// echo.join().unwrap()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UdpSocket {
    io: Rc<Io<net::UdpSocket>>,
}

impl UdpSocket {
    /// Binds a socket to `addr`, trying each resolved address in turn.
    ///
    /// # Errors
    /// The bind error of the last address tried; a resolution error.
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<UdpSocket> {
        each_addr(&addr, |a| {
            UdpSocket::from_nonblocking(net::UdpSocket::from(mio::net::UdpSocket::bind(a)?))
        })
    }

    fn from_nonblocking(s: net::UdpSocket) -> io::Result<UdpSocket> {
        Ok(UdpSocket { io: Io::shared(s)? })
    }

    /// Converts a std socket, switching it to non-blocking mode and registering it with
    /// this thread's hub.
    ///
    /// # Errors
    /// The `ioctl` or `epoll_ctl` error.
    pub fn from_std(socket: net::UdpSocket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        UdpSocket::from_nonblocking(socket)
    }

    /// Sends `buf` to the first address `addr` resolves to (std's rule).
    ///
    /// # Errors
    /// The `sendto` error; a resolution error; `WouldBlock` after the write timeout (as
    /// std).
    pub fn send_to<A: ToSocketAddrs>(&self, buf: &[u8], addr: A) -> io::Result<usize> {
        let to = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no addresses to send data to")
        })?;
        self.io.write_with(|s| s.send_to(buf, to))
    }

    /// Connects to the first address `addr` resolves to that accepts (std's rule):
    /// `send` and `recv` then use it, and datagrams from elsewhere are dropped.
    ///
    /// # Errors
    /// The `connect` error; a resolution error.
    pub fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<()> {
        each_addr(&addr, |a| self.io.sock.connect(a))
    }

    socket_methods! {
        /// Receives one datagram, parking until one arrives; returns its size and sender.
        ///
        /// # Errors
        /// The `recvfrom` error; `WouldBlock` after the read timeout (as std); `TimedOut`
        /// when a `Timeout` scope expires.
        read fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;

        /// As [`recv_from`](UdpSocket::recv_from), leaving the datagram queued.
        ///
        /// # Errors
        /// As `recv_from`.
        read fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;

        /// The address it is connected to.
        ///
        /// # Errors
        /// `NotConnected` when not connected.
        fn peer_addr(&self) -> io::Result<SocketAddr>;

        /// The local address.
        ///
        /// # Errors
        /// The `getsockname` error.
        fn local_addr(&self) -> io::Result<SocketAddr>;

        /// Another handle to the same socket, sharing its registration (see the
        /// [module rules](super#rules)).
        ///
        /// # Errors
        /// None (kept for std's signature).
        share fn try_clone(&self) -> io::Result<UdpSocket>;

        /// Bounds every later receive call; one that waits longer fails, as in std on Linux,
        /// with `EAGAIN` (`ErrorKind::WouldBlock`).
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

        /// Sets `SO_BROADCAST`.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn set_broadcast(&self, broadcast: bool) -> io::Result<()>;

        /// `SO_BROADCAST`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn broadcast(&self) -> io::Result<bool>;

        /// Sets `IP_MULTICAST_LOOP`.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn set_multicast_loop_v4(&self, on: bool) -> io::Result<()>;

        /// `IP_MULTICAST_LOOP`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn multicast_loop_v4(&self) -> io::Result<bool>;

        /// Sets `IP_MULTICAST_TTL`.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn set_multicast_ttl_v4(&self, ttl: u32) -> io::Result<()>;

        /// `IP_MULTICAST_TTL`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn multicast_ttl_v4(&self) -> io::Result<u32>;

        /// Sets `IPV6_MULTICAST_LOOP`.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn set_multicast_loop_v6(&self, on: bool) -> io::Result<()>;

        /// `IPV6_MULTICAST_LOOP`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn multicast_loop_v6(&self) -> io::Result<bool>;

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

        /// Joins an IPv4 multicast group.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn join_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()>;

        /// Joins an IPv6 multicast group.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn join_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()>;

        /// Leaves an IPv4 multicast group.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn leave_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()>;

        /// Leaves an IPv6 multicast group.
        ///
        /// # Errors
        /// The `setsockopt` error.
        fn leave_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()>;

        /// Takes the pending `SO_ERROR`.
        ///
        /// # Errors
        /// The `getsockopt` error.
        fn take_error(&self) -> io::Result<Option<io::Error>>;

        /// Sends `buf` to the connected address.
        ///
        /// # Errors
        /// The `send` error (`ConnectionRefused` after an ICMP port unreachable, …);
        /// `WouldBlock` after the write timeout (as std).
        write fn send(&self, buf: &[u8]) -> io::Result<usize>;

        /// Receives one datagram from the connected address, parking until one arrives.
        ///
        /// # Errors
        /// The `recv` error; `WouldBlock` after the read timeout (as std); `TimedOut` when a
        /// `Timeout` scope expires.
        read fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;

        /// As [`recv`](UdpSocket::recv), leaving the datagram queued.
        ///
        /// # Errors
        /// As `recv`.
        read fn peek(&self, buf: &mut [u8]) -> io::Result<usize>;

        /// In non-blocking mode calls return `WouldBlock` instead of parking.
        ///
        /// # Errors
        /// None (kept for std's signature).
        io fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    }
}

socket_impls!(UdpSocket, net::UdpSocket, { addr: local_addr });
