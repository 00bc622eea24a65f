//! Readers of `/proc`: a process's RSS, CPU time, file limit and open files; the
//! kernel's ephemeral port range, TCP sockets and memory, and a sysctl's value.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

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

/// The first number of a sysctl under `/proc/sys` (`"net/ipv4/tcp_tw_reuse"`).
pub fn sysctl(name: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// All the numbers of a sysctl under `/proc/sys` (`"net/ipv4/tcp_mem"`).
pub fn sysctl_all(name: &str) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?;
    s.split_whitespace().map(|v| v.parse().ok()).collect()
}

/// A `kB` field of `/proc/meminfo` (`MemAvailable`, `Slab`), in KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The `TCP:` line of `/proc/net/sockstat`: sockets in use, orphaned, in TIME_WAIT,
/// allocated, and the pages their buffers hold (`mem`, counted against
/// `net.ipv4.tcp_mem`). For this process's network namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpStat {
    pub inuse: u64,
    pub orphan: u64,
    pub tw: u64,
    pub alloc: u64,
    pub mem_pages: u64,
}

/// Reads [`TcpStat`] from `/proc/net/sockstat`.
pub fn tcp_sockstat() -> Option<TcpStat> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == name)?;
        words.get(i + 1)?.parse().ok()
    };
    Some(TcpStat {
        inuse: field("inuse")?,
        orphan: field("orphan")?,
        tw: field("tw")?,
        alloc: field("alloc")?,
        mem_pages: field("mem")?,
    })
}

/// TIME_WAIT sockets toward `dst` (IPv4), by their local address, from
/// `/proc/net/tcp`. The file has a line per socket: read it only when the count matters.
pub fn time_wait_toward(dst: SocketAddr) -> Option<HashMap<Ipv4Addr, u64>> {
    let SocketAddr::V4(dst) = dst else {
        return Some(HashMap::new());
    };
    let s = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // "  12: 0100007F:8AE2 0100007F:1F90 06 ...": the address as the kernel's native
    // u32 in hex, the port in hex; state 06 is TIME_WAIT.
    let parse = |field: &str| -> Option<(Ipv4Addr, u16)> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        Some((
            Ipv4Addr::from(ip.to_ne_bytes()),
            u16::from_str_radix(port, 16).ok()?,
        ))
    };
    let mut by_source = HashMap::new();
    for line in s.lines().skip(1) {
        let mut f = line.split_whitespace().skip(1);
        let (Some(local), Some(remote), Some("06")) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if parse(remote) == Some((*dst.ip(), dst.port()))
            && let Some((src, _)) = parse(local)
        {
            *by_source.entry(src).or_insert(0) += 1;
        }
    }
    Some(by_source)
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().next()?.parse().ok()
}
