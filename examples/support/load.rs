//! Load-generation helpers shared by `examples/stress.rs` and `benches/echo.rs` (each
//! includes this file with `#[path]`): a seeded PRNG, a checksum, a latency histogram
//! that travels between processes as one text field, `/proc` readers (RSS, CPU time,
//! file limits, open fds), plain-words explanations of the limits a load test hits, and
//! the closed-loop echo client of the echo benchmark.

#![allow(dead_code)] // each includer uses its own part

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhub::Semaphore;
use greenhub::net::TcpStream;

/// Connects in flight at once per hub: well under the listen backlog, so that the
/// server's accept queue does not overflow (an overflow drops SYNs: 1 s retries).
pub const CONNECTS_IN_FLIGHT: usize = 128;

/// Descriptors a process keeps for itself (listeners, pipes, epoll, eventfds, stdio,
/// the runtime's own): the rest of `RLIMIT_NOFILE` is for sockets.
pub const FD_RESERVE: u64 = 100;

/// SplitMix64: a small, fast, seeded PRNG (no dependency needed).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// An order-sensitive 64-bit checksum of a byte stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for chunk in data.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01B3);
        }
        self.0 = h ^ data.len() as u64;
    }
}

/// Sub-buckets per power of two: values are kept to within 1/128 (0.8 %).
const SUB: u64 = 128;
const SUB_BITS: u32 = 7;

/// A log-linear histogram of durations in nanoseconds (HDR-style), with the exact max.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    pub count: u64,
    pub max_ns: u64,
    pub sum_ns: u128,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram::default()
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
        (SUB + u64::from(e - SUB_BITS) * SUB + sub) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let e = (i - SUB) / SUB + u64::from(SUB_BITS);
        let sub = (i - SUB) % SUB;
        let lo = (SUB + sub) << (e - u64::from(SUB_BITS));
        lo + (1 << (e - u64::from(SUB_BITS))) / 2
    }

    pub fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = Histogram::index(v);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.count += 1;
        self.max_ns = self.max_ns.max(v);
        self.sum_ns += u128::from(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.max_ns = self.max_ns.max(other.max_ns);
        self.sum_ns += other.sum_ns;
    }

    /// The `q` quantile (0.0..=1.0) as a duration; the exact max for 1.0.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        if q >= 1.0 {
            return Duration::from_nanos(self.max_ns);
        }
        let rank = ((self.count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Histogram::value(i).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    /// One whitespace-free text field: `count,max,sum;index:count,...`.
    pub fn encode(&self) -> String {
        let mut s = format!("{},{},{};", self.count, self.max_ns, self.sum_ns);
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                let _ = write!(s, "{i}:{c},");
            }
        }
        s
    }

    pub fn decode(s: &str) -> Option<Histogram> {
        let (head, body) = s.split_once(';')?;
        let mut head = head.split(',');
        let mut h = Histogram {
            counts: Vec::new(),
            count: head.next()?.parse().ok()?,
            max_ns: head.next()?.parse().ok()?,
            sum_ns: head.next()?.parse().ok()?,
        };
        for pair in body.split(',').filter(|p| !p.is_empty()) {
            let (i, c) = pair.split_once(':')?;
            let (i, c): (usize, u64) = (i.parse().ok()?, c.parse().ok()?);
            if h.counts.len() <= i {
                h.counts.resize(i + 1, 0);
            }
            h.counts[i] += c;
        }
        Some(h)
    }
}

/// Formats a duration for a table: `850 us`, `12.3 ms`, `1.20 s`.
pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} us")
    } else if us < 1e6 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `12345678` as `12,345,678`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---- /proc ----

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB; `pid` may be "self".
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a process, from `/proc/<pid>/stat` (clock ticks of 10 ms:
/// Linux's `USER_HZ` is 100 on every architecture it exports it on).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The `RLIMIT_NOFILE` (soft, hard) of this process, from `/proc/self/limits`. The
/// first successful read is kept: when the limit is hit, reading the file fails too, so
/// call it once early (after greenhub has raised the soft limit).
pub fn nofile_limits() -> Option<(u64, u64)> {
    static KEPT: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    if let Some(&l) = KEPT.get() {
        return Some(l);
    }
    let l = read_nofile_limits()?;
    Some(*KEPT.get_or_init(|| l))
}

fn read_nofile_limits() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let parse = |v: Option<&str>| match v? {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    };
    Some((parse(it.next())?, parse(it.next())?))
}

/// How many descriptors `pid` has open.
pub fn count_fds(pid: &str) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The ephemeral port range, from `/proc/sys/net/ipv4/ip_local_port_range`.
pub fn port_range() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse().ok());
    Some((it.next()??, it.next()??))
}

