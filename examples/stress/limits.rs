//! The checks made before a run starts, so that a run that cannot succeed says so at
//! once instead of at its deadline: the file limit per process (the split), the
//! system's file table, the ephemeral ports (`ports`), and memory.

use crate::load::{self, thousands};
use crate::options::Opts;
use crate::split::{Plan, layout};

/// What a connection costs in memory at the least, both ends and the kernel, in KiB:
/// a run needing more than `MemAvailable` at this rate cannot fit. Below what this
/// machine measured (about 29 KiB at 200,000 connections: each end's RSS ~12 KiB, two
/// sockets in the kernel ~5 KiB), so that only a run sure to fail is refused.
pub const MEM_FLOOR_KIB: f64 = 20.0;

/// What a connection typically costs, both ends and the kernel, in KiB (measured here
/// with 10 messages of up to 1,024 bytes); the run measures its own at 10% of its
/// connections.
pub const MEM_TYPICAL_KIB: f64 = 30.0;

/// The share of the client side in a connection's cost (for a run against an external
/// server, whose memory is not ours to count).
const CLIENT_SHARE: f64 = 0.5;

/// Files a child process opens besides its sockets (stdio pipes, epoll, eventfds).
const FILES_PER_PROCESS: u64 = 16;

/// The most child processes a run starts.
const MAX_PROCESSES: usize = 1000;

/// What memory and the file table allow, read once before the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Machine {
    /// `MemAvailable` and `MemTotal` of `/proc/meminfo`, KiB.
    pub mem_available_kib: u64,
    pub mem_total_kib: u64,
    /// `fs.file-max` and the files open now (`/proc/sys/fs/file-nr`).
    pub file_max: u64,
    pub files_open: u64,
}

impl Machine {
    /// Reads the machine's figures.
    pub fn read() -> Machine {
        let file_nr = load::sysctl_all("fs/file-nr").unwrap_or_default();
        Machine {
            mem_available_kib: load::meminfo_kib("MemAvailable").unwrap_or(0),
            mem_total_kib: load::meminfo_kib("MemTotal").unwrap_or(0),
            file_max: file_nr.get(2).copied().unwrap_or(u64::MAX),
            files_open: file_nr.first().copied().unwrap_or(0),
        }
    }
}

/// GiB from KiB, for a sentence.
pub fn gib(kib: f64) -> String {
    format!("{:.1} GiB", kib / (1024.0 * 1024.0))
}

/// The memory `o`'s connections need at `per_conn_kib` each (the client share only
/// against an external server), KiB.
pub fn mem_need_kib(o: &Opts, per_conn_kib: f64) -> f64 {
    let share = if o.connect.is_some() {
        CLIENT_SHARE
    } else {
        1.0
    };
    o.connections as f64 * per_conn_kib * share
}

impl Plan {
    /// Prints what memory and the file table allow.
    pub fn explain_machine(&self, o: &Opts) {
        if o.serve.is_some() {
            return;
        }
        let m = &self.machine;
        println!(
            "memory: ~{:.0} KiB per connection ({}) x {} = ~{} of the {} MemAvailable; the \
             run measures its own at 10% of its connections and stops if they would not fit.",
            MEM_TYPICAL_KIB,
            if o.connect.is_some() {
                "the client's half of what both ends and the kernel take here"
            } else {
                "both ends and the kernel, as measured here"
            },
            thousands(o.connections as u64),
            gib(mem_need_kib(o, MEM_TYPICAL_KIB)),
            gib(m.mem_available_kib as f64)
        );
    }

    /// Fails, before anything starts, when the run cannot succeed under this split.
    ///
    /// # Errors
    /// Each limit that stops it, in words, with how to raise it.
    pub fn check(&self, o: &Opts) -> Result<(), String> {
        let n = o.connections as u64;
        let mut why: Vec<String> = Vec::new();
        // The file limit of one process.
        let files = |kind: &str, procs: usize, hubs: usize, forced: bool| -> Option<String> {
            let per = n.div_ceil(procs as u64);
            // A server process also holds a listener per hub.
            let listeners = if kind == "server" { hubs as u64 } else { 0 };
            (per + listeners > self.budget).then(|| {
                format!(
                    "the file limit: {} {kind} sockets over {} is {} a process, but \
                     RLIMIT_NOFILE (soft {} / hard {}) leaves {} per process. Raise it with \
                     ulimit -n (up to the hard limit; the hard limit is set in \
                     /etc/security/limits.conf or systemd's LimitNOFILE=){}",
                    thousands(n),
                    layout(kind, procs, hubs),
                    thousands(per),
                    self.soft,
                    self.hard,
                    thousands(self.budget),
                    if forced {
                        format!(", or let the run split itself (drop --{kind}-processes)")
                    } else {
                        String::new()
                    }
                )
            })
        };
        if o.connect.is_none() {
            why.extend(files(
                "server",
                self.server_procs,
                self.server_hubs,
                o.server_processes.is_some(),
            ));
        }
        if o.serve.is_none() {
            why.extend(files(
                "client",
                self.client_procs,
                o.client_threads,
                o.client_processes.is_some(),
            ));
        }
        let procs = self.server_procs + self.client_procs;
        if procs > MAX_PROCESSES {
            why.push(format!(
                "the file limit: {} connections at {} sockets per process need {} \
                 processes, more than the {MAX_PROCESSES} this run starts. Raise the limit \
                 with ulimit -n, or open fewer connections",
                thousands(n),
                thousands(self.budget),
                thousands(procs as u64)
            ));
        }
        // The system's file table.
        let m = &self.machine;
        let sides = if o.connect.is_some() || o.serve.is_some() {
            1
        } else {
            2
        };
        let need = sides * n + procs as u64 * FILES_PER_PROCESS;
        let free = m.file_max.saturating_sub(m.files_open);
        if need > free {
            why.push(format!(
                "the system's file table: {} connections need {} open files ({} per \
                 connection on this machine), but fs.file-max is {} and {} are open: {} \
                 free. Raise it: sudo sysctl -w fs.file-max=N",
                thousands(n),
                thousands(need),
                sides,
                thousands(m.file_max),
                thousands(m.files_open),
                thousands(free)
            ));
        }
        // The ephemeral ports.
        if o.serve.is_none()
            && let Err(e) = self.ports.check(n, None)
        {
            why.push(e);
        }
        // Memory.
        let floor = mem_need_kib(o, MEM_FLOOR_KIB);
        if o.serve.is_none() && floor > m.mem_available_kib as f64 {
            why.push(format!(
                "memory: {} connections need at least {} ({:.0} KiB each{}), but \
                 MemAvailable is {} (of {} MemTotal). Open fewer connections, or spread \
                 them over more machines",
                thousands(n),
                gib(floor),
                MEM_FLOOR_KIB,
                if o.connect.is_some() {
                    " for both ends and the kernel, the client's half here"
                } else {
                    " for both ends and the kernel"
                },
                gib(m.mem_available_kib as f64),
                gib(m.mem_total_kib as f64)
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; and "))
        }
    }
}
