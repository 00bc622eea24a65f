//! Connecting many times to one address: spreading the connections over loopback
//! source addresses, each with its own local port space.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use greenhub::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Connects in flight at once per hub: well under the listen backlog, so that the
/// server's accept queue does not overflow (an overflow drops SYNs: 1 s retries).
pub const CONNECTS_IN_FLIGHT: usize = 128;

/// Loopback source addresses [`connect_spread`] spreads its connections over (127.0.0.1
/// to 127.0.0.8) when it connects to a 127.x address.
pub const LOOPBACK_SOURCES: u32 = 8;

/// How many source addresses [`loopback_source`] can name: 127.0.0.0/8 without the
/// addresses ending in .0 or .255.
pub const LOOPBACK_SOURCES_MAX: u32 = 254 << 16;

/// The `i`-th loopback source address: 127.0.0.1, .2, ... .254, 127.0.1.1, ... (every
/// address of 127.0.0.0/8 is local on Linux: binding one needs no setup).
///
/// # Panics
/// If `i` is not below [`LOOPBACK_SOURCES_MAX`].
pub fn loopback_source(i: u32) -> Ipv4Addr {
    assert!(i < LOOPBACK_SOURCES_MAX, "no loopback source number {i}");
    let high = i / 254;
    Ipv4Addr::new(127, (high >> 8) as u8, high as u8, (i % 254 + 1) as u8)
}

/// The source address connection `n` uses toward `dst` when the connections spread over
/// `sources` loopback addresses: `None` (the kernel chooses) unless `dst` is IPv4
/// loopback.
pub fn spread_source(n: usize, sources: u32, dst: SocketAddr) -> Option<Ipv4Addr> {
    match dst.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            Some(loopback_source((n % sources.max(1) as usize) as u32))
        }
        _ => None,
    }
}

/// Connects to `dst`, from loopback source address number `n % LOOPBACK_SOURCES` when
/// `dst` is a 127.x address; a plain connect otherwise.
pub fn connect_spread(n: usize, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    connect_from(spread_source(n, LOOPBACK_SOURCES, dst), dst, timeout).map(|(s, _)| s)
}

/// Connects to `dst` from `src` (any port), or from where the kernel chooses; returns
/// the stream and the time the `connect` system call itself took (where Linux searches
/// the local port).
///
/// Why `IP_BIND_ADDRESS_NO_PORT`: a plain `bind(src, port 0)` must choose a port no other
/// socket on `src` holds, whatever its peer, TIME_WAIT sockets included, by a scan of
/// the ephemeral range that gets slower with every port taken (with tens of thousands of
/// TIME_WAIT sockets from earlier runs a connect took ~2 ms of kernel time). With the
/// option, `bind` only sets the address and `connect` picks the port: one free for this
/// (source, destination) pair, so each source address toward each server address has the
/// whole `net.ipv4.ip_local_port_range`, and TIME_WAIT sockets toward other servers are
/// not in the way (toward the same one, `net.ipv4.tcp_tw_reuse` lets loopback ones be
/// reused after a second).
///
/// # Errors
/// The socket calls' errors; `EADDRNOTAVAIL` when `src` has no port left toward `dst`.
pub fn connect_from(
    src: Option<Ipv4Addr>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<(TcpStream, Duration)> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    if let Some(src) = src {
        // Without the option (Linux before 4.2), bind picks the port as before.
        let _ = set_bind_address_no_port(&sock);
        sock.bind(&SocketAddr::new(src.into(), 0).into())?;
    }
    let t = Instant::now();
    let started = sock.connect(&dst.into());
    let syscall = t.elapsed();
    match started {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            greenhub::net::wait_writable(&sock, Some(timeout))?;
            if let Some(e) = sock.take_error()? {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    Ok((TcpStream::from_std(sock.into())?, syscall))
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on `sock` (socket2 has no setter for it; nix does).
fn set_bind_address_no_port(sock: &Socket) -> io::Result<()> {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
        .map_err(io::Error::from)
}
