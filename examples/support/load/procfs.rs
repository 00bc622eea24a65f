//! Readers of `/proc`: a process's RSS, CPU time, file limit and open files, and the
//! kernel's ephemeral port range.

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
