//! Connecting many times to one address: spreading the connections over loopback
//! source addresses.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use greenhub::net::TcpStream;

/// Connects in flight at once per hub: well under the listen backlog, so that the
/// server's accept queue does not overflow (an overflow drops SYNs: 1 s retries).
pub const CONNECTS_IN_FLIGHT: usize = 128;

/// Loopback source addresses a client spreads its connections over (127.0.0.1 to
/// 127.0.0.8) when it connects to a 127.x address.
///
/// Why: Linux picks the local port of a `connect` by scanning the ephemeral range for
/// one whose (source, destination) pair is unused, even ports first. With more than half
/// the range (about 14,000 ports here) in use toward one destination, every further
/// connect scans all the even ports first: ~300 us of kernel time each. Spreading the
/// sources gives every source its own port space, so each scan stops at once.
pub const LOOPBACK_SOURCES: u8 = 8;

/// Connects to `dst`, from the loopback source address chosen by `n` when `dst` is a
/// 127.x address (see [`LOOPBACK_SOURCES`]); a plain connect otherwise.
pub fn connect_spread(n: usize, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let IpAddr::V4(ip) = dst.ip() else {
        return TcpStream::connect_timeout(&dst, timeout);
    };
    if !ip.is_loopback() {
        return TcpStream::connect_timeout(&dst, timeout);
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let src = Ipv4Addr::new(127, 0, 0, 1 + (n % usize::from(LOOPBACK_SOURCES)) as u8);
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::new(src.into(), 0).into())
        .map_err(|e| match e.raw_os_error() {
            // bind(port 0) says EADDRINUSE when no local port is left: the same limit
            // connect reports as EADDRNOTAVAIL.
            Some(libc::EADDRINUSE) => io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
            _ => e,
        })?;
    match sock.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            greenhub::net::wait_writable(&sock, Some(timeout))?;
            if let Some(e) = sock.take_error()? {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    TcpStream::from_std(sock.into())
}
