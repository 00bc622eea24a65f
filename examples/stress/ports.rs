//! The local ports a run needs: every connection from one source address to one server
//! address takes its own port of `net.ipv4.ip_local_port_range`. The clients spread their
//! connections over as many loopback source addresses (127.0.0.0/8) as keep each well
//! under the range, bind with `IP_BIND_ADDRESS_NO_PORT` (`load::connect_from`), and this
//! module checks the budget, TIME_WAIT sockets included, before anyone connects.

use std::net::{Ipv4Addr, SocketAddr};

use crate::load::{self, LOOPBACK_SOURCES, LOOPBACK_SOURCES_MAX, loopback_source, thousands};
use crate::options::{Opts, resolve};

/// The share of the port range one source address may use toward one server before the
/// run spreads over another: the kernel's search for a free port stays short.
const PORT_FILL: f64 = 0.25;

/// Above this share of the range the search gets long enough to slow the connects.
pub const PORT_CROWDED: f64 = 0.5;

/// A `connect` system call slower than this on average means the kernel's port search
/// is what the connect phase waits on (a loopback connect takes ~10-30 us).
pub const SLOW_CONNECT_US: u64 = 200;

/// The source addresses and ports of a run.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// `net.ipv4.ip_local_port_range`.
    pub lo: u32,
    pub hi: u32,
    /// Source addresses the clients spread over (1 when the kernel chooses: a server
    /// that is not on IPv4 loopback).
    pub sources: u32,
    /// Whether `--sources` chose them.
    pub forced: bool,
    /// Whether the server address is IPv4 loopback (the spread applies).
    pub loopback: bool,
    /// TIME_WAIT sockets now (`/proc/net/sockstat`), toward any address.
    pub time_wait: u64,
}

impl Ports {
    /// Ports of the range per source address toward one server.
    pub fn range(&self) -> u64 {
        u64::from(self.hi.saturating_sub(self.lo)) + 1
    }

    /// Connections per source address (the most any one takes).
    pub fn per_source(&self, n: u64) -> u64 {
        n.div_ceil(u64::from(self.sources))
    }

    /// The share of the range each source address uses.
    pub fn fill(&self, n: u64) -> f64 {
        self.per_source(n) as f64 / self.range() as f64
    }

    /// The source addresses in words: "127.0.0.1 to 127.0.0.8 (8)".
    pub fn sources_text(&self) -> String {
        if !self.loopback {
            return "the one the kernel chooses".to_string();
        }
        let last = loopback_source(self.sources - 1);
        match self.sources {
            1 => "127.0.0.1".to_string(),
            k => format!("127.0.0.1 to {last} ({})", thousands(u64::from(k))),
        }
    }

    /// Prints the port budget (and says when the range is what limits the run).
    pub fn explain(&self, n: u64) {
        let fill = self.fill(n);
        println!(
            "ports: net.ipv4.ip_local_port_range {}-{} = {} local ports per source address \
             toward one server address; {} connections from {}: up to {} each ({:.0}% of the \
             range){}. IP_BIND_ADDRESS_NO_PORT: connect picks each port per (source, server) \
             pair, so the {} sockets in TIME_WAIT (/proc/net/sockstat) hold ports only toward \
             their own server address{}.",
            self.lo,
            self.hi,
            thousands(self.range()),
            thousands(n),
            self.sources_text(),
            thousands(self.per_source(n)),
            fill * 100.0,
            if self.forced {
                ", as --sources says"
            } else {
                ""
            },
            thousands(self.time_wait),
            if self.time_wait_reused() {
                " (and connect reuses those older than a second: net.ipv4.tcp_tw_reuse)"
            } else {
                ""
            },
        );
        if fill > PORT_CROWDED && fill <= 1.0 {
            println!(
                "ports: the port range limits this run: with {:.0}% of the range taken per \
                 source address, the kernel's search for a free port slows every connect. \
                 {}",
                fill * 100.0,
                self.remedy(n)
            );
        }
    }

