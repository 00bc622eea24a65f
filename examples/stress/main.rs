//! The 20,000-connection stress run: greenhub echo servers and load clients on loopback,
//! 20,000 connections held open at once, every echoed byte verified.
//!
//! ```text
//! cargo run --release --example stress                       # 20,000 connections x 10 messages
//! cargo run --release --example stress -- --connections 20000 --messages 2
//! cargo run --release --example stress -- --connections 200000  # 22 processes, ~1 min
//! cargo run --release --example stress -- --connect 127.0.0.1:9000 --server-pid PID
//! cargo run --release --example stress -- --serve 127.0.0.1:9000
//! cargo run --release --example stress -- --help
//! ```
//!
//! How it runs:
//!
//! 1. **The file limit decides the split.** A process may hold `RLIMIT_NOFILE` files
//!    (greenhub raises the soft limit to the hard one); 100 are kept for listeners,
//!    pipes and epoll. 20,000 server sockets plus a listener do not fit in 20,000, so the
//!    servers run as several processes (this binary again, `--role server`), all
//!    listening on one port with `SO_REUSEPORT`: the kernel spreads the connections over
//!    them. The clients are split the same way (`--role client`). The run prints the
//!    numbers it used.
//!    **The port range decides the sources.** Each connection from one source address
//!    to one server address needs its own local port of `net.ipv4.ip_local_port_range`:
//!    the clients spread over as many addresses of 127.0.0.0/8 as keep each under a
//!    quarter of the range, and bind with `IP_BIND_ADDRESS_NO_PORT` so that connect
//!    picks each port per (source, server) pair (TIME_WAIT sockets of earlier runs are
//!    then not in the way). A run that cannot get a port per connection is refused
//!    before it starts.
//! 2. **Connect.** Every client connection is a greenlet; all connect, then wait.
//! 3. **Barrier.** Nobody sends until every client has connected *and* the servers count
//!    all N connections open (`ServerThreads::stats().active`, summed over processes).
//! 4. **Exchange.** Every connection sends `--messages` messages of random sizes
//!    1..=`--size` bytes from its own seeded PRNG and checks each echo byte for byte,
//!    plus a checksum of the whole stream; each round trip is timed.
//! 5. **Hold, then close.** No connection closes before all have finished exchanging.
//!
//! Children talk to this orchestrator in lines on stdin/stdout (`READY`, `STATS`,
//! `CONNECTED`, `GO`, `DONE`, `CLOSE`, `FINAL`). Every wait has a deadline (`--timeout`);
//! a child that dies is reported with the connections and messages it took with it. The
//! summary table goes to stdout, the plot of open connections and messages/s to
//! `<target>/stress.svg`; the exit status is non-zero on any failed, lost or corrupted
//! message.
//!
//! What limits a run is said as soon as it is known: before it starts, the file limit,
//! the system's file table, the port budget and memory (a run that cannot succeed is
//! refused there); while it runs, the kernel's port search, memory (an estimate from the
//! first 10% of the connections against `MemAvailable`: a run that would not fit stops),
//! `net.ipv4.tcp_mem` and the deadline.
//!
//! The parts: `options` (the command line), `split` (how many processes), `ports` (the
//! source addresses and the port budget), `limits` (what refuses a run before it starts),
//! `server` and `client` (the two child roles), `protocol` (the lines between them and
//! this orchestrator), `run` (the phases), `children` (the processes it watches) and
//! `watch` (the limits it meets while it runs), `progress` and `plot` (what it shows while
//! and after it runs), `report` (the summary and the `RESULT` line).

#[path = "../support/load.rs"]
mod load;
#[path = "../support/peers.rs"]
mod peers;

mod children;
mod client;
mod limits;
mod options;
mod plot;
mod ports;
mod progress;
mod protocol;
mod report;
mod run;
mod server;
mod split;
mod watch;

use std::process::ExitCode;

use options::Role;
use run::Run;

fn main() -> ExitCode {
    let o = match options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stress: {e}\n\n{}", options::HELP);
            return ExitCode::from(2);
        }
    };
    match o.role {
        Some(Role::Server) => return server::run(&o),
        Some(Role::Client) => return client::run(&o),
        None => {}
    }
    // Plan the split (the file limit) and the sources (the port range), say them, and
    // refuse a run that cannot succeed.
    let plan = split::plan(&o);
    plan.explain(&o, o.connect.is_none());
    if let Err(why) = plan.check(&o) {
        eprintln!("\nstress: cannot succeed, so the run does not start: {why}");
        println!("{}", report::not_started(&o));
        return ExitCode::FAILURE;
    }
    let mut run = match Run::new(o, plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stress: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Run, then report.
    let result = if run.o.serve.is_some() {
        run.serve().map(|()| {
            run.serve_summary();
            true
        })
    } else {
        run.stress().map(|phases| run.summary(&phases))
    };
    run.finish(result)
}
