//! Plain words for the system limits a load test runs into, and how to raise each.

use std::io;

use super::procfs::{nofile_limits, port_range};

/// Descriptors a process keeps for itself (listeners, pipes, epoll, eventfds, stdio,
/// the runtime's own): the rest of `RLIMIT_NOFILE` is for sockets.
pub const FD_RESERVE: u64 = 100;

/// Which system limit an I/O error means, and how to raise it; `None` for other errors.
pub fn limit_hint(e: &io::Error) -> Option<String> {
    match e.raw_os_error()? {
        libc::EADDRNOTAVAIL => {
            let (lo, hi) = port_range().unwrap_or((32768, 60999));
            Some(format!(
                "out of ephemeral ports (EADDRNOTAVAIL): every connection from one source \
                 address to one server address needs its own local port, and \
                 net.ipv4.ip_local_port_range is {lo}-{hi} ({} ports, fewer while closed \
                 ones toward the same server sit in TIME_WAIT). Widen it: sudo sysctl -w \
                 net.ipv4.ip_local_port_range=\"1024 65535\"; spread the connections over \
                 more source addresses; or open fewer connections",
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