    /// How to get more ports for `n` connections.
    pub fn remedy(&self, n: u64) -> String {
        let more = if self.loopback {
            format!(
                "spread over more source addresses (--sources {}), ",
                self.sources_for(n)
            )
        } else {
            String::new()
        };
        format!(
            "Widen the range (sudo sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"), \
             {more}or open fewer connections."
        )
    }

    /// Sources that keep `n` connections at `PORT_FILL` of the range each.
    fn sources_for(&self, n: u64) -> u32 {
        let per = ((self.range() as f64 * PORT_FILL) as u64).max(1);
        let k = n.div_ceil(per).max(u64::from(LOOPBACK_SOURCES));
        k.min(u64::from(LOOPBACK_SOURCES_MAX)) as u32
    }

    /// Fails when `n` connections cannot get a port each; `in_way` counts TIME_WAIT
    /// sockets toward the server by source address, when they were looked up.
    pub fn check(&self, n: u64, in_way: Option<&[(Ipv4Addr, u64)]>) -> Result<(), String> {
        let per = self.per_source(n);
        let worst = in_way
            .and_then(|w| w.iter().map(|&(_, c)| c).max())
            .unwrap_or(0);
        if per + worst <= self.range() {
            return Ok(());
        }
        let tw = if worst > 0 {
            format!(
                ", and up to {} of them are held by sockets in TIME_WAIT toward the same \
                 server address",
                thousands(worst)
            )
        } else {
            String::new()
        };
        Err(format!(
            "the ephemeral port range: {} connections from {} need up to {} local ports per \
             source address toward one server address, but net.ipv4.ip_local_port_range is \
             {}-{}: {} ports{tw}, so the run would end out of ephemeral ports. {}",
            thousands(n),
            self.sources_text(),
            thousands(per),
            self.lo,
            self.hi,
            thousands(self.range()),
            self.remedy(n)
        ))
    }

    /// Whether connect reuses the port of a socket in TIME_WAIT toward the same server
    /// (one older than `net.ipv4.tcp_tw_reuse_delay`, a second by default):
    /// `net.ipv4.tcp_tw_reuse` 1, or 2 (the default) on loopback.
    pub fn time_wait_reused(&self) -> bool {
        match load::sysctl("net/ipv4/tcp_tw_reuse") {
            Some(1) => true,
            Some(2) => self.loopback,
            _ => false,
        }
    }

    /// TIME_WAIT sockets toward `dst` that hold ports this run needs, by our source
    /// address. Read from `/proc/net/tcp` (a line per socket) only when they could
    /// matter: connect does not reuse them, and there are enough to fill a source
    /// address's share of the range.
    pub fn in_way(&self, n: u64, dst: SocketAddr) -> Option<Vec<(Ipv4Addr, u64)>> {
        let now = load::tcp_sockstat().map_or(self.time_wait, |s| s.tw);
        if now == 0 || self.time_wait_reused() || self.per_source(n) + now <= self.range() {
            return None;
        }
        let by_source = load::time_wait_toward(dst)?;
        let ours = |ip: &Ipv4Addr| -> bool {
            if !self.loopback {
                return true;
            }
            let o = ip.octets();
            o[0] == 127 && o[3] != 0 && o[3] != 255 && {
                let i = (u32::from(o[1]) << 8 | u32::from(o[2])) * 254 + u32::from(o[3]) - 1;
                i < self.sources
            }
        };
        Some(by_source.into_iter().filter(|(ip, _)| ours(ip)).collect())
    }
}

/// The ports plan of `o`.
pub fn plan(o: &Opts) -> Ports {
    let (lo, hi) = load::port_range().unwrap_or((32768, 60999));
    let loopback = match o.connect.as_deref().map(resolve) {
        Some(Ok(SocketAddr::V4(a))) => a.ip().is_loopback(),
        Some(Ok(SocketAddr::V6(_))) => false,
        // Our own servers listen on 127.0.0.1; an address that does not resolve fails
        // the run later with its own words.
        Some(Err(_)) | None => true,
    };
    let mut p = Ports {
        lo,
        hi,
        sources: 1,
        forced: o.sources.is_some(),
        loopback,
        time_wait: load::tcp_sockstat().map_or(0, |s| s.tw),
    };
    if loopback {
        p.sources = o
            .sources
            .unwrap_or_else(|| p.sources_for(o.connections as u64));
    }
    p
}
