//! Address resolution that never blocks the hub: `getaddrinfo` runs on the thread pool.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::{option, slice, vec};

/// std's [`ToSocketAddrs`](std::net::ToSocketAddrs), cooperative: what `bind`, `connect`
/// and `send_to` accept.
///
/// Implemented for the same types as std's trait (`SocketAddr`, `(IpAddr, u16)`,
/// `"host:port"`, `("host", port)`, `String`, `&[SocketAddr]`, references). Literal IP
/// addresses are parsed in place; a host name is resolved with `getaddrinfo` on the
/// [thread pool](crate::spawn_blocking) while the calling greenlet waits, so other
/// greenlets keep running. Errors are std's: an unparsable string gives `InvalidInput`,
/// a failed lookup gives the same error std's `to_socket_addrs` returns.
///
/// Porting code that imports `std::net::ToSocketAddrs` to call `to_socket_addrs` itself
/// means importing this one instead (both in scope make the call ambiguous).
///
/// ```
/// use greenhub::net::ToSocketAddrs;
/// let addrs: Vec<_> = "localhost:80".to_socket_addrs()?.collect();
/// assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
/// let direct: Vec<_> = ("127.0.0.1", 8080).to_socket_addrs()?.collect(); // no pool
/// assert_eq!(direct, ["127.0.0.1:8080".parse().unwrap()]);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait ToSocketAddrs {
    /// The addresses it resolves to.
    type Iter: Iterator<Item = SocketAddr>;

    /// Resolves to socket addresses, cooperatively.
    ///
    /// # Errors
    /// `InvalidInput` for a malformed address; std's lookup error for a failed lookup;
    /// `TimedOut` if a `Timeout` scope expires during the lookup.
    fn to_socket_addrs(&self) -> io::Result<Self::Iter>;
}

macro_rules! direct {
    ($($t:ty),*) => {$(
        impl ToSocketAddrs for $t {
            type Iter = option::IntoIter<SocketAddr>;
            fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
                std::net::ToSocketAddrs::to_socket_addrs(self)
            }
        }
    )*};
}

direct!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    (IpAddr, u16),
    (Ipv4Addr, u16),
    (Ipv6Addr, u16)
);

impl ToSocketAddrs for (&str, u16) {
    type Iter = vec::IntoIter<SocketAddr>;
    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        let (host, port) = *self;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)].into_iter());
        }
        let host = host.to_string();
        resolve_on_pool(move || std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)))
    }
}

impl ToSocketAddrs for (String, u16) {
    type Iter = vec::IntoIter<SocketAddr>;
    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        (self.0.as_str(), self.1).to_socket_addrs()
    }
}

impl ToSocketAddrs for str {
    type Iter = vec::IntoIter<SocketAddr>;
    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        if let Ok(addr) = self.parse::<SocketAddr>() {
            return Ok(vec![addr].into_iter());
        }
        let has_port = self
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
        if !has_port {
            // std fails on it before any lookup: its error, on this thread.
            return std::net::ToSocketAddrs::to_socket_addrs(self)
                .map(|it| it.collect::<Vec<_>>().into_iter());
        }
        let s = self.to_string();
        resolve_on_pool(move || std::net::ToSocketAddrs::to_socket_addrs(s.as_str()))
    }
}

impl ToSocketAddrs for String {
    type Iter = vec::IntoIter<SocketAddr>;
    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        self.as_str().to_socket_addrs()
    }
}

impl<'a> ToSocketAddrs for &'a [SocketAddr] {
    type Iter = std::iter::Cloned<slice::Iter<'a, SocketAddr>>;
    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        Ok(self.iter().cloned())
    }
}

impl<T: ToSocketAddrs + ?Sized> ToSocketAddrs for &T {
    type Iter = T::Iter;
    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        (**self).to_socket_addrs()
    }
}

/// Runs a std lookup on the thread pool; the caller waits cooperatively.
fn resolve_on_pool<I>(
    lookup: impl FnOnce() -> io::Result<I> + Send + 'static,
) -> io::Result<vec::IntoIter<SocketAddr>>
where
    I: Iterator<Item = SocketAddr>,
{
    let addrs = crate::spawn_blocking(move || lookup().map(Iterator::collect::<Vec<_>>))??;
    Ok(addrs.into_iter())
}

/// Resolves `host` to socket addresses without blocking the hub (tokio's `lookup_host`;
/// std's `to_socket_addrs`, cooperative). `host` is anything [`ToSocketAddrs`] accepts,
/// so it carries a port: `"example.com:80"` or `("example.com", 80)`.
///
/// ```
/// let addrs: Vec<_> = greenhub::net::lookup_host("localhost:8080")?.collect();
/// assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// As [`ToSocketAddrs::to_socket_addrs`]: std's error for a failed lookup.
pub fn lookup_host<T: ToSocketAddrs>(host: T) -> io::Result<T::Iter> {
    host.to_socket_addrs()
}

/// The first IPv4 address of `host` (gevent's `socket.gethostbyname`), resolved without
/// blocking the hub. A literal address is returned as is.
///
/// gevent's classic example, spawning one lookup per name:
///
/// ```
/// use greenhub::{joinall, net::gethostbyname, spawn};
/// use std::time::Duration;
/// let jobs: Vec<_> = ["localhost", "127.0.0.1"]
///     .into_iter()
///     .map(|name| spawn(move || gethostbyname(name)))
///     .collect();
/// joinall(&jobs, Some(Duration::from_secs(2)));
/// for job in jobs {
///     assert_eq!(job.join().unwrap()?, std::net::Ipv4Addr::LOCALHOST);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// std's lookup error; `NotFound` if the host has no IPv4 address.
pub fn gethostbyname(host: &str) -> io::Result<Ipv4Addr> {
    (host, 0)
        .to_socket_addrs()?
        .find_map(|a| match a.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no IPv4 address for {host}"),
            )
        })
}

/// Runs `f` on each address `addr` resolves to until one succeeds; else the last error
/// (std's rule for `bind` and `connect`).
pub(crate) fn each_addr<A: ToSocketAddrs + ?Sized, T>(
    addr: &A,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match f(a) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any addresses",
        )
    }))
}