/// Which system limit an I/O error means, and how to raise it; `None` for other errors.
pub fn limit_hint(e: &io::Error) -> Option<String> {
    match e.raw_os_error()? {
        libc::EADDRNOTAVAIL => {
            let (lo, hi) = port_range().unwrap_or((32768, 60999));
            Some(format!(
                "out of ephemeral ports (EADDRNOTAVAIL): every connection to one server \
                 address needs its own local port, and net.ipv4.ip_local_port_range is \
                 {lo}-{hi} ({} ports, fewer while closed ones sit in TIME_WAIT). Widen it: \
                 sudo sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"; or open fewer \
                 connections",
                hi.saturating_sub(lo) + 1
            ))
        }
        libc::EMFILE => {
            let limits = match nofile_limits() {
                Some((soft, hard)) => format!(
                    "this process may have {soft} files open (RLIMIT_NOFILE soft {soft}, \
                     hard {hard})"
                ),
                None => "this process is at its RLIMIT_NOFILE".to_string(),
            };
            Some(format!(
                "out of file slots (EMFILE): {limits}. Raise it: ulimit -n N in the shell \
                 (up to the hard limit; the hard limit is set in /etc/security/limits.conf \
                 or systemd's LimitNOFILE=), or split the load over more processes"
            ))
        }
        libc::ENFILE => Some(
            "the whole system is out of file slots (ENFILE). Raise it: \
             sudo sysctl -w fs.file-max=N"
                .to_string(),
        ),
        _ => None,
    }
}

/// The error in words, with the limit hint when there is one.
pub fn describe(e: &io::Error) -> String {
    match limit_hint(e) {
        Some(h) => h,
        None => e.to_string(),
    }
}

// ---- connecting many times to one address ----

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

// ---- the closed-loop echo client of benches/echo.rs ----

/// What [`bench_client`] measured.
#[derive(Debug, Default)]
pub struct BenchResult {
    /// Round trips completed in the measuring window.
    pub requests: u64,
    pub secs: f64,
    pub hist: Histogram,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Opens `conns` connections to `addr` (all before any sends), then each connection
/// echoes `size`-byte messages back to back (one outstanding per connection) for
/// `warmup + measure`; counts and times the round trips that complete in the measuring
/// window. Runs on this thread's hub, one greenlet per connection.
pub fn bench_client(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    warmup: Duration,
    measure: Duration,
) -> io::Result<BenchResult> {
    let permits = Rc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let connectors: Vec<_> = (0..conns)
        .map(|i| {
            let permits = permits.clone();
            greenhub::spawn(move || -> io::Result<TcpStream> {
                let _permit = permits
                    .acquire()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let s = connect_spread(i, addr, Duration::from_secs(20))?;
                s.set_nodelay(true)?;
                Ok(s)
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(conns);
    for c in connectors {
        streams.push(c.join().map_err(|e| io::Error::other(e.to_string()))??);
    }
    let start = Instant::now() + warmup;
    let end = start + measure;
    let result = Rc::new(RefCell::new(BenchResult::default()));
    let requests = Rc::new(Cell::new(0u64));
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let (result, requests) = (result.clone(), requests.clone());
            greenhub::spawn(move || {
                let mut out = vec![0u8; size];
                Rng::new(i as u64).fill(&mut out);
                let mut back = vec![0u8; size];
                let mut hist = Histogram::new();
                let mut n = 0;
                let outcome = (|| -> io::Result<()> {
                    loop {
                        let t = Instant::now();
                        s.write_all(&out)?;
                        s.read_exact(&mut back)?;
                        let now = Instant::now();
                        if back != out {
                            return Err(io::Error::other("echo differs from what was sent"));
                        }
                        if now >= end {
                            return Ok(());
                        }
                        // Throughput counts the round trips that complete in the
                        // window (whenever they started): with thousands of
                        // connections a round trip can take longer than the window.
                        if now >= start {
                            hist.record(now - t);
                            n += 1;
                        }
                    }
                })();
                let mut r = result.borrow_mut();
                r.hist.merge(&hist);
                requests.set(requests.get() + n);
                if let Err(e) = outcome {
                    r.errors += 1;
                    r.first_error.get_or_insert_with(|| describe(&e));
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let mut r = Rc::try_unwrap(result)
        .map_err(|_| io::Error::other("a worker still holds the result"))?
        .into_inner();
    r.requests = requests.get();
    r.secs = measure.as_secs_f64();
    Ok(r)
}
