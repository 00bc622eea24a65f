//! UDP: [`UdpSocket`], the cooperative twin of std's.

use std::fmt;
use std::io;
use std::net::{self, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use super::addr::each_addr;
use super::tcp::fd_impls;
use super::{Io, ToSocketAddrs, into_owned_fd};

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

    /// Receives one datagram, parking until one arrives; returns its size and sender.
    ///
    /// # Errors
    /// The `recvfrom` error; `TimedOut` after the read timeout or a `Timeout` scope.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io.read_with(|s| s.recv_from(buf))
    }

    /// As [`recv_from`](UdpSocket::recv_from), leaving the datagram queued.
    ///
    /// # Errors
    /// As `recv_from`.
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.io.read_with(|s| s.peek_from(buf))
    }

    /// Sends `buf` to the first address `addr` resolves to (std's rule).
    ///
    /// # Errors
    /// The `sendto` error; a resolution error; `TimedOut` after the write timeout.
    pub fn send_to<A: ToSocketAddrs>(&self, buf: &[u8], addr: A) -> io::Result<usize> {
        let to = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no addresses to send data to")
        })?;
        self.io.write_with(|s| s.send_to(buf, to))
    }

    /// The address it is connected to.
    ///
    /// # Errors
    /// `NotConnected` when not connected.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.peer_addr()
    }

    /// The local address.
    ///
    /// # Errors
    /// The `getsockname` error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.sock.local_addr()
    }

    /// Another handle to the same socket, sharing its registration (see the
    /// [module rules](super#rules)).
    ///
    /// # Errors
    /// None (kept for std's signature).
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        Ok(UdpSocket {
            io: self.io.clone(),
        })
    }

    /// Bounds every later receive call; one that waits longer fails with `TimedOut`.
    ///
    /// # Errors
    /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.io.set_read_timeout(timeout)
    }

    /// Bounds every later send call.
    ///
    /// # Errors
    /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.io.set_write_timeout(timeout)
    }

    /// The read timeout.
    ///
    /// # Errors
    /// None (kept for std's signature).
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.io.read_timeout.get())
    }

    /// The write timeout.
    ///
    /// # Errors
    /// None (kept for std's signature).
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.io.write_timeout.get())
    }

    /// Sets `SO_BROADCAST`.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn set_broadcast(&self, broadcast: bool) -> io::Result<()> {
        self.io.sock.set_broadcast(broadcast)
    }

    /// `SO_BROADCAST`.
    ///
    /// # Errors
    /// The `getsockopt` error.
    pub fn broadcast(&self) -> io::Result<bool> {
        self.io.sock.broadcast()
    }

    /// Sets `IP_MULTICAST_LOOP`.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn set_multicast_loop_v4(&self, on: bool) -> io::Result<()> {
        self.io.sock.set_multicast_loop_v4(on)
    }

    /// `IP_MULTICAST_LOOP`.
    ///
    /// # Errors
    /// The `getsockopt` error.
    pub fn multicast_loop_v4(&self) -> io::Result<bool> {
        self.io.sock.multicast_loop_v4()
    }

    /// Sets `IP_MULTICAST_TTL`.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn set_multicast_ttl_v4(&self, ttl: u32) -> io::Result<()> {
        self.io.sock.set_multicast_ttl_v4(ttl)
    }

    /// `IP_MULTICAST_TTL`.
    ///
    /// # Errors
    /// The `getsockopt` error.
    pub fn multicast_ttl_v4(&self) -> io::Result<u32> {
        self.io.sock.multicast_ttl_v4()
    }

    /// Sets `IPV6_MULTICAST_LOOP`.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn set_multicast_loop_v6(&self, on: bool) -> io::Result<()> {
        self.io.sock.set_multicast_loop_v6(on)
    }

    /// `IPV6_MULTICAST_LOOP`.
    ///
    /// # Errors
    /// The `getsockopt` error.
    pub fn multicast_loop_v6(&self) -> io::Result<bool> {
        self.io.sock.multicast_loop_v6()
    }

    /// Sets `IP_TTL`.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.io.sock.set_ttl(ttl)
    }

    /// `IP_TTL`.
    ///
    /// # Errors
    /// The `getsockopt` error.
    pub fn ttl(&self) -> io::Result<u32> {
        self.io.sock.ttl()
    }

    /// Joins an IPv4 multicast group.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn join_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()> {
        self.io.sock.join_multicast_v4(multiaddr, interface)
    }

    /// Joins an IPv6 multicast group.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn join_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.io.sock.join_multicast_v6(multiaddr, interface)
    }

    /// Leaves an IPv4 multicast group.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn leave_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()> {
        self.io.sock.leave_multicast_v4(multiaddr, interface)
    }

    /// Leaves an IPv6 multicast group.
    ///
    /// # Errors
    /// The `setsockopt` error.
    pub fn leave_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.io.sock.leave_multicast_v6(multiaddr, interface)
    }

    /// Takes the pending `SO_ERROR`.
    ///
    /// # Errors
    /// The `getsockopt` error.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.io.sock.take_error()
    }

    /// Connects to the first address `addr` resolves to that accepts (std's rule):
    /// `send` and `recv` then use it, and datagrams from elsewhere are dropped.
    ///
    /// # Errors
    /// The `connect` error; a resolution error.
    pub fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<()> {
        each_addr(&addr, |a| self.io.sock.connect(a))
    }

    /// Sends `buf` to the connected address.
    ///
    /// # Errors
    /// The `send` error (`ConnectionRefused` after an ICMP port unreachable, …);
    /// `TimedOut` after the write timeout.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.io.write_with(|s| s.send(buf))
    }

    /// Receives one datagram from the connected address, parking until one arrives.
    ///
    /// # Errors
    /// The `recv` error; `TimedOut` after the read timeout or a `Timeout` scope.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read_with(|s| s.recv(buf))
    }

    /// As [`recv`](UdpSocket::recv), leaving the datagram queued.
    ///
    /// # Errors
    /// As `recv`.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read_with(|s| s.peek(buf))
    }

    /// In non-blocking mode calls return `WouldBlock` instead of parking.
    ///
    /// # Errors
    /// None (kept for std's signature).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.io.set_nonblocking(nonblocking);
        Ok(())
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("UdpSocket");
        if let Ok(a) = self.local_addr() {
            d.field("addr", &a);
        }
        d.field("fd", &self.as_raw_fd()).finish()
    }
}

fd_impls!(UdpSocket, net::UdpSocket, UdpSocket::from_std);
