//! Echo round trips: 1, 100, 1,000 and 10,000 concurrent connections, 64-byte
//! and 4 KiB messages, against four servers in the same run — greenhub (one hub),
//! tokio `current_thread`, may with one worker and std thread-per-connection, each
//! reading up to 4 KiB and writing it back (`examples/support/peers.rs`) — all driven by
//! the same client
//! in a separate process (this binary again, `--role-client`), a closed loop: every
//! connection sends a message, waits for its echo, and sends the next.
//!
//! `cargo bench --bench echo` (add `-- --quick` for a short run). Prints a table and
//! `BENCH <name> <value> <unit>` lines. Each cell: connect, 0.5 s warm-up, 1.5 s measured,
//! best of 2 rounds (quick: 0.2 s + 0.5 s, 1 round). Servers and client get one core each
//! on a 2-core machine. Throughput counts the round trips that complete in the measured
//! window; p50/p99 are over those round trips (so with thousands of connections they are
//! queueing times: about connections / throughput).

#[path = "../examples/support/load.rs"]
mod load;
#[path = "../examples/support/peers.rs"]
mod peers;

use std::net::SocketAddr;
use std::time::Duration;

const CONNS: [usize; 4] = [1, 100, 1_000, 10_000];
const SIZES: [usize; 2] = [64, 4096];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Greenhub,
    Tokio,
    May,
    Threads,
}

impl Server {
    const ALL: [Server; 4] = [
        Server::Greenhub,
        Server::Tokio,
        Server::May,
        Server::Threads,
    ];

    fn key(self) -> &'static str {
        match self {
            Server::Greenhub => "greenhub",
            Server::Tokio => "tokio",
            Server::May => "may",
            Server::Threads => "threads",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Server::Greenhub => "greenhub (1 hub)",
            Server::Tokio => "tokio current_thread",
            Server::May => "may, 1 worker",
            Server::Threads => "std thread/conn",
        }
    }

    /// Starts the server on a thread of this process; returns its address.
    fn start(self) -> SocketAddr {
        match self {
            Server::Greenhub => {
                let server = greenhub::net::StreamServer::threads(1)
                    .bind("127.0.0.1:0", peers::greenhub_echo)
                    .expect("greenhub server");
                let addr = server.local_addr();
                std::mem::forget(server); // serves until the bench exits
                addr
            }
            Server::May => {
                // may's own bind: SO_REUSEADDR and a backlog of 1,024, like the others.
                let l = may::net::TcpListener::bind("127.0.0.1:0").expect("may bind");
                let addr = l.local_addr().expect("addr");
                peers::may_echo(l); // serves until the bench exits
                addr
            }
            Server::Tokio | Server::Threads => {
                let l = peers::std_listener("127.0.0.1:0").expect("bind");
                let addr = l.local_addr().expect("addr");
                std::thread::spawn(move || match self {
                    Server::Tokio => peers::tokio_current_thread(l),
                    _ => peers::std_threads(l),
                });
                addr
            }
        }
    }
}

