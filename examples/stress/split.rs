//! The process split: how many server and client processes, and hubs in each, a run
//! needs. A process may hold `RLIMIT_NOFILE` files (greenhub raises the soft limit to
//! the hard one); `load::FD_RESERVE` are kept for listeners, pipes and epoll. When the
//! sockets do not fit one process, the servers run as several processes sharing one port
//! with `SO_REUSEPORT`, and the clients are split the same way.

use crate::limits::Machine;
use crate::load::{self, thousands};
use crate::options::Opts;
use crate::ports::{self, Ports};

/// How the file limit splits the run.
pub struct Plan {
    pub soft: u64,
    pub hard: u64,
    pub budget: u64,
    pub server_procs: usize,
    pub server_hubs: usize,
    pub client_procs: usize,
    /// The clients' source addresses and the port budget.
    pub ports: Ports,
    /// Memory and the file table, before the run.
    pub machine: Machine,
}

/// The split `o` asks for under this process's file limit.
pub fn plan(o: &Opts) -> Plan {
    let (soft, hard) = load::nofile_limits().unwrap_or((1024, 1024));
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    // greenhub raises the soft limit to the hard one when a process starts its first hub.
    let budget = hard.min(nr_open).saturating_sub(load::FD_RESERVE).max(1);
    let n = o.connections as u64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let hubs_guess = o.server_threads.unwrap_or(cores) as u64;
    let server_procs = o.server_processes.unwrap_or_else(|| {
        if n + hubs_guess <= budget {
            1
        } else if budget <= hubs_guess + 1 {
            // No room for sockets at all: the check refuses the run.
            1
        } else {
            // The kernel's SO_REUSEPORT hash spreads connections binomially: leave 5
            // standard deviations of room on each process.
            (2..)
                .find(|&s| {
                    let per = n as f64 / s as f64;
                    per + 5.0 * per.sqrt() + hubs_guess as f64 <= budget as f64
                })
                .unwrap_or(2)
        }
    });
    let server_hubs = o
        .server_threads
        .unwrap_or_else(|| (cores / server_procs).max(1));
    let client_procs = o
        .client_processes
        .unwrap_or_else(|| n.div_ceil(budget) as usize)
        .max(1);
    Plan {
        soft,
        hard,
        budget,
        server_procs,
        server_hubs,
        client_procs,
        ports: ports::plan(o),
        machine: Machine::read(),
    }
}

impl Plan {
    /// Prints the file limit and the split it makes (the servers' part when `servers`).
    pub fn explain(&self, o: &Opts, servers: bool) {
        let p = self;
        let n = o.connections as u64;
        println!(
            "file limit: RLIMIT_NOFILE soft {} / hard {} per process (greenhub raises soft to \
             hard); keeping {} for listeners, pipes and epoll leaves {} sockets per process.",
            p.soft,
            p.hard,
            load::FD_RESERVE,
            thousands(p.budget)
        );
        if servers {
            let why = if p.server_procs == 1 {
                format!("{} connections fit one process", thousands(n))
            } else {
                format!(
                    "{} server sockets + listeners do not fit one process",
                    thousands(n)
                )
            };
            let sharing = if p.server_procs == 1 {
                String::new()
            } else {
                format!(
                    ", sharing one port with SO_REUSEPORT (the kernel spreads connections by \
                     hash: ~{} each)",
                    thousands(n / p.server_procs as u64)
                )
            };
            println!(
                "servers: {why} -> {}{sharing}.",
                layout("server", p.server_procs, p.server_hubs)
            );
        }
        if o.serve.is_none() {
            println!(
                "clients: {} client sockets -> {}, ~{} connections each.",
                thousands(n),
                layout("client", p.client_procs, o.client_threads),
                thousands(n / p.client_procs as u64)
            );
            p.ports.explain(n);
        }
        self.explain_machine(o);
    }
}

/// "2 server processes x 1 hub".
pub fn layout(kind: &str, procs: usize, hubs: usize) -> String {
    format!(
        "{procs} {kind} process{} x {hubs} hub{}",
        if procs == 1 { "" } else { "es" },
        if hubs == 1 { "" } else { "s" }
    )
}
