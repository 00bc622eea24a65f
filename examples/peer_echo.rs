//! The echo servers that `benches/peers/stress_peers.sh` drives with the stress client
//! (`cargo run --release --example stress -- --connect ADDR`), one process each:
//!
//! ```text
//! cargo run --release --example peer_echo -- KIND [ADDR]    # ADDR default 127.0.0.1:0
//! ```
//!
//! KIND is `greenhub` (one hub: `StreamServer::serve_forever`), `greenhub-hubs[=N]`
//! (`StreamServer::threads(N)`, default one hub per core), `tokio` (a `current_thread`
//! runtime), `may` (may with one worker, unpinned, a coroutine per connection) or
//! `threads` (std, a thread per connection). All listen with a backlog of 1,024. It
//! prints `listening on ADDR` and `pid PID`, then serves until killed.

#[path = "support/peers.rs"]
mod peers;

use std::io::Write;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_default();
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_string());
    let say = |addr: std::net::SocketAddr| {
        println!("listening on {addr}");
        println!("pid {}", std::process::id());
        let _ = std::io::stdout().flush();
    };
    let bind_std = || peers::std_listener(&addr).unwrap_or_else(|e| fail(&e));
    match kind
        .split_once('=')
        .map_or((kind.as_str(), None), |(k, n)| (k, Some(n)))
    {
        ("greenhub", None) => {
            let server = greenhub::net::StreamServer::bind(addr.as_str(), peers::greenhub_echo)
                .unwrap_or_else(|e| fail(&e));
            say(server.local_addr().unwrap_or_else(|e| fail(&e)));
            server.serve_forever().unwrap_or_else(|e| fail(&e));
        }
        ("greenhub-hubs", n) => {
            let builder = match n.map(str::parse::<usize>) {
                None => greenhub::net::StreamServer::per_core(),
                Some(Ok(n)) if n > 0 => greenhub::net::StreamServer::threads(n),
                Some(_) => usage(),
            };
            let server = builder
                .bind(addr.as_str(), peers::greenhub_echo)
                .unwrap_or_else(|e| fail(&e));
            say(server.local_addr());
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        ("tokio", None) => {
            let l = bind_std();
            say(l.local_addr().unwrap_or_else(|e| fail(&e)));
            peers::tokio_current_thread(l);
        }
        ("may", None) => {
            peers::may_one_worker();
            let l = may::net::TcpListener::bind(addr.as_str()).unwrap_or_else(|e| fail(&e));
            say(l.local_addr().unwrap_or_else(|e| fail(&e)));
            peers::may_echo(l);
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        ("threads", None) => {
            let l = bind_std();
            say(l.local_addr().unwrap_or_else(|e| fail(&e)));
            peers::std_threads(l);
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: peer_echo greenhub|greenhub-hubs[=N]|tokio|may|threads [ADDR]");
    std::process::exit(2);
}

fn fail(e: &std::io::Error) -> ! {
    eprintln!("peer_echo: {e}");
    std::process::exit(1);
}