struct Cell {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == load::CLIENT_ROLE) {
        load::client_process_main(&args[i + 1..], "echo bench");
        return;
    }
    peers::may_one_worker();
    let quick = args.iter().any(|a| a == "--quick");
    let (warmup, measure, rounds) = if quick {
        (Duration::from_millis(200), Duration::from_millis(500), 1)
    } else {
        (Duration::from_millis(500), Duration::from_millis(1500), 2)
    };
    let addrs: Vec<(Server, SocketAddr)> = Server::ALL.iter().map(|&s| (s, s.start())).collect();
    let exe = std::env::current_exe().expect("own path");
    // Best of `rounds` per cell (by requests/s); rounds and servers interleave, so that a
    // noisy moment on the machine does not fall on one server only.
    let mut results: Vec<(usize, usize, Server, Cell)> = Vec::new();
    for round in 1..=rounds {
        for conns in CONNS {
            for size in SIZES {
                for &(server, addr) in &addrs {
                    let cell = run_cell(&exe, addr, conns, size, warmup, measure);
                    eprintln!(
                        "round {round}: {:>6} conns {:>5} B {:<22} {:>9.0} req/s  p50 {:>8.0} us  p99 {:>8.0} us{}",
                        conns,
                        size,
                        server.title(),
                        cell.rps,
                        cell.p50_us,
                        cell.p99_us,
                        if cell.errors > 0 {
                            format!("  ({} errors)", cell.errors)
                        } else {
                            String::new()
                        }
                    );
                    let slot = results
                        .iter_mut()
                        .find(|r| r.0 == conns && r.1 == size && r.2 == server);
                    match slot {
                        Some(best) if best.3.rps >= cell.rps => {}
                        Some(best) => best.3 = cell,
                        None => results.push((conns, size, server, cell)),
                    }
                    // Let the server finish closing the last cell's connections.
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    let get = |c: usize, s: usize, srv: Server| {
        results
            .iter()
            .find(|r| r.0 == c && r.1 == s && r.2 == srv)
            .map(|r| &r.3)
            .expect("every cell ran")
    };
    println!();
    println!(
        "| connections | message | greenhub (1 hub) | tokio current_thread | may, 1 worker | std thread/conn | greenhub / tokio | greenhub / may |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for conns in CONNS {
        for size in SIZES {
            let cells: Vec<String> = Server::ALL
                .iter()
                .map(|&s| {
                    let c = get(conns, size, s);
                    format!(
                        "{} req/s, p50 {} / p99 {}{}",
                        load::thousands(c.rps as u64),
                        fmt_us(c.p50_us),
                        fmt_us(c.p99_us),
                        if c.errors > 0 {
                            format!(" ({} errors)", c.errors)
                        } else {
                            String::new()
                        }
                    )
                })
                .collect();
            let greenhub = get(conns, size, Server::Greenhub).rps;
            let ratio = greenhub / get(conns, size, Server::Tokio).rps.max(1e-9);
            let ratio_may = greenhub / get(conns, size, Server::May).rps.max(1e-9);
            println!(
                "| {} | {} | {} | {} | {} | {} | {ratio:.2}x | {ratio_may:.2}x |",
                load::thousands(conns as u64),
                if size >= 1024 {
                    format!("{} KiB", size / 1024)
                } else {
                    format!("{size} B")
                },
                cells[0],
                cells[1],
                cells[2],
                cells[3]
            );
        }
    }
    println!();
    for (conns, size, server, c) in &results {
        let name = format!("echo_{}_{}c_{}b", server.key(), conns, size);
        println!("BENCH {name}_rps {:.0} req/s", c.rps);
        println!("BENCH {name}_p50 {:.0} us", c.p50_us);
        println!("BENCH {name}_p99 {:.0} us", c.p99_us);
    }
    for conns in [1_000, 10_000] {
        for size in SIZES {
            let g = get(conns, size, Server::Greenhub).rps;
            let t = get(conns, size, Server::Tokio).rps;
            let m = get(conns, size, Server::May).rps;
            println!(
                "BENCH echo_ratio_greenhub_tokio_{conns}c_{size}b {:.2} x",
                g / t
            );
            println!(
                "BENCH echo_ratio_greenhub_may_{conns}c_{size}b {:.2} x",
                g / m
            );
        }
    }
}

fn fmt_us(us: f64) -> String {
    load::fmt_dur(Duration::from_secs_f64(us / 1e6))
}

/// Runs one cell in a client process; a cell that fails shows 0 req/s and its errors.
fn run_cell(
    exe: &std::path::Path,
    addr: SocketAddr,
    conns: usize,
    size: usize,
    warmup: Duration,
    measure: Duration,
) -> Cell {
    match load::run_client_process(exe, addr, conns, size, warmup, measure) {
        Ok(r) => Cell {
            rps: r.requests as f64 / r.secs,
            p50_us: r.hist.quantile(0.5).as_secs_f64() * 1e6,
            p99_us: r.hist.quantile(0.99).as_secs_f64() * 1e6,
            errors: r.errors,
        },
        Err(why) => {
            eprintln!("echo bench: {conns} connections x {size} B to {addr}: {why}");
            Cell {
                rps: 0.0,
                p50_us: 0.0,
                p99_us: 0.0,
                errors: conns as u64,
            }
        }
    }
}
